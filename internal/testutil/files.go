package testutil

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// PolicyDir writes files (relative path → content) into a new t.TempDir()
// and returns the folder.
func PolicyDir(tb testing.TB, files map[string]string) string {
	tb.Helper()
	dir := tb.TempDir()
	for name, content := range files {
		WriteFile(tb, filepath.Join(dir, name), content)
	}
	return dir
}

// WriteFile writes content to path in place (truncating), creating folders.
func WriteFile(tb testing.TB, path, content string) {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		tb.Fatalf("mkdir: %v", err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		tb.Fatalf("write %s: %v", path, err)
	}
}

// ReplaceFile replaces path atomically: content goes to a temporary file in
// the same folder, which is then renamed over path (what editors and
// configuration management tools do).
func ReplaceFile(tb testing.TB, path, content string) {
	tb.Helper()
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		tb.Fatalf("create temp: %v", err)
	}
	if _, err := f.WriteString(content); err != nil {
		tb.Fatalf("write temp: %v", err)
	}
	if err := f.Close(); err != nil {
		tb.Fatalf("close temp: %v", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		tb.Fatalf("rename: %v", err)
	}
}

// CopyDir copies the tree src into a new t.TempDir() and returns it.
func CopyDir(tb testing.TB, src string) string {
	tb.Helper()
	dst := tb.TempDir()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		tb.Fatalf("copy %s: %v", src, err)
	}
	return dst
}

// Golden compares got with the golden file path; with update it rewrites
// the file instead.
func Golden(tb testing.TB, path string, got []byte, update bool) {
	tb.Helper()
	if update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			tb.Fatalf("update golden file: %v", err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("read golden file (run go test -update to create it): %v", err)
	}
	if !bytes.Equal(want, got) {
		tb.Errorf("%s differs (go test -update rewrites it)\n--- want\n%s\n--- got\n%s", path, want, got)
	}
}
