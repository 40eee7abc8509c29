package policytest

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// Output formats of WriteReport.
const (
	FormatPretty = "pretty"
	FormatJSON   = "json"
	FormatJUnit  = "junit"
)

// Formats lists the output formats.
var Formats = []string{FormatPretty, FormatJSON, FormatJUnit}

// WriteReport writes rep in format (pretty, json or junit). verbose (pretty
// only) lists every test and case with its print() output.
func WriteReport(w io.Writer, rep *Report, format string, verbose bool) error {
	switch format {
	case FormatPretty, "":
		return WritePretty(w, rep, verbose)
	case FormatJSON:
		return WriteJSON(w, rep)
	case FormatJUnit:
		return WriteJUnit(w, rep)
	}
	return usagef("--format %q: want pretty, json or junit", format)
}

// WriteJSON writes rep as the JSON document Report describes.
func WriteJSON(w io.Writer, rep *Report) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

const rule = "--------------------------------------------------------------------------------"

// WritePretty writes rep for people: the failing tests and cases (every one
// with verbose) with the failing expression or the unmet expectations, then
// opa's summary lines (PASS: n/m ...), the fixtures' and coverage.
func WritePretty(w io.Writer, rep *Report, verbose bool) error {
	pw := &prettyWriter{w: w}
	lastFile := ""
	for _, t := range rep.Tests {
		if !verbose && t.Result == Pass {
			continue
		}
		if verbose && t.Location != nil && t.Location.File != lastFile {
			if lastFile != "" {
				pw.println()
			}
			pw.printf("%s:\n", t.Location.File)
			lastFile = t.Location.File
		}
		pw.result(t, verbose)
	}
	lastSuite := ""
	for _, f := range rep.Fixtures {
		if !verbose && f.Result == Pass {
			continue
		}
		if verbose && f.Package != lastSuite {
			pw.println()
			pw.printf("%s:\n", f.Location.File)
			lastSuite = f.Package
		}
		pw.result(f, verbose)
	}
	if pw.dirty {
		pw.println(rule)
	}
	if rep.Summary.Total > 0 || rep.FixturesSummary.Total == 0 {
		counts(pw, "", rep.Summary)
	}
	counts(pw, "FIXTURES ", rep.FixturesSummary)
	if c := rep.Coverage; c != nil {
		pw.println(rule)
		pw.printf("COVERAGE: %.2f%% (%d of %d lines)\n", c.Percent, c.CoveredLines, c.CoveredLines+c.NotCoveredLines)
		width := 0
		for _, f := range c.Files {
			width = max(width, len(f.File))
		}
		for _, f := range c.Files {
			pw.printf("  %-*s  %6.2f%%", width, f.File, f.Percent)
			if len(f.NotCovered) > 0 {
				parts := make([]string, len(f.NotCovered))
				for i, r := range f.NotCovered {
					parts[i] = r.String()
				}
				pw.printf("  not covered: %s", strings.Join(parts, ", "))
			}
			pw.println()
		}
		if c.BelowThreshold {
			pw.printf("FAIL: coverage %.2f%% is below the threshold %g%%\n", c.Percent, c.Threshold)
		} else if c.Threshold > 0 {
			pw.printf("coverage meets the threshold %g%%\n", c.Threshold)
		}
	}
	return pw.err
}

// counts prints opa's summary lines.
func counts(pw *prettyWriter, prefix string, s Summary) {
	if s.Total == 0 {
		if prefix == "" {
			pw.println("no tests ran")
		}
		return
	}
	for _, c := range []struct {
		label string
		n     int
	}{{"PASS", s.Pass}, {"FAIL", s.Fail}, {"SKIPPED", s.Skip}, {"ERROR", s.Error}} {
		if c.n > 0 {
			pw.printf("%s%s: %d/%d\n", prefix, c.label, c.n, s.Total)
		}
	}
}

type prettyWriter struct {
	w     io.Writer
	err   error
	dirty bool
}

func (p *prettyWriter) printf(format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format, args...)
	}
	p.dirty = true
}

func (p *prettyWriter) println(args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintln(p.w, args...)
	}
	p.dirty = true
}

// result prints one test or case: a line, then what went wrong and the
// print() output.
func (p *prettyWriter) result(r *Result, verbose bool) {
	name := r.FullName()
	if r.Kind == KindFixture {
		name = fmt.Sprintf("%s: %s", r.Package, r.Name)
	}
	switch {
	case verbose:
		p.printf("%s: %s", name, label(r.Result))
		if r.Result != Skip {
			p.printf(" (%s)", r.Duration.Round(time.Microsecond))
		}
		p.println()
	default:
		p.printf("%s %s (%s)\n", label(r.Result), name, r.Location)
	}
	switch r.Result {
	case Fail:
		if f := r.Failure; f != nil {
			if f.Location != nil {
				p.printf("  %s:\n", f.Location)
				for _, d := range append(strings.Split(f.Expression, "\n"), f.Details...) {
					p.printf("    %s\n", d)
				}
			} else {
				for _, d := range append([]string{}, f.Details...) {
					p.printf("  %s\n", d)
				}
				if len(f.Details) == 0 {
					p.printf("  %s\n", f.Message)
				}
			}
		}
	case Error:
		p.printf("  %s\n", indentRest(r.Error, "  "))
	case Skip:
		if verbose && r.Error != "" && r.Error != "todo" {
			p.printf("  %s\n", r.Error)
		}
	}
	if out := strings.TrimSpace(r.Output); out != "" && (verbose || r.Result != Pass) {
		p.println()
		p.printf("  %s\n", indentRest(out, "  "))
		p.println()
	}
}

func label(o Outcome) string {
	switch o {
	case Pass:
		return "PASS"
	case Fail:
		return "FAIL"
	case Error:
		return "ERROR"
	}
	return "SKIPPED"
}

// indentRest indents every line of s but the first.
func indentRest(s, indent string) string {
	return strings.ReplaceAll(s, "\n", "\n"+indent)
}
