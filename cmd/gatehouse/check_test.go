package main

import (
	"strings"
	"testing"
)

func TestCheckCommand(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		args   []string
		code   int
		stdout []string
		stderr string
	}{
		"shipped policies are clean": {[]string{shippedPolicies}, exitOK, nil, ""},
		"clean":                      {[]string{ptd("check/clean")}, exitOK, nil, ""},
		"unused variable and import": {[]string{ptd("check/unused")}, exitFailure, []string{
			ptd("check/unused/unused.rego") + ":3:1: import data.lib unused",
			ptd("check/unused/unused.rego") + ":6:2: assigned var x unused",
		}, "2 findings"},
		"unsafe variable": {[]string{ptd("broken")}, exitFailure, []string{ptd("broken/unsafe.rego") + ":4:2: var name is unsafe"}, "1 finding"},
		"missing path":    {[]string{ptd("nope")}, exitUsage, nil, "nope"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := gatehouse(t, append([]string{"check"}, c.args...)...)
			if code != c.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, c.code, stdout, stderr)
			}
			for _, s := range c.stdout {
				if !strings.Contains(stdout, s) {
					t.Errorf("stdout lacks %q:\n%s", s, stdout)
				}
			}
			if c.code == exitOK && stdout != "" {
				t.Errorf("a clean check printed %q", stdout)
			}
			if !strings.Contains(stderr, c.stderr) {
				t.Errorf("stderr lacks %q:\n%s", c.stderr, stderr)
			}
		})
	}

	t.Run("parse error", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		f := writeTestFile(t, dir+"/bad.rego", "package bad\n\np if {\n")
		code, _, stderr := gatehouse(t, "check", dir)
		if code != exitUsage || !strings.Contains(stderr, f+":") {
			t.Errorf("exit %d, stderr %q: want 2 naming %s", code, stderr, f)
		}
	})
}
