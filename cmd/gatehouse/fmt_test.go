package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const unformatted = "package unformatted\n\nallow   if {\n    input.user == \"bob\"\n}\n"

const formatted = "package unformatted\n\nallow if {\n\tinput.user == \"bob\"\n}\n"

func TestFmtCommand(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		flags   []string
		code    int
		stdout  func(file string) string // exact stdout
		rewrite bool
	}{
		"one file prints it":    {nil, exitOK, func(string) string { return formatted }, false},
		"--list":                {[]string{"--list"}, exitOK, func(f string) string { return f + "\n" }, false},
		"--list --fail":         {[]string{"-l", "--fail"}, exitFailure, func(f string) string { return f + "\n" }, false},
		"-w":                    {[]string{"-w"}, exitOK, func(string) string { return "" }, true},
		"-w --fail still fails": {[]string{"-w", "--fail"}, exitFailure, func(string) string { return "" }, true},
		"--diff": {[]string{"--diff"}, exitOK, func(f string) string {
			return "--- " + f + "\n+++ " + f + " (formatted)\n@@ -1,5 +1,5 @@\n package unformatted\n \n-allow   if {\n-    input.user == \"bob\"\n+allow if {\n+\tinput.user == \"bob\"\n }\n"
		}, false},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			file := writeTestFile(t, filepath.Join(t.TempDir(), "p.rego"), unformatted)
			code, stdout, stderr := gatehouse(t, append(append([]string{"fmt"}, c.flags...), file)...)
			if code != c.code {
				t.Errorf("exit %d, want %d (stderr %q)", code, c.code, stderr)
			}
			if want := c.stdout(file); stdout != want {
				t.Errorf("stdout\n%q\nwant\n%q", stdout, want)
			}
			b, _ := os.ReadFile(file)
			if got, want := string(b), map[bool]string{true: formatted, false: unformatted}[c.rewrite]; got != want {
				t.Errorf("file now\n%q\nwant\n%q", got, want)
			}
		})
	}

	t.Run("folder", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		bad := writeTestFile(t, filepath.Join(dir, "a", "bad.rego"), unformatted)
		writeTestFile(t, filepath.Join(dir, "good.rego"), formatted)
		code, stdout, _ := gatehouse(t, "fmt", "--fail", dir)
		if code != exitFailure || stdout != bad+"\n" {
			t.Errorf("exit %d, stdout %q: want 1 listing only %s", code, stdout, bad)
		}
		if code, stdout, _ := gatehouse(t, "fmt", "-w", dir); code != exitOK || stdout != "" {
			t.Errorf("-w: exit %d, stdout %q", code, stdout)
		}
		if code, stdout, _ := gatehouse(t, "fmt", "--list", "--fail", dir); code != exitOK || stdout != "" {
			t.Errorf("after -w: exit %d, stdout %q", code, stdout)
		}
	})

	t.Run("shipped policies are formatted", func(t *testing.T) {
		t.Parallel()
		if code, stdout, stderr := gatehouse(t, "fmt", "--list", "--fail", shippedPolicies); code != exitOK {
			t.Errorf("exit %d: %s%s", code, stdout, stderr)
		}
	})

	t.Run("parse error", func(t *testing.T) {
		t.Parallel()
		file := writeTestFile(t, filepath.Join(t.TempDir(), "bad.rego"), "package bad\n\np if {\n")
		code, _, stderr := gatehouse(t, "fmt", file)
		if code != exitUsage || !strings.Contains(stderr, file+":") {
			t.Errorf("exit %d, stderr %q: want 2 naming the file", code, stderr)
		}
	})
}
