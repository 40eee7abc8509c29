package policytest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/gatehouse-dev/gatehouse/token"
)

// Fixture is a fixture folder: its fixture.yaml and what it names. See the
// package documentation for the format.
type Fixture struct {
	// Dir is the fixture folder; File its fixture.yaml.
	Dir  string `yaml:"-"`
	File string `yaml:"-"`
	// Name names the suite in reports; default Dir.
	Name string `yaml:"name"`
	// Decision is the decision rule; default the runner's (envoy/authz/allow).
	Decision string `yaml:"decision"`
	// Policies is a policy folder (relative to Dir) to compile instead of
	// the policies under test.
	Policies string `yaml:"policies"`
	// Tenancy is a tenancy data file (relative to Dir): a control API batch
	// or entities per collection (ReadTenancyFile).
	Tenancy string `yaml:"tenancy"`
	// Issuers are the trusted token issuers; default one, DefaultIssuer.
	Issuers []IssuerSpec `yaml:"issuers"`
	// AuthZENDecision is the AuthZEN decision rule of the authzen cases
	// (default authzen/allow).
	AuthZENDecision string `yaml:"authzen_decision"`
	// Defaults are merged into every case: method, path, host, headers,
	// context, token (a case's own values win).
	Defaults Case `yaml:"defaults"`
	// Cases are the requests and their expected answers.
	Cases []Case `yaml:"cases"`
}

// Case is one request of a fixture and the answer it expects.
type Case struct {
	// Name names the case; default "case N".
	Name string `yaml:"name"`
	// Skip, when set, skips the case (the text says why).
	Skip string `yaml:"skip"`
	// The short form of the request: method (default GET), path (default
	// /), host (default api.example.com), headers, route context
	// extensions, body (a string, or YAML turned into JSON).
	Method  string            `yaml:"method"`
	Path    string            `yaml:"path"`
	Host    string            `yaml:"host"`
	Headers map[string]string `yaml:"headers"`
	Context map[string]string `yaml:"context"`
	Body    any               `yaml:"body"`
	// Token is the bearer token to mint ("none": no Authorization header).
	Token *TokenSpec `yaml:"token"`
	// CheckRequest is a full Envoy CheckRequest (protojson names) instead
	// of the short form; headers, context and token still apply on top.
	CheckRequest map[string]any `yaml:"check_request"`
	// AuthZEN, instead of a check, is an AuthZEN request body (SPEC §10),
	// answered as the sidecar's AuthZEN listener would: the evaluations
	// endpoint when it has "evaluations", else the evaluation endpoint, or
	// AuthZENEndpoint. Expect then checks allowed (the decision), reason
	// (context.reason), status (the HTTP status) and decisions (a batch).
	AuthZEN         map[string]any `yaml:"authzen"`
	AuthZENEndpoint string         `yaml:"authzen_endpoint"`
	// Expect is the expected answer.
	Expect Expect `yaml:"expect"`

	line int
}

// Expect is the expected answer of a case; unset fields are not checked.
type Expect struct {
	// Allowed is the verdict.
	Allowed *bool `yaml:"allowed"`
	// Status is the HTTP status: 200 when allowed, else the deny status.
	Status int `yaml:"status"`
	// Reason is the decision's reason (e.g. role_required).
	Reason *string `yaml:"reason"`
	// Headers are headers of the answer (to the upstream and the client on
	// allow, to the client on deny), by case-insensitive name.
	Headers map[string]string `yaml:"headers"`
	// HeadersAbsent must not be among the answer's headers.
	HeadersAbsent []string `yaml:"headers_absent"`
	// HeadersRemoved must be among the request headers removed on allow.
	HeadersRemoved []string `yaml:"headers_removed"`
	// BodyContains must be part of the deny body.
	BodyContains string `yaml:"body_contains"`
	// Error expects "cannot decide": the error message contains this text.
	Error string `yaml:"error"`
	// Decisions are the decisions of an AuthZEN batch, in order.
	Decisions []bool `yaml:"decisions"`
}

func (e Expect) empty() bool {
	return e.Allowed == nil && e.Status == 0 && e.Reason == nil && len(e.Headers) == 0 &&
		len(e.HeadersAbsent) == 0 && len(e.HeadersRemoved) == 0 && e.BodyContains == "" && e.Error == "" && e.Decisions == nil
}

