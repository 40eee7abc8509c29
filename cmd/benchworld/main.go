// Command benchworld prepares and probes the data-plane benchmarks: it
// writes a control endpoint's data file for a synthetic world of a given
// size directly (bypassing the API, so that 10 million grants load in
// minutes), with a load generator scenario whose answers are known; and it
// measures the time from a write at the control endpoint to a changed
// decision at a sidecar.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/golang-jwt/jwt/v5"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/gatehouse-dev/gatehouse/internal/keys"
	"github.com/gatehouse-dev/gatehouse/internal/loadgen"
	"github.com/gatehouse-dev/gatehouse/internal/worldgen"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

var sizes = map[string]worldgen.Spec{"small": worldgen.Small, "200k": worldgen.Default, "1m": worldgen.Scale1M, "10m": worldgen.Scale10M}

// Scenarios build writes next to the world, and the seeds of their
// requests: a hot one (few distinct requests, which a decision cache
// answers after their first time) and a cold one (many, most first-seen
// when they come round again).
const (
	hotScenario  = "scenario.json"
	hotSeed      = 11
	coldScenario = "scenario-cold.json"
	coldSeed     = 12
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: benchworld build|scenario|opadata|latency|bootstrap|followers [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "build":
		err = build(os.Args[2:])
	case "scenario":
		err = scenario(os.Args[2:])
	case "opadata":
		err = opaData(os.Args[2:])
	case "latency":
		err = latency(os.Args[2:])
	case "bootstrap":
		err = bootstrap(os.Args[2:])
	case "followers":
		err = followers(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchworld:", err)
		os.Exit(1)
	}
}

const issuer = "https://bench.gatehouse.test/"

// build writes DIR/control/control.db, DIR/scenario.json (hot) and
// DIR/scenario-cold.json (cold).
func build(args []string) error {
	fs := flag.NewFlagSet("build", flag.ExitOnError)
	size := fs.String("size", "small", "small, 200k, 1m or 10m")
	dir := fs.String("dir", "", "output folder")
	nreq := fs.Int("requests", 2000, "distinct requests in the hot scenario, "+hotScenario+" (80% allowed)")
	ncold := fs.Int("cold-requests", 20000, "distinct requests in the cold scenario, "+coldScenario+" (80% allowed; 0: none)")
	_ = fs.Parse(args)
	spec, ok := sizes[*size]
	if !ok || *dir == "" {
		return errors.New("build needs --size small|200k|1m|10m and --dir")
	}
	path := filepath.Join(*dir, "control", "control.db")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	_ = os.Remove(path)
	db, err := bolt.Open(path, 0o600, &bolt.Options{NoSync: true, FreelistType: bolt.FreelistMapType, InitialMmapSize: 1 << 30})
	if err != nil {
		return err
	}
	defer db.Close()
	if err := db.Update(tenancy.Init); err != nil {
		return err
	}
	start := time.Now()
	counts := map[string]int{}
	var tx *bolt.Tx
	var w *tenancy.Writer
	n := 0
	world, err := worldgen.Generate(spec, func(e tenancy.Entity) error {
		if tx == nil {
			if tx, err = db.Begin(true); err != nil {
				return err
			}
			if w, err = tenancy.NewWriter(tx, 1); err != nil {
				return err
			}
		}
		if err := w.Put(e); err != nil {
			return err
		}
		counts[e.Collection()]++
		n++
		if n%50000 == 0 {
			if err := tx.Commit(); err != nil {
				return err
			}
			tx = nil
			if n%1000000 == 0 {
				fmt.Fprintf(os.Stderr, "  %d entities, %s\n", n, time.Since(start).Round(time.Second))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if tx != nil {
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	err = db.Update(func(tx *bolt.Tx) error {
		var b [16]byte
		_, _ = rand.Read(b[:])
		if err := tenancy.SetEpoch(tx, hex.EncodeToString(b[:])); err != nil {
			return err
		}
		return tenancy.SetRevision(tx, 1)
	})
	if err == nil {
		err = db.Sync()
	}
	if err != nil {
		return err
	}
	st, _ := os.Stat(path)
	fmt.Printf("world %s: %v entities (%d tenants, %d users, %d user grants) in %s, file %.0f MiB\n",
		*size, n, counts[tenancy.Tenants], counts[tenancy.Users], counts[tenancy.UserGrants],
		time.Since(start).Round(time.Millisecond), float64(st.Size())/(1<<20))
	if err := writeScenario(filepath.Join(*dir, hotScenario), world, *nreq, hotSeed); err != nil {
		return err
	}
	if *ncold > 0 {
		return writeScenario(filepath.Join(*dir, coldScenario), world, *ncold, coldSeed)
	}
	return nil
}

// scenario writes a scenario of an existing world (the world is generated
// again in memory, deterministically, without writing its data).
func scenario(args []string) error {
	fs := flag.NewFlagSet("scenario", flag.ExitOnError)
	size := fs.String("size", "small", "the world's size: small, 200k, 1m or 10m")
	out := fs.String("out", "", "scenario file to write")
	kind := fs.String("kind", "cold", "hot ("+hotScenario+"'s requests) or cold ("+coldScenario+"'s)")
	n := fs.Int("requests", 0, "distinct requests (default: 2000 hot, 20000 cold)")
	_ = fs.Parse(args)
	spec, ok := sizes[*size]
	if !ok || *out == "" {
		return errors.New("scenario needs --size small|200k|1m|10m and --out")
	}
	seed, def := uint64(coldSeed), 20000
	switch *kind {
	case "cold":
	case "hot":
		seed, def = hotSeed, 2000
	default:
		return fmt.Errorf("--kind %q: hot or cold", *kind)
	}
	if *n <= 0 {
		*n = def
	}
	w, err := worldgen.Generate(spec, func(tenancy.Entity) error { return nil })
	if err != nil {
		return err
	}
	return writeScenario(*out, w, *n, seed)
}

// opaData writes a world as one JSON document for a plain OPA (the peer,
// opa-envoy-plugin, loading it as data.tenancy): the facts the shipped
// policy reads, indexed the same way (bench/peer/policy.rego):
//
//	{"tenants": {t: {"status"}}, "users": {u: {"tenant", "status"}},
//	 "tenant_roles": {p: {t: [roles]}}, "user_roles": {u: {p: {t: [roles]}}}}
func opaData(args []string) error {
	fs := flag.NewFlagSet("opadata", flag.ExitOnError)
	size := fs.String("size", "small", "the world's size: small, 200k, 1m or 10m")
	out := fs.String("out", "", "JSON file to write")
	_ = fs.Parse(args)
	spec, ok := sizes[*size]
	if !ok || *out == "" {
		return errors.New("opadata needs --size small|200k|1m|10m and --out")
	}
	type status struct {
		Tenant string `json:"tenant,omitempty"`
		Status string `json:"status"`
	}
	doc := struct {
		Tenants     map[string]status                         `json:"tenants"`
		Users       map[string]status                         `json:"users"`
		TenantRoles map[string]map[string][]string            `json:"tenant_roles"`
		UserRoles   map[string]map[string]map[string][]string `json:"user_roles"`
	}{map[string]status{}, map[string]status{}, map[string]map[string][]string{}, map[string]map[string]map[string][]string{}}
	_, err := worldgen.Generate(spec, func(e tenancy.Entity) error {
		switch e := e.(type) {
		case *tenancy.Tenant:
			doc.Tenants[e.ID] = status{Status: e.Status}
		case *tenancy.User:
			doc.Users[e.ID] = status{Tenant: e.Tenant, Status: e.Status}
		case *tenancy.Project:
			doc.TenantRoles[e.ID] = map[string][]string{e.Owner: slices.Sorted(slices.Values(e.Roles))}
		case *tenancy.ProjectGrant:
			if e.Status == tenancy.StatusActive {
				doc.TenantRoles[e.Project][e.Tenant] = slices.Sorted(slices.Values(e.Roles))
			}
		case *tenancy.UserGrant:
			byProject := doc.UserRoles[e.User]
			if byProject == nil {
				byProject = map[string]map[string][]string{}
				doc.UserRoles[e.User] = byProject
			}
			if byProject[e.Project] == nil {
				byProject[e.Project] = map[string][]string{}
			}
			roles := append(byProject[e.Project][e.Tenant], e.Roles...)
			slices.Sort(roles)
			byProject[e.Project][e.Tenant] = slices.Compact(roles)
		}
		return nil
	})
	if err != nil {
		return err
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return err
	}
	tmp := *out + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, *out)
}

// writeScenario writes n requests of w, 80% of them allowed, each with a
// valid token of its subject (one token per user, as clients reuse theirs).
func writeScenario(path string, w *worldgen.World, n int, seed uint64) error {
	sc := loadgen.Scenario{Issuer: issuer, Audience: "api"}
	for i, r := range w.Requests(n, 80, seed) {
		expect := "deny"
		if r.Allow {
			expect = "allow"
		}
		sc.Requests = append(sc.Requests, loadgen.Request{
			Name: fmt.Sprintf("r%04d-%s", i, r.Reason), Weight: 1, Method: "GET", Path: r.Path, Host: "api.example.com",
			ContextExtensions: r.Context, Subject: r.Subject, Token: loadgen.TokenValid, Expect: expect,
		})
	}
	b, err := json.MarshalIndent(sc, "", " ")
	if err != nil {
		return err
	}
	// written whole or not at all: the bench reuses the file when present
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// latency revokes and restores user grants at the control endpoint and
// measures how long a sidecar takes to change its decision.
func latency(args []string) error {
	fs := flag.NewFlagSet("latency", flag.ExitOnError)
	size := fs.String("size", "small", "the world's size (to find its grants)")
	controlURL := fs.String("control", "http://127.0.0.1:8282", "control endpoint")
	adminFile := fs.String("admin-token-file", "", "admin token file")
	grpcAddr := fs.String("grpc", "127.0.0.1:9191", "sidecar ext_authz address")
	keyFile := fs.String("signing-key", "", "PEM private key the sidecar's issuer trusts")
	n := fs.Int("n", 100, "writes to measure (half revocations, half restorations)")
	_ = fs.Parse(args)
	spec, ok := sizes[*size]
	if !ok {
		return fmt.Errorf("unknown size %q", *size)
	}
	w, err := worldgen.Generate(spec, func(tenancy.Entity) error { return nil })
	if err != nil {
		return err
	}
	admin, err := os.ReadFile(*adminFile)
	if err != nil {
		return err
	}
	key, err := keys.LoadRSA(*keyFile)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(*grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := authv3.NewAuthorizationClient(conn)
	var allowed []worldgen.Request
	for _, r := range w.Requests(*n*4, 100, 5) {
		if r.Allow && !slices.ContainsFunc(allowed, func(x worldgen.Request) bool { return x.Grant.ID == r.Grant.ID }) {
			allowed = append(allowed, r)
		}
	}
	var lat []time.Duration
	for i := 0; i < *n/2 && i < len(allowed); i++ {
		r := allowed[i]
		tok, err := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{"iss": issuer, "aud": "api", "sub": r.Subject, "exp": time.Now().Add(time.Hour).Unix()}).SignedString(key)
		if err != nil {
			return err
		}
		check := func() (bool, error) {
			resp, err := client.Check(context.Background(), r.CheckRequest(tok))
			if err != nil {
				return false, err
			}
			return resp.GetStatus().GetCode() == int32(code.Code_OK), nil
		}
		if ok, err := check(); err != nil || !ok {
			return fmt.Errorf("request for grant %s not allowed before the test (%v)", r.Grant.ID, err)
		}
		for _, step := range []struct {
			method string
			body   any
			want   bool
		}{{http.MethodDelete, nil, false}, {http.MethodPut, r.Grant, true}} {
			start := time.Now()
			if err := call(*controlURL, strings.TrimSpace(string(admin)), step.method, "/v1/user_grants/"+r.Grant.ID, step.body); err != nil {
				return err
			}
			for {
				ok, err := check()
				if err != nil {
					return err
				}
				if ok == step.want {
					break
				}
				if time.Since(start) > 10*time.Second {
					return fmt.Errorf("decision for %s did not change within 10s", r.Grant.ID)
				}
			}
			lat = append(lat, time.Since(start))
		}
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	fmt.Printf("write -> changed decision over %d writes: p50 %v  p90 %v  p99 %v  max %v\n",
		len(lat), q(0.5).Round(10*time.Microsecond), q(0.9).Round(10*time.Microsecond), q(0.99).Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond))
	return nil
}

func call(base, token, method, path string, body any) error {
	var rd *strings.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
	} else {
		rd = strings.NewReader("")
	}
	req, _ := http.NewRequest(method, base+path, rd)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	return nil
}
