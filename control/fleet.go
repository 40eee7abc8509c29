package control

import (
	"encoding/json"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
)

// The fleet view (SPEC §9): sidecars report their state every few seconds
// (POST /v1/sidecars/{id}/status); the control endpoint keeps the last
// report of each in memory (a restarted control endpoint knows the fleet
// again within one report interval) and forgets a sidecar sidecar_ttl after
// its last report. GET /v1/revisions/{R} answers whether a write is
// enforced everywhere.

const (
	// DefaultSidecarTTL is Config.SidecarTTL's default.
	DefaultSidecarTTL = time.Minute
	// maxSidecars bounds the sidecars known at once (reports of new ids
	// beyond it answer 503 until others expire).
	maxSidecars = 10000
	// maxStatusBytes bounds a status report's body.
	maxStatusBytes = 64 << 10
)

// sidecarID is the form of a sidecar id (a host name fits).
var sidecarID = regexp.MustCompile(`^[a-zA-Z0-9._:-]{1,253}$`)

// SidecarStatus is a sidecar's report (the body of POST
// /v1/sidecars/{id}/status).
type SidecarStatus struct {
	ID              string            `json:"id"`
	Version         string            `json:"version"`
	Ready           bool              `json:"ready"`
	PolicyRevision  string            `json:"policy_revision"`
	TenancyRevision uint64            `json:"tenancy_revision"`
	SyncedAt        string            `json:"synced_at"` // RFC 3339, or empty
	LastError       string            `json:"last_error"`
	Labels          map[string]string `json:"labels"`
}

// Sidecar is a known sidecar in GET /v1/sidecars: its last report, when it
// arrived, and how far its tenancy data is behind.
type Sidecar struct {
	SidecarStatus
	ReportedAt   time.Time `json:"reported_at"`
	AgeSeconds   float64   `json:"age_seconds"`
	LagRevisions uint64    `json:"lag_revisions"`
}

// fleet holds the last report of each sidecar.
type fleet struct {
	ttl time.Duration
	now func() time.Time

	mu       sync.Mutex
	sidecars map[string]reported
}

type reported struct {
	status SidecarStatus
	at     time.Time
}

func newFleet(ttl time.Duration, now func() time.Time) *fleet {
	return &fleet{ttl: ttl, now: now, sidecars: map[string]reported{}}
}

// report records a status; it refuses a new id while maxSidecars live ones
// are known.
func (f *fleet) report(st SidecarStatus) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	if _, known := f.sidecars[st.ID]; !known && len(f.sidecars) >= maxSidecars {
		f.expire(now)
		if len(f.sidecars) >= maxSidecars {
			return errorf(http.StatusServiceUnavailable, CodeBusy, "busy: %d sidecars report already; a new one is known once others expire (sidecar_ttl %v)", maxSidecars, f.ttl)
		}
	}
	f.sidecars[st.ID] = reported{status: st, at: now}
	return nil
}

// expire forgets the sidecars whose last report is older than the ttl.
// f.mu is held.
func (f *fleet) expire(now time.Time) {
	for id, r := range f.sidecars {
		if now.Sub(r.at) > f.ttl {
			delete(f.sidecars, id)
		}
	}
}

// live returns the sidecars reporting within the ttl, by id, with their lag
// behind current.
func (f *fleet) live(current uint64) []Sidecar {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	f.expire(now)
	out := make([]Sidecar, 0, len(f.sidecars))
	for _, r := range f.sidecars {
		sc := Sidecar{SidecarStatus: r.status, ReportedAt: r.at.UTC(), AgeSeconds: now.Sub(r.at).Seconds()}
		if current > r.status.TenancyRevision {
			sc.LagRevisions = current - r.status.TenancyRevision
		}
		out = append(out, sc)
	}
	slices.SortFunc(out, func(a, b Sidecar) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// collectors are the fleet's gauges, computed at each scrape.
func (f *fleet) collectors(current func() uint64) []prometheus.Collector {
	stat := func(fn func([]Sidecar) float64) func() float64 {
		return func() float64 { return fn(f.live(current())) }
	}
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gatehouse_control_fleet_sidecars",
			Help: "Sidecars that reported their status within sidecar_ttl.",
		}, stat(func(s []Sidecar) float64 { return float64(len(s)) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gatehouse_control_fleet_lag_revisions",
			Help: "The largest lag, in revisions, of a reporting sidecar's tenancy data behind the control endpoint's revision.",
		}, stat(func(s []Sidecar) float64 {
			var m uint64
			for _, sc := range s {
				m = max(m, sc.LagRevisions)
			}
			return float64(m)
		})),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gatehouse_control_fleet_pending_sidecars",
			Help: "Reporting sidecars whose tenancy data is behind the control endpoint's revision, or that are not ready.",
		}, stat(func(s []Sidecar) float64 {
			n := 0
			for _, sc := range s {
				if sc.LagRevisions > 0 || !sc.Ready {
					n++
				}
			}
			return float64(n)
		})),
	}
}

