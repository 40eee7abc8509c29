package tenancy

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"regexp"
	"slices"
	"strings"
	"unicode"
)

// Collection names, as they appear in the control API and under data.tenancy.
const (
	Tenants       = "tenants"
	Users         = "users"
	Projects      = "projects"
	ProjectGrants = "project_grants"
	UserGrants    = "user_grants"
	Memberships   = "memberships"
)

// Collections lists every collection in dependency order: an entity only
// refers to entities of collections before it (tenants refer to tenants).
var Collections = []string{Tenants, Projects, ProjectGrants, Users, UserGrants, Memberships}

// IsCollection reports whether name is a collection.
func IsCollection(name string) bool { return slices.Contains(Collections, name) }

// Statuses of tenants, users and project grants.
const (
	StatusActive    = "active"
	StatusSuspended = "suspended"
)

// User kinds.
const (
	KindHuman   = "human"
	KindMachine = "machine"
)

// Membership scope types.
const (
	ScopeTenant       = "tenant"
	ScopeProject      = "project"
	ScopeProjectGrant = "project_grant"
)

var (
	idPattern    = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,128}$`)
	rolePattern  = regexp.MustCompile(`^[a-zA-Z0-9._:/-]{1,128}$`)
	maxLabels    = 64
	maxLabelLen  = 256
	maxRoles     = 256
	maxNameBytes = 1024
)

// ValidID reports whether id is a valid entity id: [a-zA-Z0-9._-]{1,128},
// and neither "." nor ".." (which a path-based reader would resolve).
func ValidID(id string) bool { return id != "." && id != ".." && idPattern.MatchString(id) }

// Entity is one of *Tenant, *User, *Project, *ProjectGrant, *UserGrant,
// *Membership.
type Entity interface {
	// Collection names the entity's collection.
	Collection() string
	// Key returns the entity id.
	Key() string
	// validate checks the entity alone (not its references).
	validate() error
}

// Tenant is an organisation; Parent is the service-provider tenant that
// manages it ("" for none, null in JSON).
type Tenant struct {
	ID     string            `json:"id"`
	Name   string            `json:"name"`
	Parent string            `json:"parent"`
	Kind   string            `json:"kind"`
	Status string            `json:"status"`
	Labels map[string]string `json:"labels"`
}

// User belongs to exactly one home tenant. Issuer, when set, is the only
// token issuer that may act as the user (SPEC §6 step 2); when empty, any
// configured issuer without trust_token_roles may.
type User struct {
	ID     string            `json:"id"`
	Tenant string            `json:"tenant"`
	Kind   string            `json:"kind"`
	Status string            `json:"status"`
	Issuer string            `json:"issuer,omitempty"`
	Labels map[string]string `json:"labels"`
}

// Project is owned by a tenant and defines the roles that can be granted.
type Project struct {
	ID     string            `json:"id"`
	Owner  string            `json:"owner"`
	Roles  []string          `json:"roles"`
	Labels map[string]string `json:"labels"`
}

// ProjectGrant grants a subset of a project's roles to another tenant.
type ProjectGrant struct {
	ID      string   `json:"id"`
	Project string   `json:"project"`
	Tenant  string   `json:"tenant"`
	Roles   []string `json:"roles"`
	Status  string   `json:"status"`
}

// UserGrant authorizes a user (of any tenant) with roles on a project, inside
// the tenant the authorization lives in: the project owner, or a tenant
// holding a grant on the project.
type UserGrant struct {
	ID      string   `json:"id"`
	User    string   `json:"user"`
	Project string   `json:"project"`
	Tenant  string   `json:"tenant"`
	Roles   []string `json:"roles"`
}

// Scope is what a membership administers.
type Scope struct {
	Type string `json:"type"`
	ID   string `json:"id"`
}

// Membership delegates management (e.g. role admin) of a tenant, project or
// project grant to a user.
type Membership struct {
	ID    string   `json:"id"`
	User  string   `json:"user"`
	Scope Scope    `json:"scope"`
	Roles []string `json:"roles"`
}

// Collection implements Entity.
func (*Tenant) Collection() string       { return Tenants }
func (*User) Collection() string         { return Users }
func (*Project) Collection() string      { return Projects }
func (*ProjectGrant) Collection() string { return ProjectGrants }
func (*UserGrant) Collection() string    { return UserGrants }
func (*Membership) Collection() string   { return Memberships }

// Key implements Entity.
func (e *Tenant) Key() string       { return e.ID }
func (e *User) Key() string         { return e.ID }
func (e *Project) Key() string      { return e.ID }
func (e *ProjectGrant) Key() string { return e.ID }
func (e *UserGrant) Key() string    { return e.ID }
func (e *Membership) Key() string   { return e.ID }

// MarshalJSON writes the parent as null when there is none.
func (e *Tenant) MarshalJSON() ([]byte, error) {
	type plain Tenant
	var parent any
	if e.Parent != "" {
		parent = e.Parent
	}
	return json.Marshal(struct {
		*plain
		Parent any `json:"parent"`
	}{(*plain)(e), parent})
}

// New returns an empty entity of the collection, nil for an unknown one.
func New(collection string) Entity {
	switch collection {
	case Tenants:
		return &Tenant{}
	case Users:
		return &User{}
	case Projects:
		return &Project{}
	case ProjectGrants:
		return &ProjectGrant{}
	case UserGrants:
		return &UserGrant{}
	case Memberships:
		return &Membership{}
	}
	return nil
}

// Decode parses an entity of the collection strictly (field names must
// match exactly, at every level: unknown, case-folded and duplicated keys
// are refused, see CheckKeys), fills defaults (status active, user kind human, labels {}),
// normalises role lists (sorted, without duplicates) and validates it alone.
// References are checked by Apply.
func Decode(collection string, data []byte) (Entity, error) {
	e := New(collection)
	if e == nil {
		return nil, notFound("unknown collection %q", collection)
	}
	if !json.Valid(data) {
		return nil, malformed("%s: the body is not valid JSON", collection)
	}
	if err := CheckKeys(data, e); err != nil {
		ke := err.(*Error)
		return nil, &Error{Status: ke.Status, Code: ke.Code, Msg: collection + ": " + ke.Msg}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(e); err != nil {
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &te):
			return nil, invalid("%s: field %q must be a %s", collection, te.Field, jsonType(te.Type.Kind().String()))
		case strings.HasPrefix(err.Error(), "json: unknown field"):
			return nil, invalid("%s: %s", collection, strings.TrimPrefix(err.Error(), "json: "))
		}
		return nil, malformed("%s: %v", collection, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, malformed("%s: trailing data after the JSON object", collection)
	}
	normalize(e)
	if err := e.validate(); err != nil {
		return nil, err
	}
	return e, nil
}

func jsonType(kind string) string {
	switch kind {
	case "slice":
		return "list"
	case "map", "struct":
		return "object"
	}
	return kind
}

// normalize fills defaults and sorts role lists.
func normalize(e Entity) {
	switch e := e.(type) {
	case *Tenant:
		e.Status = orDefault(e.Status, StatusActive)
		e.Labels = labelsOrEmpty(e.Labels)
	case *User:
		e.Status = orDefault(e.Status, StatusActive)
		e.Kind = orDefault(e.Kind, KindHuman)
		e.Labels = labelsOrEmpty(e.Labels)
	case *Project:
		e.Roles = NormalizeRoles(e.Roles)
		e.Labels = labelsOrEmpty(e.Labels)
	case *ProjectGrant:
		e.Roles = NormalizeRoles(e.Roles)
		e.Status = orDefault(e.Status, StatusActive)
	case *UserGrant:
		e.Roles = NormalizeRoles(e.Roles)
	case *Membership:
		e.Roles = NormalizeRoles(e.Roles)
	}
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func labelsOrEmpty(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// NormalizeRoles returns roles sorted without duplicates (never nil).
func NormalizeRoles(roles []string) []string {
	out := slices.Clone(roles)
	slices.Sort(out)
	out = slices.Compact(out)
	if out == nil {
		out = []string{}
	}
	return out
}

func checkID(collection, field, id string) error {
	if !ValidID(id) {
		return invalid("%s: %s %q is not a valid id ([a-zA-Z0-9._-]{1,128}, not . or ..)", collection, field, id)
	}
	return nil
}

func checkRoles(collection string, roles []string) error {
	if len(roles) > maxRoles {
		return invalid("%s: %d roles, at most %d", collection, len(roles), maxRoles)
	}
	for _, r := range roles {
		if !rolePattern.MatchString(r) {
			return invalid("%s: role %q is not valid ([a-zA-Z0-9._:/-]{1,128})", collection, r)
		}
	}
	return nil
}

func checkLabels(collection string, labels map[string]string) error {
	if len(labels) > maxLabels {
		return invalid("%s: %d labels, at most %d", collection, len(labels), maxLabels)
	}
	for k, v := range labels {
		if k == "" || len(k) > maxLabelLen || len(v) > maxLabelLen {
			return invalid("%s: label %q: keys must be 1-%d bytes and values at most %d", collection, k, maxLabelLen, maxLabelLen)
		}
	}
	return nil
}

func checkStatus(collection, status string) error {
	if status != StatusActive && status != StatusSuspended {
		return invalid("%s: status %q is not %q or %q", collection, status, StatusActive, StatusSuspended)
	}
	return nil
}

func (e *Tenant) validate() error {
	return joinErrors(
		checkID(Tenants, "id", e.ID),
		checkIDOptional(Tenants, "parent", e.Parent),
		checkStatus(Tenants, e.Status),
		checkLabels(Tenants, e.Labels),
		checkLen(Tenants, "name", e.Name),
		checkLen(Tenants, "kind", e.Kind),
		selfParent(e),
	)
}

func selfParent(e *Tenant) error {
	if e.Parent != "" && e.Parent == e.ID {
		return conflict("tenants: %q cannot be its own parent", e.ID)
	}
	return nil
}

func checkIDOptional(collection, field, id string) error {
	if id == "" {
		return nil
	}
	return checkID(collection, field, id)
}

func checkLen(collection, field, s string) error {
	if len(s) > maxNameBytes {
		return invalid("%s: %s is longer than %d bytes", collection, field, maxNameBytes)
	}
	return nil
}

func (e *User) validate() error {
	var kindErr error
	if e.Kind != KindHuman && e.Kind != KindMachine {
		kindErr = invalid("users: kind %q is not %q or %q", e.Kind, KindHuman, KindMachine)
	}
	return joinErrors(
		checkID(Users, "id", e.ID),
		checkID(Users, "tenant", e.Tenant),
		kindErr,
		checkStatus(Users, e.Status),
		checkIssuer(e.Issuer),
		checkLabels(Users, e.Labels),
	)
}

// checkIssuer checks a user's optional issuer: at most maxNameBytes bytes,
// no control characters (it is compared with a token's iss exactly).
func checkIssuer(iss string) error {
	if len(iss) > maxNameBytes {
		return invalid("users: issuer is longer than %d bytes", maxNameBytes)
	}
	if strings.ContainsFunc(iss, unicode.IsControl) {
		return invalid("users: issuer %q contains a control character", iss)
	}
	return nil
}

func (e *Project) validate() error {
	return joinErrors(
		checkID(Projects, "id", e.ID),
		checkID(Projects, "owner", e.Owner),
		checkRoles(Projects, e.Roles),
		checkLabels(Projects, e.Labels),
	)
}

func (e *ProjectGrant) validate() error {
	return joinErrors(
		checkID(ProjectGrants, "id", e.ID),
		checkID(ProjectGrants, "project", e.Project),
		checkID(ProjectGrants, "tenant", e.Tenant),
		checkRoles(ProjectGrants, e.Roles),
		checkStatus(ProjectGrants, e.Status),
	)
}

func (e *UserGrant) validate() error {
	return joinErrors(
		checkID(UserGrants, "id", e.ID),
		checkID(UserGrants, "user", e.User),
		checkID(UserGrants, "project", e.Project),
		checkID(UserGrants, "tenant", e.Tenant),
		checkRoles(UserGrants, e.Roles),
	)
}

func (e *Membership) validate() error {
	var scopeErr error
	switch e.Scope.Type {
	case ScopeTenant, ScopeProject, ScopeProjectGrant:
		scopeErr = checkID(Memberships, "scope.id", e.Scope.ID)
	default:
		scopeErr = invalid("memberships: scope.type %q is not tenant, project or project_grant", e.Scope.Type)
	}
	return joinErrors(
		checkID(Memberships, "id", e.ID),
		checkID(Memberships, "user", e.User),
		scopeErr,
		checkRoles(Memberships, e.Roles),
	)
}

// joinErrors merges entity problems into one *Error: the status of the
// first (conflicts before invalid fields), every message.
func joinErrors(errs ...error) error {
	var out *Error
	var msgs []string
	for _, err := range errs {
		var e *Error
		if !errors.As(err, &e) {
			continue
		}
		if out == nil || (e.Status == 409 && out.Status != 409) {
			out = &Error{Status: e.Status, Code: e.Code}
		}
		msgs = append(msgs, e.Msg)
	}
	if out == nil {
		return nil
	}
	out.Msg = strings.Join(msgs, "; ")
	return out
}
