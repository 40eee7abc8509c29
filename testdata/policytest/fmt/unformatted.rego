package unformatted

allow   if {
    input.user == "bob"
}
