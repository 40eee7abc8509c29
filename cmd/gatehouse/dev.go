package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/template"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/authzen"
	"github.com/gatehouse-dev/gatehouse/control"
	"github.com/gatehouse-dev/gatehouse/decisionlog"
	"github.com/gatehouse-dev/gatehouse/internal/keys"
	"github.com/gatehouse-dev/gatehouse/policies"
)

// devWorld is the demo world seeded into a fresh dev control endpoint: the
// seeds' stories (see policies/envoy/authz_test.rego, which tests the same
// world).
//
//go:embed devworld.json
var devWorld []byte

// Dev issuers: the first is an ordinary IdP; the second carries per-tenant
// roles in its tokens (trust_token_roles) for subjects absent from the data.
const (
	devIssuer        = "https://idp.dev.gatehouse.local/"
	devTrustedIssuer = "https://tenants.dev.gatehouse.local/"
	devAudience      = "api"
)

type devFlags struct {
	dir, policies                            string
	grpcAddr, httpAddr, opsAddr, controlAddr string
	authzenAddr                              string
	logLevel, logFormat                      string
}

func newDevCmd() *cobra.Command {
	var f devFlags
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a control endpoint and a sidecar on a demo world, and print example requests",
		Long: `Run the control endpoint and a sidecar in one process on an embedded default:
the shipped policies, a demo world of tenants, users, projects and grants (the
seeds' stories), a development token issuer, and ready-to-paste example
requests for allowed and denied cases.

Everything lives in --dir (default: a temporary folder removed at exit); with
--dir, the data, keys and an editable copy of the policies survive restarts.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd); err != nil {
				return usageErr(err)
			}
			return runDev(cmd.Context(), f, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.dir, "dir", "", "folder for data, keys, tokens and policies (default: a temporary folder)")
	fl.StringVar(&f.policies, "policies", "", "serve this policy directory instead of a copy of the shipped policies")
	fl.StringVar(&f.grpcAddr, "grpc-addr", "127.0.0.1:9191", "ext_authz gRPC address")
	fl.StringVar(&f.httpAddr, "http-addr", "127.0.0.1:9192", "ext_authz HTTP service address")
	fl.StringVar(&f.opsAddr, "ops-addr", "127.0.0.1:8181", "ops address")
	fl.StringVar(&f.controlAddr, "control-addr", "127.0.0.1:8282", "control endpoint address")
	fl.StringVar(&f.authzenAddr, "authzen-addr", "127.0.0.1:9193", "AuthZEN API address (PEP token: DIR/authzen.token)")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.logFormat, "log-format", "text", "json or text")
	return cmd
}

func runDev(ctx context.Context, f devFlags, stdout, stderr io.Writer) error {
	logCfg := LogConfig{Level: f.logLevel, Format: f.logFormat}
	if err := logCfg.Validate(); err != nil {
		return configErr(err)
	}
	logger := newLogger(logCfg, stderr)
	dir := f.dir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "gatehouse-dev-")
		if err != nil {
			return failureErr(err)
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	env, err := prepareDevDir(dir, f.policies)
	if err != nil {
		return failureErr(err)
	}

	ctrl, err := control.New(control.Config{
		Addr:           f.controlAddr,
		DataDir:        filepath.Join(dir, "control"),
		AdminTokenFile: env.adminToken,
		SyncTokenFile:  env.syncToken,
		Issuers:        []authz.IssuerConfig{env.issuer(devIssuer, false)},
	}, logger.With("component", "control"))
	if err != nil {
		return failureErr(err)
	}
	defer ctrl.Close()
	if err := ctrl.Listen(); err != nil {
		return failureErr(err)
	}
	controlURL := "http://" + ctrl.Addr().String()

	cfg := ServeConfig{
		Listen:   ListenConfig{GRPC: f.grpcAddr, HTTP: f.httpAddr, Ops: f.opsAddr, AuthZEN: f.authzenAddr, GRPCReflection: true},
		AuthZEN:  authzen.Config{TokenFile: env.authzenToken},
		Policies: authz.PolicyConfig{Dir: env.policies},
		Data:     DataConfig{Dir: filepath.Join(dir, "sidecar"), ControlURL: URLList(controlURL), TokenFile: env.syncToken},
		Issuers:  []authz.IssuerConfig{env.issuer(devIssuer, false), env.issuer(devTrustedIssuer, true)},
		Log:      logCfg,
		ID:       "dev-sidecar",
		// Every decision in OPA's decision-log format (README: Decision logs),
		// to a file and uploaded to the control endpoint's /v1/decisions.
		DecisionLogs: &decisionlog.Config{
			File:    &decisionlog.FileConfig{Path: filepath.Join(dir, "decisions.log")},
			Service: &decisionlog.ServiceConfig{URL: controlURL + "/v1/logs", TokenFile: env.syncToken},
		},
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return configErr(err)
	}
	sc, err := newSidecar(cfg, logger.With("component", "sidecar"))
	if err != nil {
		return failureErr(err)
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return ctrl.Serve(gctx) })
	g.Go(func() error {
		if ctrl.Revision() == 0 {
			if err := seedDevWorld(gctx, controlURL, env.adminToken); err != nil {
				return fmt.Errorf("seed the demo world: %w", err)
			}
			logger.Info("demo world seeded", "revision", ctrl.Revision())
		}
		return sc.Run(gctx)
	})
	g.Go(func() error {
		if err := waitReady(gctx, sc.engine, 20*time.Second); err != nil {
			return err
		}
		return printDevGuide(stdout, env, f, sc, controlURL)
	})
	if err := g.Wait(); err != nil {
		return failureErr(err)
	}
	return nil
}

// devEnv is what prepareDevDir laid out.
type devEnv struct {
	dir                   string
	adminToken, syncToken string // token files
	authzenToken          string // the PEP token of the AuthZEN API
	publicKey             string // PEM file
	key                   *rsa.PrivateKey
	policies              string
	tokens                string // folder of minted tokens
}

func (e devEnv) issuer(name string, trust bool) authz.IssuerConfig {
	c := authz.IssuerConfig{
		Issuer: name, Audiences: []string{devAudience}, Algorithms: []string{"RS256"},
		PublicKeyFile: e.publicKey, TrustTokenRoles: trust,
	}
	c.SetDefaults()
	return c
}

// prepareDevDir creates (or reuses) tokens, the issuer key and a copy of
// the shipped policies in dir.
func prepareDevDir(dir, policyDir string) (devEnv, error) {
	env := devEnv{
		dir:          dir,
		adminToken:   filepath.Join(dir, "admin.token"),
		syncToken:    filepath.Join(dir, "sync.token"),
		authzenToken: filepath.Join(dir, "authzen.token"),
		publicKey:    filepath.Join(dir, "issuer", keys.PublicFile),
		policies:     policyDir,
		tokens:       filepath.Join(dir, "tokens"),
	}
	for _, d := range []string{dir, filepath.Join(dir, "issuer"), env.tokens} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return env, err
		}
	}
	for _, tf := range []string{env.adminToken, env.syncToken, env.authzenToken} {
		if _, err := os.Stat(tf); errors.Is(err, os.ErrNotExist) {
			b := make([]byte, 24)
			_, _ = rand.Read(b)
			if err := os.WriteFile(tf, []byte(hex.EncodeToString(b)+"\n"), 0o600); err != nil {
				return env, err
			}
		}
	}
	key, err := devKey(filepath.Join(dir, "issuer"))
	if err != nil {
		return env, err
	}
	env.key = key
	if env.policies == "" {
		env.policies = filepath.Join(dir, "policies")
		if _, err := os.Stat(env.policies); errors.Is(err, os.ErrNotExist) {
			if err := os.CopyFS(env.policies, policies.FS); err != nil {
				return env, fmt.Errorf("copy the shipped policies: %w", err)
			}
		}
	}
	return env, nil
}

// devKey loads the dev issuer's RSA key from dir, creating the key pair
// (keys.SigningFile, keys.PublicFile) on the first run.
func devKey(dir string) (*rsa.PrivateKey, error) {
	signing := filepath.Join(dir, keys.SigningFile)
	if _, err := os.Stat(signing); errors.Is(err, os.ErrNotExist) {
		if _, _, err := keys.WriteRSA(dir); err != nil {
			return nil, err
		}
	}
	return keys.LoadRSA(signing)
}

// mint signs a dev token valid for 12 hours.
func (e devEnv) mint(issuer, subject string, claims map[string]any) (string, error) {
	now := time.Now()
	c := jwt.MapClaims{"iss": issuer, "aud": devAudience, "sub": subject, "iat": now.Unix(), "exp": now.Add(12 * time.Hour).Unix()}
	for k, v := range claims {
		c[k] = v
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, c)
	return tok.SignedString(e.key)
}

func seedDevWorld(ctx context.Context, controlURL, adminTokenFile string) error {
	tok, err := os.ReadFile(adminTokenFile)
	if err != nil {
		return err
	}
	var last error
	for range 50 { // the control endpoint is starting in the same process
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, controlURL+"/v1/batch", bytes.NewReader(devWorld))
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			return fmt.Errorf("POST /v1/batch: %s: %s", resp.Status, body)
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return last
}

func waitReady(ctx context.Context, e *authz.Engine, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		err := e.Ready()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sidecar not ready after %s: %w", limit, err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// devCase is one example request of the guide.
type devCase struct {
	Title   string
	Subject string
	Issuer  string
	Claims  map[string]any
	Path    string
	Project string
	Roles   string
	Expect  string
	Token   string // file holding the token
}

var devCases = []devCase{
	{Title: "allowed: Bob (Beta) uses timekeeping in his tenant", Subject: "bob", Path: "/t/beta/entries", Project: "timekeeping", Expect: "200, x-gatehouse-roles: developer"},
	{Title: "allowed: Alice (Alpha) is Beta's external accountant", Subject: "alice", Path: "/t/beta/books", Project: "timekeeping", Roles: "accountant", Expect: "200, x-gatehouse-tenant: beta"},
	{Title: "denied: the route needs accountant, Bob is a developer", Subject: "bob", Path: "/t/beta/books", Project: "timekeeping", Roles: "accountant", Expect: "403 role_required"},
	{Title: "denied: a customer user visits the partner app", Subject: "alice", Path: "/t/alpha/deals", Project: "partner-app", Expect: "403 tenant_not_granted"},
	{Title: "denied: suspended user", Subject: "dave", Path: "/t/beta/entries", Project: "timekeeping", Expect: "403 user_inactive"},
	{Title: "denied: unknown user", Subject: "ghost", Path: "/t/beta/entries", Project: "timekeeping", Expect: "403 unknown_user"},
	{Title: "allowed: per-tenant roles carried in the token (subject not in the data)", Subject: "zoe", Issuer: devTrustedIssuer, Claims: map[string]any{"authorization": map[string]any{"beta": map[string]any{"roles": []string{"developer", "admin"}}}}, Path: "/t/beta/entries", Project: "timekeeping", Expect: "200, x-gatehouse-roles: developer"},
	{Title: "denied: no token", Path: "/t/beta/entries", Project: "timekeeping", Expect: "401 missing_token"},
}

var devGuide = template.Must(template.New("guide").Parse(`
Gatehouse dev is ready.

  ext_authz gRPC   {{.GRPC}}   (grpc.health.v1 and server reflection on)
  ext_authz HTTP   http://{{.HTTP}}
  ops              http://{{.Ops}}/v1/status   /metrics   /readyz
  control          {{.Control}}   (admin token: {{.Dir}}/admin.token)
  policies         {{.Policies}}   (edit and save: reloaded within 2 s)
  dev issuers      {{.Issuer}} and {{.Trusted}} (audience "api"; key {{.Dir}}/issuer/)
  tokens           {{.Dir}}/tokens/<user>.jwt (12 h){{if .AuthZEN}}
  AuthZEN API      http://{{.AuthZEN}}/access/v1/...   (/.well-known/authzen-configuration){{end}}

HTTP service mode (route settings travel as x-gatehouse-context-* headers, as
Envoy's authorization_request.headers_to_add would send them):
{{range .Cases}}
# {{.Title}} -> {{.Expect}}
curl -si http://{{$.HTTP}}{{.Path}}{{if .Token}} -H "authorization: Bearer $(cat {{.Token}})"{{end}} -H "x-gatehouse-context-project: {{.Project}}"{{if .Roles}} -H "x-gatehouse-context-roles: {{.Roles}}"{{end}}
{{end}}
Each answer's x-gatehouse-decision-id names its decision log record (OPA's
format, token-free) in {{.Dir}}/decisions.log:

grep "$(curl -si http://{{.HTTP}}/t/beta/entries -H "authorization: Bearer $(cat {{.Dir}}/tokens/bob.jwt)" -H "x-gatehouse-context-project: timekeeping" | tr -d '\r' | sed -n 's/^x-gatehouse-decision-id: //Ip')" {{.Dir}}/decisions.log

gRPC (what Envoy sends):

grpcurl -plaintext -d @ {{.GRPC}} envoy.service.auth.v3.Authorization/Check <<EOF
{"attributes": {"request": {"http": {"method": "GET", "path": "/t/beta/entries", "host": "api.example.com",
  "headers": {"authorization": "Bearer $(cat {{.Dir}}/tokens/bob.jwt)"}}},
  "contextExtensions": {"project": "timekeeping"}}}
EOF

{{if .AuthZEN}}AuthZEN API (applications ask too; the PEP's token is {{.Dir}}/authzen.token):

# may Alice act as accountant on timekeeping in Beta? -> "decision": true
curl -s http://{{.AuthZEN}}/access/v1/evaluation -H "authorization: Bearer $(cat {{.Dir}}/authzen.token)" -H 'content-type: application/json' \
  -d '{"subject":{"type":"user","id":"alice"},"action":{"name":"accountant"},"resource":{"type":"project","id":"timekeeping","properties":{"tenant":"beta"}}}'

# a batch for Bob in Beta: developer, then accountant -> true, false
curl -s http://{{.AuthZEN}}/access/v1/evaluations -H "authorization: Bearer $(cat {{.Dir}}/authzen.token)" -H 'content-type: application/json' \
  -d '{"subject":{"type":"user","id":"bob"},"resource":{"type":"project","id":"timekeeping","properties":{"tenant":"beta"}},"evaluations":[{"action":{"name":"developer"}},{"action":{"name":"accountant"}}]}'

# in which tenants may Alice use timekeeping? -> beta
curl -s http://{{.AuthZEN}}/access/v1/search/resource -H "authorization: Bearer $(cat {{.Dir}}/authzen.token)" -H 'content-type: application/json' \
  -d '{"subject":{"type":"user","id":"alice"},"action":{"name":"access"},"resource":{"type":"tenant","properties":{"project":"timekeeping"}}}'

{{end}}Revoke Bob's grant, then repeat the first request: 403 no_role within milliseconds.

curl -s -X DELETE {{.Control}}/v1/user_grants/bob-tk -H "authorization: Bearer $(cat {{.Dir}}/admin.token)"

Is the revocation enforced everywhere? Ask with the revision the DELETE
answered ({"revision": R, ...}): "pending" lists the sidecars not there yet.

curl -s {{.Control}}/v1/revisions/R -H "authorization: Bearer $(cat {{.Dir}}/admin.token)"
curl -s {{.Control}}/v1/sidecars -H "authorization: Bearer $(cat {{.Dir}}/admin.token)"

Who changed what (the audit, per tenant), and a decision's log record (its
decision_id is the answer's x-gatehouse-decision-id header):

curl -s "{{.Control}}/v1/audit?tenant=beta&limit=5" -H "authorization: Bearer $(cat {{.Dir}}/admin.token)"
curl -s "{{.Control}}/v1/decisions?tenant=beta&limit=5" -H "authorization: Bearer $(cat {{.Dir}}/admin.token)"
curl -s "{{.Control}}/v1/usage?tenant=beta" -H "authorization: Bearer $(cat {{.Dir}}/admin.token)"

Stop with Ctrl-C.
`))

func printDevGuide(w io.Writer, env devEnv, f devFlags, sc *sidecar, controlURL string) error {
	cases := make([]devCase, len(devCases))
	copy(cases, devCases)
	for i := range cases {
		c := &cases[i]
		if c.Subject == "" {
			continue
		}
		iss := c.Issuer
		if iss == "" {
			iss = devIssuer
		}
		tok, err := env.mint(iss, c.Subject, c.Claims)
		if err != nil {
			return err
		}
		c.Token = filepath.Join(env.tokens, c.Subject+".jwt")
		if err := os.WriteFile(c.Token, []byte(tok), 0o600); err != nil {
			return err
		}
	}
	return devGuide.Execute(w, map[string]any{
		"GRPC": sc.ext.GRPCAddr(), "HTTP": sc.ext.HTTPAddr(), "Ops": sc.ops.Addr(),
		"Control": controlURL, "Dir": env.dir, "Policies": env.policies,
		"Issuer": devIssuer, "Trusted": devTrustedIssuer, "Cases": cases, "AuthZEN": authzenAddr(sc),
	})
}

// authzenAddr is the AuthZEN listener's address, "" when off.
func authzenAddr(sc *sidecar) string {
	if sc.authzen == nil {
		return ""
	}
	return sc.authzen.Addr()
}
