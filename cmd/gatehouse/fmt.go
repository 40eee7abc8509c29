package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/sergi/go-diff/diffmatchpatch"
	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/policytest"
)

type fmtFlags struct {
	list, write, diff, fail bool
	ignore                  []string
}

func newFmtCmd() *cobra.Command {
	var f fmtFlags
	cmd := &cobra.Command{
		Use:   "fmt [PATH...]",
		Short: "Format Rego files with OPA's formatter",
		Long: `Format .rego files with OPA's formatter (Rego v1), as "opa fmt" does.

With one file and no flag, the formatted source is printed; with folders or
several files and no flag, the files whose formatting differs are listed (as
--list). "-" formats stdin to stdout.

  -l, --list   list the files whose formatting differs
  -w, --write  rewrite those files in place
  -d, --diff   print a unified diff of the changes
      --fail   exit 1 when a file's formatting differs (also with -w)

Exit codes: 0 done (and, with --fail, every file was formatted); 1 --fail and
a file was not formatted, or a file could not be written; 2 usage error or a
file that does not parse (file:line:col: message).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runFmt(cmd, args, f)
		},
	}
	fl := cmd.Flags()
	fl.BoolVarP(&f.list, "list", "l", false, "list files whose formatting differs")
	fl.BoolVarP(&f.write, "write", "w", false, "rewrite files whose formatting differs")
	fl.BoolVarP(&f.diff, "diff", "d", false, "print a diff of the formatting changes")
	fl.BoolVar(&f.fail, "fail", false, "exit 1 when a file's formatting differs")
	fl.StringArrayVar(&f.ignore, "ignore", nil, "leave out files and folders matching this glob (repeatable)")
	return cmd
}

func runFmt(cmd *cobra.Command, args []string, f fmtFlags) error {
	stdout := cmd.OutOrStdout()
	if len(args) == 1 && args[0] == "-" {
		src, err := io.ReadAll(cmd.InOrStdin())
		if err != nil {
			return failureErr(err)
		}
		out, err := policytest.Format("stdin", src)
		if err != nil {
			return policyErr(cmd.ErrOrStderr(), err)
		}
		_, err = stdout.Write(out)
		if err == nil && f.fail && string(out) != string(src) {
			return failureErr(errors.New("stdin is not formatted"))
		}
		return err
	}
	files, err := policytest.RegoFiles(args, f.ignore)
	if err != nil {
		return policyErr(cmd.ErrOrStderr(), err)
	}
	single := len(args) == 1 && len(files) == 1 && files[0] == args[0]
	printSource := single && !f.list && !f.write && !f.diff
	list := f.list || (!printSource && !f.write && !f.diff)
	var unformatted, failed int
	for _, file := range files {
		out, changed, err := policytest.FormatFile(file)
		if err != nil {
			var ce *policytest.CompileError
			if errors.As(err, &ce) {
				for _, line := range policytest.FormatErrors(ce.Errors) {
					fmt.Fprintln(cmd.ErrOrStderr(), line)
				}
				failed++
				continue
			}
			return policyErr(cmd.ErrOrStderr(), err)
		}
		if printSource {
			if _, err := stdout.Write(out); err != nil {
				return failureErr(err)
			}
		}
		if !changed {
			continue
		}
		unformatted++
		if list {
			fmt.Fprintln(stdout, file)
		}
		if f.diff {
			src, _ := os.ReadFile(file)
			fmt.Fprint(stdout, unifiedDiff(file, string(src), string(out)))
		}
		if f.write {
			info, err := os.Stat(file)
			if err != nil {
				return failureErr(err)
			}
			if err := os.WriteFile(file, out, info.Mode().Perm()); err != nil {
				return failureErr(fmt.Errorf("write %s: %w", file, err))
			}
		}
	}
	if failed > 0 {
		return usageErr(fmt.Errorf("%s not parse", pluralVerb(failed, "file", "does", "do")))
	}
	if f.fail && unformatted > 0 {
		return failureErr(fmt.Errorf("%s not formatted", pluralVerb(unformatted, "file", "is", "are")))
	}
	return nil
}

// diffOp is one line of a line diff.
type diffOp struct {
	kind byte // ' ', '-', '+'
	text string
	i, j int // line numbers (0-based) in a and b before this op
}

// lineDiff diffs two texts by lines with go-diff (Myers' algorithm, in
// linear space): the ' ' and '-' lines are a, the ' ' and '+' lines b.
func lineDiff(a, b string) []diffOp {
	// a missing final newline is not a difference (lines compare without it)
	for _, s := range []*string{&a, &b} {
		if *s != "" && !strings.HasSuffix(*s, "\n") {
			*s += "\n"
		}
	}
	dmp := diffmatchpatch.New()
	dmp.DiffTimeout = 0 // exact, whatever the size
	ca, cb, lines := dmp.DiffLinesToChars(a, b)
	var ops []diffOp
	i, j := 0, 0
	for _, d := range dmp.DiffCharsToLines(dmp.DiffMain(ca, cb, false), lines) {
		if d.Text == "" {
			continue
		}
		for _, text := range strings.Split(strings.TrimSuffix(d.Text, "\n"), "\n") {
			switch d.Type {
			case diffmatchpatch.DiffEqual:
				ops = append(ops, diffOp{' ', text, i, j})
				i, j = i+1, j+1
			case diffmatchpatch.DiffDelete:
				ops = append(ops, diffOp{'-', text, i, j})
				i++
			case diffmatchpatch.DiffInsert:
				ops = append(ops, diffOp{'+', text, i, j})
				j++
			}
		}
	}
	return ops
}

// unifiedDiff is a unified diff of two texts by lines, with 3 lines of
// context.
func unifiedDiff(name, a, b string) string {
	ops := lineDiff(a, b)
	const context = 3
	var out strings.Builder
	fmt.Fprintf(&out, "--- %s\n+++ %s (formatted)\n", name, name)
	for k := 0; k < len(ops); {
		if ops[k].kind == ' ' {
			k++
			continue
		}
		start := max(0, k-context)
		end := k
		for end < len(ops) {
			if ops[end].kind != ' ' {
				end++
				continue
			}
			run := end
			for run < len(ops) && ops[run].kind == ' ' {
				run++
			}
			if run == len(ops) || run-end > 2*context {
				end = min(end+context, len(ops))
				break
			}
			end = run
		}
		var na, nb int
		for _, o := range ops[start:end] {
			if o.kind != '+' {
				na++
			}
			if o.kind != '-' {
				nb++
			}
		}
		fmt.Fprintf(&out, "@@ -%d,%d +%d,%d @@\n", ops[start].i+1, na, ops[start].j+1, nb)
		for _, o := range ops[start:end] {
			fmt.Fprintf(&out, "%c%s\n", o.kind, o.text)
		}
		k = end
	}
	return out.String()
}

// pluralVerb is "1 file is", "2 files are".
func pluralVerb(n int, noun, one, many string) string {
	if n == 1 {
		return "1 " + noun + " " + one
	}
	return fmt.Sprintf("%d %ss %s", n, noun, many)
}
