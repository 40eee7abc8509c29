package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/replica"
	"github.com/gatehouse-dev/gatehouse/token"
)

func newBundleCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bundle",
		Short: "Build OPA-format policy bundles",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageErr(fmt.Errorf("bundle: missing subcommand (build)"))
		},
	}
	cmd.AddCommand(newBundleBuildCmd())
	return cmd
}

// bundleBuildFlags are the flags of `bundle build`.
type bundleBuildFlags struct {
	output       string
	signingKey   string
	signingAlg   string
	keyID        string
	revision     string
	roots        []string
	includeTests bool
	decision     string
	regoVersion  string
}

func newBundleBuildCmd() *cobra.Command {
	var f bundleBuildFlags
	cmd := &cobra.Command{
		Use:   "build DIR -o FILE",
		Short: "Compile a policy directory and write it as a (signed) OPA bundle",
		Long: `Build writes the policy directory DIR as an OPA bundle (a .tar.gz that opa
and Gatehouse sidecars both load): every .rego file (*_test.rego only with
--include-tests), every data.json/data.yaml at the path of its folder, and a
.manifest with the revision (default: the content hash that serve --policies
reports for DIR) and the roots (default: the first segment of every package and
data path).

The policies are compiled first, from the tarball about to be written: a bundle
that does not compile is never written. With --signing-key (a PEM RSA, ECDSA or
Ed25519 private key) the bundle carries a .signatures.json in OPA's format,
listing the SHA-256 digest of every file; a sidecar configured with
policies.bundle.public_key_file refuses any bundle whose signature or digests
do not verify, and refuses unsigned bundles.

Publish with: curl -X PUT --data-binary @FILE -H "Authorization: Bearer $TOKEN" \
  http://127.0.0.1:8282/v1/bundles/NAME

Exit codes: 0 written; 1 the output could not be written; 2 usage error, an
unusable key, or policies that do not compile (file:line).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBundleBuild(cmd, args[0], f)
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.output, "output", "o", "", "bundle file to write (required), e.g. bundle.tar.gz")
	fl.StringVar(&f.signingKey, "signing-key", "", "PEM private key (RSA, ECDSA or Ed25519) to sign the bundle with")
	fl.StringVar(&f.signingAlg, "signing-alg", "", "JWS algorithm: "+strings.Join(token.Algorithms(), ", ")+" (default: RS256 for RSA keys, ES256/ES384/ES512 by curve, EdDSA)")
	fl.StringVar(&f.keyID, "key-id", "", "key id written into the signature (kid header and keyid claim)")
	fl.StringVar(&f.revision, "revision", "", "manifest revision (default: the content hash of the policy files)")
	fl.StringArrayVar(&f.roots, "root", nil, "manifest root, repeatable (default: the first segment of every package and data path)")
	fl.BoolVar(&f.includeTests, "include-tests", false, "include *_test.rego files")
	fl.StringVar(&f.decision, "decision", authz.DefaultDecision, "decision rule the policies must define, as serve's policies.decision")
	fl.StringVar(&f.regoVersion, "rego-version", "v1", "Rego syntax of the policies, v1 or v0 (written to the manifest)")
	return cmd
}

func runBundleBuild(cmd *cobra.Command, dir string, f bundleBuildFlags) error {
	if f.output == "" {
		return usageErr(fmt.Errorf("bundle build: -o FILE is required"))
	}
	if f.signingKey == "" && (f.signingAlg != "" || f.keyID != "") {
		return usageErr(fmt.Errorf("bundle build: --signing-alg and --key-id need --signing-key"))
	}
	var signer *bundle.Signer
	if f.signingKey != "" {
		pem, err := os.ReadFile(f.signingKey)
		if err != nil {
			return usageErr(fmt.Errorf("--signing-key: %w", err))
		}
		key, err := token.ParsePrivateKey(pem)
		if err != nil {
			return usageErr(fmt.Errorf("--signing-key %s: %w", f.signingKey, err))
		}
		if signer, err = bundle.NewSigner(key, f.signingAlg, f.keyID); err != nil {
			return usageErr(fmt.Errorf("--signing-key %s: %w", f.signingKey, err))
		}
	}
	var buf bytes.Buffer
	res, err := bundle.Build(&buf, bundle.BuildConfig{
		Dir:          dir,
		Revision:     f.revision,
		Roots:        f.roots,
		IncludeTests: f.includeTests,
		RegoVersion:  f.regoVersion,
		Decision:     f.decision,
		Signer:       signer,
		Builtins:     replica.Builtins(),
	})
	if err != nil {
		return usageErr(fmt.Errorf("bundle build %s: %w", dir, err))
	}
	if err := writeBundleFile(f.output, buf.Bytes()); err != nil {
		return failureErr(fmt.Errorf("bundle build: write %s: %w", f.output, err))
	}
	signed := "unsigned"
	if signer != nil {
		signed = "signed " + signer.Algorithm()
		if id := signer.KeyID(); id != "" {
			signed += " (key id " + id + ")"
		}
	}
	fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: revision %s, %d files, roots [%s], %s, %d bytes\n",
		f.output, res.Revision, len(res.Files), strings.Join(res.Roots, " "), signed, res.Bytes)
	return nil
}

// writeBundleFile writes data to a temporary file next to path and
// renames it over path, so a reader never sees a partial bundle.
func writeBundleFile(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".bundle-*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
