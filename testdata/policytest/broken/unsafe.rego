package broken

deny if {
	input.user == name
}
