package policytest

import (
	"encoding/xml"
	"fmt"
	"io"
	"strings"
	"time"
)

// JUnit XML, in the shape CI systems ingest (Jenkins, GitLab, GitHub
// actions reporters): one testsuite per Rego package and per fixture
// folder, a testcase per test or case, with failure, error or skipped
// children; times in seconds. With a coverage threshold, a "coverage"
// testsuite holds one testcase that fails when coverage is below it.

// JUnitSuites is the <testsuites> document.
type JUnitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Errors   int          `xml:"errors,attr"`
	Skipped  int          `xml:"skipped,attr"`
	Time     string       `xml:"time,attr"`
	Suites   []JUnitSuite `xml:"testsuite"`
}

// JUnitSuite is a <testsuite>.
type JUnitSuite struct {
	Name       string           `xml:"name,attr"`
	Tests      int              `xml:"tests,attr"`
	Failures   int              `xml:"failures,attr"`
	Errors     int              `xml:"errors,attr"`
	Skipped    int              `xml:"skipped,attr"`
	Time       string           `xml:"time,attr"`
	File       string           `xml:"file,attr,omitempty"`
	Properties *JUnitProperties `xml:"properties"`
	Cases      []JUnitCase      `xml:"testcase"`
}

// JUnitProperties are a suite's <properties>.
type JUnitProperties struct {
	Property []JUnitProperty `xml:"property"`
}

// JUnitProperty is a <property> of a suite.
type JUnitProperty struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

// JUnitCase is a <testcase>.
type JUnitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	File      string        `xml:"file,attr,omitempty"`
	Line      int           `xml:"line,attr,omitempty"`
	Time      string        `xml:"time,attr"`
	Failure   *JUnitProblem `xml:"failure"`
	Error     *JUnitProblem `xml:"error"`
	Skipped   *JUnitSkipped `xml:"skipped"`
	SystemOut *JUnitText    `xml:"system-out"`
}

// JUnitProblem is a <failure> or an <error>.
type JUnitProblem struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr"`
	Text    string `xml:",cdata"`
}

// JUnitText is an element holding text (as CDATA).
type JUnitText struct {
	Text string `xml:",cdata"`
}

// JUnitSkipped is a <skipped>.
type JUnitSkipped struct {
	Message string `xml:"message,attr,omitempty"`
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.6f", d.Seconds()) }

// JUnit builds the JUnit document of rep.
func JUnit(rep *Report) *JUnitSuites {
	doc := &JUnitSuites{Name: "gatehouse test"}
	var total time.Duration
	index := map[string]int{}
	add := func(r *Result) {
		key := r.Kind + "\x00" + r.Package
		i, ok := index[key]
		if !ok {
			i = len(doc.Suites)
			index[key] = i
			s := JUnitSuite{Name: r.Package}
			if r.Kind == KindFixture && r.Location != nil {
				s.File = r.Location.File
			}
			doc.Suites = append(doc.Suites, s)
		}
		s := &doc.Suites[i]
		c := JUnitCase{Name: r.Name, Classname: r.Package, Time: seconds(r.Duration)}
		if r.Output != "" {
			c.SystemOut = &JUnitText{Text: r.Output}
		}
		if r.Location != nil {
			c.File, c.Line = r.Location.File, r.Location.Row
		}
		s.Tests++
		switch r.Result {
		case Fail:
			s.Failures++
			p := &JUnitProblem{Type: "failure", Message: "failed"}
			if f := r.Failure; f != nil {
				p.Message = f.Message
				var b strings.Builder
				if f.Location != nil {
					fmt.Fprintf(&b, "%s:\n%s\n", f.Location, f.Expression)
				}
				for _, d := range f.Details {
					b.WriteString(d)
					b.WriteByte('\n')
				}
				p.Text = b.String()
			}
			c.Failure = p
		case Error:
			s.Errors++
			msg, _, _ := strings.Cut(r.Error, "\n")
			c.Error = &JUnitProblem{Type: "error", Message: msg, Text: r.Error}
		case Skip:
			s.Skipped++
			c.Skipped = &JUnitSkipped{Message: r.Error}
		}
		s.Cases = append(s.Cases, c)
		total += r.Duration
	}
	for _, r := range rep.Tests {
		add(r)
	}
	for _, r := range rep.Fixtures {
		add(r)
	}
	suiteTimes := make([]time.Duration, len(doc.Suites))
	for _, r := range append(append([]*Result{}, rep.Tests...), rep.Fixtures...) {
		suiteTimes[index[r.Kind+"\x00"+r.Package]] += r.Duration
	}
	for i := range doc.Suites {
		doc.Suites[i].Time = seconds(suiteTimes[i])
	}
	if c := rep.Coverage; c != nil && c.Threshold > 0 {
		tc := JUnitCase{Name: fmt.Sprintf("coverage >= %g%%", c.Threshold), Classname: "coverage", Time: seconds(0)}
		s := JUnitSuite{Name: "coverage", Tests: 1, Time: seconds(0), Properties: &JUnitProperties{Property: []JUnitProperty{
			{Name: "coverage", Value: fmt.Sprintf("%.2f", c.Percent)},
			{Name: "threshold", Value: fmt.Sprintf("%g", c.Threshold)},
		}}}
		if c.BelowThreshold {
			s.Failures = 1
			tc.Failure = &JUnitProblem{Type: "failure", Message: fmt.Sprintf("coverage %.2f%% is below the threshold %g%%", c.Percent, c.Threshold)}
		}
		s.Cases = []JUnitCase{tc}
		doc.Suites = append(doc.Suites, s)
	}
	for _, s := range doc.Suites {
		doc.Tests += s.Tests
		doc.Failures += s.Failures
		doc.Errors += s.Errors
		doc.Skipped += s.Skipped
	}
	doc.Time = seconds(total)
	return doc
}

// WriteJUnit writes rep as JUnit XML.
func WriteJUnit(w io.Writer, rep *Report) error {
	b, err := xml.MarshalIndent(JUnit(rep), "", "  ")
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