// ReadFixture parses dir/fixture.yaml strictly (unknown fields are errors)
// and checks it. Errors wrap ErrFixture and name the file and line.
func ReadFixture(dir string) (*Fixture, error) {
	file := filepath.Join(dir, FixtureFile)
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFixture, err)
	}
	fx := &Fixture{Dir: dir, File: file}
	var root yaml.Node
	if err := yaml.Unmarshal(raw, &root); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrFixture, yamlError(file, err))
	}
	if len(root.Content) == 0 {
		return nil, fmt.Errorf("%w: %s: empty file (want a list of cases, or a mapping with cases:)", ErrFixture, file)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	var items *yaml.Node
	switch doc := root.Content[0]; doc.Kind {
	case yaml.SequenceNode:
		err = dec.Decode(&fx.Cases)
		items = doc
	case yaml.MappingNode:
		err = dec.Decode(fx)
		for i := 0; i+1 < len(doc.Content); i += 2 {
			if doc.Content[i].Value == "cases" {
				items = doc.Content[i+1]
			}
		}
	default:
		return nil, fmt.Errorf("%w: %s: want a list of cases, or a mapping with a \"cases\" key", ErrFixture, file)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s", ErrFixture, yamlError(file, err))
	}
	fx.Dir, fx.File = dir, file
	if fx.Name == "" {
		fx.Name = filepath.ToSlash(dir)
	}
	if items != nil && items.Kind == yaml.SequenceNode {
		for i := range fx.Cases {
			if i < len(items.Content) {
				fx.Cases[i].line = items.Content[i].Line
			}
		}
	}
	if err := fx.check(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFixture, err)
	}
	return fx, nil
}