// handleSidecarStatus is POST /v1/sidecars/{id}/status (sync or admin
// token): a sidecar's report. The body's id, when set, must be the path's.
func (s *Server) handleSidecarStatus(w http.ResponseWriter, r *http.Request) {
	p, err := s.authenticate(r)
	if err == nil {
		err = requireReader(p, "reporting a sidecar's status")
	}
	id := r.PathValue("id")
	if err == nil && !sidecarID.MatchString(id) {
		err = badRequest("sidecar id %q is not valid ([a-zA-Z0-9._:-]{1,253})", id)
	}
	body, release, err := s.readBody(err, w, r, bodyLimit{maxStatusBytes, "the status bound (64 KiB)"})
	defer release()
	var st SidecarStatus
	if err == nil {
		if err = json.Unmarshal(body, &st); err != nil {
			err = badRequest("sidecar status: %v", err)
		}
	}
	if err == nil {
		switch {
		case st.ID == "":
			st.ID = id
		case st.ID != id:
			err = badRequest("sidecar status: id %q differs from the path's %q", st.ID, id)
		}
	}
	if err == nil && st.SyncedAt != "" {
		if _, perr := time.Parse(time.RFC3339Nano, st.SyncedAt); perr != nil {
			err = badRequest("sidecar status: synced_at %q is not an RFC 3339 time", st.SyncedAt)
		}
	}
	if err == nil {
		err = s.fleet.report(st)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Revision uint64 `json:"revision"`
	}{s.rev.Load()})
}

// sidecarsAnswer is the answer of GET /v1/sidecars.
type sidecarsAnswer struct {
	Items    []Sidecar `json:"items"`
	Revision uint64    `json:"revision"`
}

// handleSidecars is GET /v1/sidecars (admin token): the sidecars reporting
// within sidecar_ttl.
func (s *Server) handleSidecars(w http.ResponseWriter, r *http.Request) {
	p, err := s.authenticate(r)
	if err == nil {
		err = requireAdmin(p, "listing sidecars")
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	rev := s.rev.Load()
	writeJSON(w, http.StatusOK, sidecarsAnswer{Items: s.fleet.live(rev), Revision: rev})
}

// revisionAnswer is the answer of GET /v1/revisions/{R}.
type revisionAnswer struct {
	Revision uint64   `json:"revision"`
	Sidecars int      `json:"sidecars"`
	Applied  int      `json:"applied"`
	Pending  []string `json:"pending"`
	// Current is the control endpoint's revision.
	Current uint64 `json:"current"`
}

// handleRevision is GET /v1/revisions/{R} (admin token, or a delegated
// administrator: a tenant admin may ask whether its revocation is
// enforced): how many of the reporting sidecars have applied revision R,
// and which have not yet (as of their last report).
func (s *Server) handleRevision(w http.ResponseWriter, r *http.Request) {
	p, err := s.authenticate(r)
	if err == nil && p.role != roleAdmin {
		if p.role != roleUser {
			err = forbidden("the sync token reads the sync feed and bundles only")
		} else {
			err = s.db.View(func(tx *bolt.Tx) error {
				_, err := loadRights(tx, p)
				return err
			})
		}
	}
	var rev uint64
	if err == nil {
		v := r.PathValue("rev")
		rev, err = strconv.ParseUint(v, 10, 64)
		if err != nil || rev == 0 {
			err = badRequest("revision %q is not a positive integer", v)
		}
	}
	current := s.rev.Load()
	if err == nil && rev > current {
		err = notFound("revision %d is not committed (the current revision is %d)", rev, current)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ans := revisionAnswer{Revision: rev, Pending: []string{}, Current: current}
	for _, sc := range s.fleet.live(current) {
		ans.Sidecars++
		if sc.TenancyRevision >= rev {
			ans.Applied++
		} else {
			ans.Pending = append(ans.Pending, sc.ID)
		}
	}
	writeJSON(w, http.StatusOK, ans)
}
