package policytest

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
)

// EvalDocument is the JSON form of an Evaluation (`gatehouse eval
// --format json`).
type EvalDocument struct {
	InputKind       string            `json:"input_kind"`
	Allowed         bool              `json:"allowed"`
	Status          int               `json:"status"`
	Reason          string            `json:"reason,omitempty"`
	Headers         map[string]string `json:"headers"`
	HeadersToRemove []string          `json:"headers_to_remove,omitempty"`
	Body            string            `json:"body,omitempty"`
	DecisionID      string            `json:"decision_id"`
	PolicyRevision  string            `json:"policy_revision"`
	TenancyRevision uint64            `json:"tenancy_revision"`
	Subject         string            `json:"subject,omitempty"`
	TokenError      string            `json:"token_error,omitempty"`
	// CheckResponse is the envoy.service.auth.v3.CheckResponse (protojson).
	CheckResponse json.RawMessage `json:"check_response"`
	Explanation   *Explanation    `json:"explanation,omitempty"`
}

// Document returns the JSON form of ev.
func (ev *Evaluation) Document() (*EvalDocument, error) {
	d := ev.Decision
	got := answer(&Answer{Decision: d, Response: ev.Response})
	resp, err := protojson.Marshal(ev.Response)
	if err != nil {
		return nil, err
	}
	return &EvalDocument{
		InputKind:       ev.InputKind,
		Allowed:         d.Allowed,
		Status:          got.Status,
		Reason:          d.Reason,
		Headers:         got.Headers,
		HeadersToRemove: got.HeadersToRemove,
		Body:            got.Body,
		DecisionID:      d.ID,
		PolicyRevision:  d.PolicyRevision,
		TenancyRevision: d.TenancyRevision,
		Subject:         d.Subject,
		TokenError:      string(d.TokenError),
		CheckResponse:   resp,
		Explanation:     ev.Explanation,
	}, nil
}

// WriteEvaluation writes ev as text for people (pretty) or as the JSON
// EvalDocument (json).
func WriteEvaluation(w io.Writer, ev *Evaluation, format string) error {
	if ev.AuthZEN != nil {
		return writeAuthZEN(w, ev.AuthZEN, format)
	}
	doc, err := ev.Document()
	if err != nil {
		return err
	}
	switch format {
	case FormatJSON:
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		return enc.Encode(doc)
	case FormatPretty, "":
	default:
		return usagef("--format %q: want pretty or json", format)
	}
	pw := &prettyWriter{w: w}
	verdict := "denied"
	if doc.Allowed {
		verdict = "allowed"
	}
	pw.printf("%-16s%s (%d)\n", "decision", verdict, doc.Status)
	if doc.Reason != "" {
		pw.printf("%-16s%s\n", "reason", doc.Reason)
	}
	if len(doc.Headers) > 0 {
		for i, k := range slices.Sorted(maps.Keys(doc.Headers)) {
			label := ""
			if i == 0 {
				label = "headers"
			}
			pw.printf("%-16s%s: %s\n", label, k, doc.Headers[k])
		}
	}
	if len(doc.HeadersToRemove) > 0 {
		pw.printf("%-16s%s\n", "headers removed", strings.Join(doc.HeadersToRemove, ", "))
	}
	if doc.Body != "" {
		pw.printf("%-16s%s\n", "body", doc.Body)
	}
	if doc.Subject != "" {
		pw.printf("%-16s%s\n", "subject", doc.Subject)
	}
	if doc.TokenError != "" {
		pw.printf("%-16s%s\n", "token", doc.TokenError)
	}
	pw.printf("%-16s%s\n", "decision id", doc.DecisionID)
	pw.printf("%-16s%s\n", "policy rev.", doc.PolicyRevision)
	pw.printf("%-16s%d\n", "tenancy rev.", doc.TenancyRevision)
	if ex := doc.Explanation; ex != nil {
		writeExplanation(pw, ex)
	}
	return pw.err
}

