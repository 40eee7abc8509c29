package tenancy

// EncodeValueForTest builds a stored value (with a valid checksum).
func EncodeValueForTest(key []byte, rev uint64, doc []byte) []byte { return encodeValue(key, rev, doc) }

// DecodeForTest runs the hot-path decoders of the typed reads: a user, a
// tenant, a project and a list of strings. The first error is returned.
func DecodeForTest(user, tenant, project, list []byte) (*User, *Tenant, *Project, []string, error) {
	u, t, p := &User{}, &Tenant{}, &Project{}
	if err := decodeUser(user, u); err != nil {
		return nil, nil, nil, nil, err
	}
	if err := decodeTenant(tenant, t); err != nil {
		return nil, nil, nil, nil, err
	}
	if err := decodeProject(project, p); err != nil {
		return nil, nil, nil, nil, err
	}
	l, err := decodeStrings(list)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	if l == nil {
		l = []string{}
	}
	return u, t, p, l, nil
}