// yamlLine matches the location yaml.v3 puts in its messages.
var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): `)

// yamlError renders a yaml.v3 error as "file:line: message" lines.
func yamlError(file string, err error) string {
	var lines []string
	msgs := []string{err.Error()}
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	for _, m := range msgs {
		m = strings.TrimPrefix(m, "yaml: ")
		if sm := yamlLine.FindStringSubmatch(m); sm != nil {
			lines = append(lines, file+":"+sm[1]+": "+m[len(sm[0]):])
			continue
		}
		lines = append(lines, file+": "+m)
	}
	return strings.Join(lines, "\n")
}

// check validates the fixture and fills case names.
func (fx *Fixture) check() error {
	var errs []error
	if len(fx.Cases) == 0 {
		errs = append(errs, fmt.Errorf("%s: no cases", fx.File))
	}
	// The issuers get the one validation of every issuer list (the
	// runner's key file stands in for the key source, set by the runner).
	if err := token.ValidateIssuers(issuerConfigs(fx.Issuers, "keys.json")); err != nil {
		errs = append(errs, fmt.Errorf("%s: issuers: %w", fx.File, err))
	}
	names := map[string]bool{}
	for i := range fx.Cases {
		c := &fx.Cases[i]
		if c.Name == "" {
			c.Name = fmt.Sprintf("case %d", i+1)
		}
		at := fmt.Sprintf("%s:%d: case %q", fx.File, c.line, c.Name)
		if names[c.Name] {
			errs = append(errs, fmt.Errorf("%s: the name is used twice", at))
		}
		names[c.Name] = true
		if c.Expect.empty() && c.Skip == "" {
			errs = append(errs, fmt.Errorf("%s: no expect: (allowed, status, reason, headers, headers_absent, headers_removed, body_contains or error)", at))
		}
		if c.AuthZEN != nil && (c.CheckRequest != nil || c.Method != "" || c.Path != "" || c.Host != "" || c.Body != nil || c.Token != nil || c.Context != nil || c.Headers != nil) {
			errs = append(errs, fmt.Errorf("%s: an authzen case is an AuthZEN request: no check_request, method, path, host, body, token, context or headers", at))
		}
		if c.AuthZEN == nil && (c.AuthZENEndpoint != "" || c.Expect.Decisions != nil) {
			errs = append(errs, fmt.Errorf("%s: authzen_endpoint and expect.decisions need an authzen request", at))
		}
		if c.CheckRequest != nil && (c.Method != "" || c.Path != "" || c.Host != "" || c.Body != nil) {
			errs = append(errs, fmt.Errorf("%s: give check_request or method/path/host/body, not both", at))
		}
		if t := c.Token; t != nil && t.Error != "" && t.Valid != nil && *t.Valid {
			errs = append(errs, fmt.Errorf("%s: token: valid: true contradicts error: %s", at, t.Error))
		}
	}
	return errors.Join(errs...)
}

// path resolves a path of fixture.yaml: relative to the fixture folder.
func (fx *Fixture) path(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(fx.Dir, p)
}

// issuers returns the fixture's issuers, or the default one.
func (fx *Fixture) issuers() []IssuerSpec {
	if len(fx.Issuers) > 0 {
		return fx.Issuers
	}
	return []IssuerSpec{{Issuer: DefaultIssuer}}
}

// withDefaults returns c completed by the fixture's defaults.
func (fx *Fixture) withDefaults(c Case) Case {
	d := fx.Defaults
	if c.CheckRequest == nil {
		c.Method = cmpOr(c.Method, d.Method, "GET")
		c.Path = cmpOr(c.Path, d.Path, "/")
		c.Host = cmpOr(c.Host, d.Host, "api.example.com")
		if c.Body == nil {
			c.Body = d.Body
		}
	}
	c.Headers = merged(d.Headers, c.Headers)
	c.Context = merged(d.Context, c.Context)
	if c.Token == nil {
		c.Token = d.Token
	}
	return c
}

func cmpOr(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

func merged(base, over map[string]string) map[string]string {
	if len(base) == 0 {
		return over
	}
	out := maps.Clone(base)
	maps.Copy(out, over)
	return out
}

// request builds the CheckRequest of c (completed by withDefaults).
func (c *Case) request(m *minter, issuers []IssuerSpec, now time.Time) (*authv3.CheckRequest, error) {
	auth, err := m.authorization(c.Token, issuers)
	if err != nil {
		return nil, err
	}
	var req *authv3.CheckRequest
	if c.CheckRequest != nil {
		b, err := json.Marshal(c.CheckRequest)
		if err != nil {
			return nil, fmt.Errorf("check_request: %v", err)
		}
		req = &authv3.CheckRequest{}
		if err := protojson.Unmarshal(b, req); err != nil {
			return nil, fmt.Errorf("check_request: %v", err)
		}
		if req.GetAttributes().GetRequest().GetHttp() == nil {
			return nil, errors.New("check_request: attributes.request.http is missing")
		}
	} else {
		body, ctype, err := c.body()
		if err != nil {
			return nil, err
		}
		headers := map[string]string{":authority": c.Host, ":method": c.Method, ":path": c.Path}
		if ctype != "" {
			headers["content-type"] = ctype
		}
		req = &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Request: &authv3.AttributeContext_Request{
				Time: timestamppb.New(now),
				Http: &authv3.AttributeContext_HttpRequest{
					Id:       "fixture",
					Method:   c.Method,
					Headers:  headers,
					Path:     c.Path,
					Host:     c.Host,
					Scheme:   "https",
					Protocol: "HTTP/1.1",
					Body:     body,
					Size:     int64(len(body)),
				},
			},
		}}
	}
	h := req.Attributes.Request.Http
	if h.Headers == nil {
		h.Headers = map[string]string{}
	}
	for k, v := range c.Headers {
		h.Headers[strings.ToLower(k)] = v
	}
	if auth != "" {
		h.Headers["authorization"] = auth
	}
	if len(c.Context) > 0 {
		if req.Attributes.ContextExtensions == nil {
			req.Attributes.ContextExtensions = map[string]string{}
		}
		maps.Copy(req.Attributes.ContextExtensions, c.Context)
	}
	return req, nil
}

// body returns the request body and, for a structured body, its content type.
func (c *Case) body() (string, string, error) {
	switch b := c.Body.(type) {
	case nil:
		return "", "", nil
	case string:
		return b, "", nil
	default:
		j, err := json.Marshal(b)
		if err != nil {
			return "", "", fmt.Errorf("body: %v", err)
		}
		if _, ok := c.Headers["content-type"]; ok {
			return string(j), "", nil
		}
		return string(j), "application/json", nil
	}
}

// compare checks an answer against e and returns what did not hold.
func (e Expect) compare(out *Answer, decideErr error) (got *Got, diffs []string) {
	if decideErr != nil {
		if e.Error == "" {
			return nil, []string{fmt.Sprintf("cannot decide: %v", decideErr)}
		}
		if !strings.Contains(decideErr.Error(), e.Error) {
			return nil, []string{fmt.Sprintf("error: want it to contain %q, got %q", e.Error, decideErr.Error())}
		}
		return nil, nil
	}
	got = answer(out)
	if e.Error != "" {
		diffs = append(diffs, fmt.Sprintf("error: want cannot decide (%q), got an answer: %s", e.Error, got.short()))
	}
	if e.Allowed != nil && *e.Allowed != got.Allowed {
		diffs = append(diffs, fmt.Sprintf("allowed: want %t, got %t", *e.Allowed, got.Allowed))
	}
	if e.Status != 0 && e.Status != got.Status {
		diffs = append(diffs, fmt.Sprintf("status: want %d, got %d", e.Status, got.Status))
	}
	if e.Reason != nil && *e.Reason != got.Reason {
		diffs = append(diffs, fmt.Sprintf("reason: want %q, got %q", *e.Reason, got.Reason))
	}
	for _, name := range slices.Sorted(maps.Keys(e.Headers)) {
		want, n := e.Headers[name], strings.ToLower(name)
		v, ok := got.Headers[n]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("header %s: want %q, got no such header", n, want))
		case v != want && !slices.Contains(strings.Split(v, ", "), want):
			diffs = append(diffs, fmt.Sprintf("header %s: want %q, got %q", n, want, v))
		}
	}
	for _, name := range e.HeadersAbsent {
		n := strings.ToLower(name)
		if v, ok := got.Headers[n]; ok {
			diffs = append(diffs, fmt.Sprintf("header %s: want it absent, got %q", n, v))
		}
	}
	for _, name := range e.HeadersRemoved {
		n := strings.ToLower(name)
		if !slices.Contains(got.HeadersToRemove, n) {
			diffs = append(diffs, fmt.Sprintf("headers_to_remove: want %s among them, got %v", n, got.HeadersToRemove))
		}
	}
	if e.BodyContains != "" && !strings.Contains(got.Body, e.BodyContains) {
		diffs = append(diffs, fmt.Sprintf("body: want it to contain %q, got %q", e.BodyContains, got.Body))
	}
	return got, diffs
}

// answer summarizes the CheckResponse (and the decision's reason).
func answer(out *Answer) *Got {
	g := &Got{Headers: map[string]string{}, Reason: out.Decision.Reason, DecisionID: out.Decision.ID}
	add := func(k, v string) {
		k = strings.ToLower(k)
		if prev, ok := g.Headers[k]; ok {
			v = prev + ", " + v
		}
		g.Headers[k] = v
	}
	if ok := out.Response.GetOkResponse(); ok != nil || out.Decision.Allowed {
		g.Allowed, g.Status = true, 200
		for _, h := range ok.GetHeaders() {
			add(h.GetHeader().GetKey(), h.GetHeader().GetValue())
		}
		for _, h := range ok.GetResponseHeadersToAdd() {
			add(h.GetHeader().GetKey(), h.GetHeader().GetValue())
		}
		g.HeadersToRemove = ok.GetHeadersToRemove()
		return g
	}
	den := out.Response.GetDeniedResponse()
	g.Status = int(den.GetStatus().GetCode())
	for _, h := range den.GetHeaders() {
		add(h.GetHeader().GetKey(), h.GetHeader().GetValue())
	}
	g.Body = den.GetBody()
	return g
}

// short is "200" or "403 role_required".
func (g *Got) short() string {
	if g.Reason == "" {
		return fmt.Sprint(g.Status)
	}
	return fmt.Sprintf("%d %s", g.Status, g.Reason)
}

// compareAuthZEN checks an AuthZEN answer against e.
func (e Expect) compareAuthZEN(a *AuthZENAnswer) (got *Got, diffs []string) {
	got = &Got{Status: a.Status, Body: string(a.Body)}
	decided, allowed, reason := a.decision()
	got.Allowed, got.Reason = allowed, reason
	if e.Error != "" {
		if a.Status < 500 || !strings.Contains(string(a.Body), e.Error) {
			diffs = append(diffs, fmt.Sprintf("error: want cannot decide (%q), got %d %s", e.Error, a.Status, a.Body))
		}
		return got, diffs
	}
	if e.Status != 0 && e.Status != a.Status {
		diffs = append(diffs, fmt.Sprintf("status: want %d, got %d (%s)", e.Status, a.Status, a.Body))
	}
	if e.Allowed != nil && (!decided || *e.Allowed != allowed) {
		diffs = append(diffs, fmt.Sprintf("decision: want %t, got %s", *e.Allowed, a.Body))
	}
	if e.Reason != nil && *e.Reason != reason {
		diffs = append(diffs, fmt.Sprintf("reason: want %q, got %q", *e.Reason, reason))
	}
	if e.Decisions != nil && !slices.Equal(e.Decisions, a.decisions()) {
		diffs = append(diffs, fmt.Sprintf("decisions: want %v, got %v", e.Decisions, a.decisions()))
	}
	if e.BodyContains != "" && !strings.Contains(string(a.Body), e.BodyContains) {
		diffs = append(diffs, fmt.Sprintf("body: want it to contain %q, got %s", e.BodyContains, a.Body))
	}
	return got, diffs
}