func writeExplanation(pw *prettyWriter, ex *Explanation) {
	pw.println()
	pw.println("Rules that produced a value:")
	width := 0
	for _, r := range ex.Rules {
		width = max(width, len(r.Location.String()))
	}
	for _, r := range ex.Rules {
		times := ""
		if r.Times > 1 {
			times = fmt.Sprintf("  (×%d)", r.Times)
		}
		pw.printf("  %-*s  %s = %s%s\n", width, r.Location, r.Rule, r.Value, times)
	}
	absent := false // the token does not act as the data user
	if id := ex.Identity; id != nil {
		absent = !id.ActsAsUser
		trust := ""
		if id.TrustTokenRoles {
			trust = " (trust_token_roles)"
		}
		pw.println()
		pw.printf("Identity: subject %q of issuer %s%s\n", id.Subject, id.Issuer, trust)
		switch {
		case id.UserIssuer != "":
			pw.printf("  %-15s%s (the only issuer that may act as %s)\n", "user issuer", id.UserIssuer, id.Subject)
		case id.MayActAs != "":
			pw.printf("  %-15s(none: %s may act as %s)\n", "user issuer", id.MayActAs, id.Subject)
		}
		acts := "yes"
		switch {
		case !id.InData:
			acts = "no: absent from the data"
		case !id.ActsAsUser:
			acts = "no: the user counts as absent"
		}
		pw.printf("  %-15s%s\n", "acts as user", acts)
		pw.printf("  %-15s%s\n", "why", id.Why)
	}
	if c := ex.Chain; c != nil {
		pw.println()
		pw.printf("Tenancy chain (revision %d): %s\n", c.Revision, chainPath(c))
		row := func(label string, e ChainEntity) {
			pw.printf("  %-15s%s\n", label, describeEntity(e))
		}
		if c.User != nil && c.User.ID != "" {
			if absent && c.User.Entity != nil {
				pw.printf("  %-15s%s  (counts as absent for this token)\n", "user", describeEntity(*c.User))
			} else {
				row("user", *c.User)
			}
		}
		for _, g := range c.UserGrants {
			row("user grant", g)
		}
		if !absent && c.User != nil && c.User.ID != "" && len(c.UserGrants) == 0 && c.Project != nil && len(c.Tenant) > 0 {
			pw.printf("  %-15s(none for %s on %s in %s)\n", "user grant", c.User.ID, c.Project.ID, c.Tenant[0].ID)
		}
		if c.Project != nil {
			row("project", *c.Project)
		}
		for _, g := range c.ProjectGrants {
			row("project grant", g)
		}
		if c.Project != nil && len(c.Tenant) > 0 && len(c.ProjectGrants) == 0 {
			if c.Owner {
				pw.printf("  %-15s(none: %s owns %s)\n", "project grant", c.Tenant[0].ID, c.Project.ID)
			} else {
				pw.printf("  %-15s(none: %s holds no grant on %s)\n", "project grant", c.Tenant[0].ID, c.Project.ID)
			}
		}
		for i, t := range c.Tenant {
			label := "tenant"
			if i > 0 {
				label = "  parent"
			}
			row(label, t)
		}
		for i, t := range c.HomeTenant {
			label := "home tenant"
			if i > 0 {
				label = "  parent"
			}
			row(label, t)
		}
	}
	if len(ex.TenancyReads) > 0 {
		pw.println()
		pw.println("Tenancy data read:")
		for _, r := range ex.TenancyReads {
			pw.printf("  %s\n", r)
		}
	}
}

// chainPath is "alice → alice-tk-beta → tk-beta → beta → acme".
func chainPath(c *Chain) string {
	var parts []string
	if c.User != nil && c.User.ID != "" {
		parts = append(parts, c.User.ID)
	}
	var grants []string
	for _, g := range c.UserGrants {
		grants = append(grants, g.ID)
	}
	if len(grants) > 0 {
		parts = append(parts, strings.Join(grants, "+"))
	}
	if c.Project != nil {
		parts = append(parts, c.Project.ID)
	}
	var pgs []string
	for _, g := range c.ProjectGrants {
		pgs = append(pgs, g.ID)
	}
	if len(pgs) > 0 {
		parts = append(parts, strings.Join(pgs, "+"))
	}
	for _, t := range c.Tenant {
		parts = append(parts, t.ID)
	}
	return strings.Join(parts, " → ")
}

// describeEntity is "id  key=value ..." (sorted keys, without id, empty
// labels and null parents), or "id  (absent from the data)".
func describeEntity(e ChainEntity) string {
	if e.Entity == nil {
		return e.ID + "  (absent from the data)"
	}
	var kv []string
	for _, k := range slices.Sorted(maps.Keys(e.Entity)) {
		v := e.Entity[k]
		if k == "id" || v == nil {
			continue
		}
		if m, ok := v.(map[string]any); ok && len(m) == 0 {
			continue
		}
		var s string
		switch v := v.(type) {
		case string:
			s = v
		case []any:
			items := make([]string, len(v))
			for i, x := range v {
				items[i] = fmt.Sprint(x)
			}
			s = "[" + strings.Join(items, " ") + "]"
		default:
			b, _ := json.Marshal(v)
			s = string(b)
		}
		kv = append(kv, k+"="+s)
	}
	return e.ID + "  " + strings.Join(kv, " ")
}

// writeAuthZEN prints an AuthZEN answer: the API's JSON body (pretty: with
// the endpoint and status first).
func writeAuthZEN(w io.Writer, a *AuthZENAnswer, format string) error {
	var body any
	if err := json.Unmarshal(a.Body, &body); err != nil {
		body = string(a.Body)
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	switch format {
	case FormatJSON:
		return enc.Encode(map[string]any{"endpoint": a.Endpoint, "status": a.Status, "body": body})
	case FormatPretty, "":
	default:
		return usagef("--format %q: want pretty or json", format)
	}
	if _, err := fmt.Fprintf(w, "%-16s%s (%d)\n", "authzen", a.Endpoint, a.Status); err != nil {
		return err
	}
	return enc.Encode(body)
}
