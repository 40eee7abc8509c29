package tenancy

import (
	"encoding/json"
	"time"
)

// The sync protocol (SPEC §7) streams newline-delimited JSON (one FeedLine
// per line, Content-Type application/x-ndjson).
//
// GET /v1/sync/snapshot:
//
//	{"type":"header","revision":R,"epoch":"E"}
//	{"type":"entity","collection":"tenants","id":"acme","mod_revision":12,"value":{...}}   (every entity, collections in Collections order)
//	{"type":"end","revision":R,"count":N}
//
// A snapshot without its end line (or whose count differs) is truncated and
// must be discarded whole.
//
// GET /v1/sync/changes?since=R[&epoch=E] (long-lived):
//
//	{"type":"header","revision":CURRENT,"epoch":"E","oldest":O}
//	{"type":"revision","revision":R+1,"time":"...","changes":[{"op":"put",...},...]}
//	{"type":"heartbeat","revision":CURRENT,"time":"..."}   (every few seconds while idle)
//
// Revisions follow each other without gaps, each one complete on its line; a
// line that does not parse was cut and is not applied. A since older than
// the retained history (or an epoch that is not the control endpoint's)
// answers 410 Gone: the sidecar takes a new snapshot.
const (
	LineHeader    = "header"
	LineEntity    = "entity"
	LineEnd       = "end"
	LineRevision  = "revision"
	LineHeartbeat = "heartbeat"
)

// FeedLine is one line of a snapshot or change stream.
type FeedLine struct {
	Type     string `json:"type"`
	Revision uint64 `json:"revision,omitempty"`
	// Epoch identifies the control endpoint's history (header lines).
	Epoch string `json:"epoch,omitempty"`
	// Oldest is the oldest revision the change history still holds (header
	// of a change stream).
	Oldest uint64 `json:"oldest,omitempty"`
	// Entity lines.
	Collection  string          `json:"collection,omitempty"`
	ID          string          `json:"id,omitempty"`
	ModRevision uint64          `json:"mod_revision,omitempty"`
	Value       json.RawMessage `json:"value,omitempty"`
	// End lines: the number of entity lines sent.
	Count uint64 `json:"count,omitempty"`
	// Revision and heartbeat lines.
	Time    time.Time `json:"time,omitzero"`
	Changes []Change  `json:"changes,omitempty"`
}

// LogEntry is one revision of the change history, as the control endpoint
// stores it.
type LogEntry struct {
	Revision uint64    `json:"revision"`
	Time     time.Time `json:"time"`
	Changes  []Change  `json:"changes"`
}

// PutStored writes an entity document exactly as a snapshot carries it,
// keeping its mod revision, and maintains the indexes. Used to build a cache
// from a snapshot.
func (w *Writer) PutStored(collection, id string, modRev uint64, doc json.RawMessage) error {
	e, err := DecodeStored(collection, doc)
	if err != nil {
		return err
	}
	if e.Key() != id {
		return malformed("snapshot entity %s/%s carries id %q", collection, id, e.Key())
	}
	prev, err := w.Get(collection, id)
	if err != nil {
		return err
	}
	if err := w.bucket("e/"+collection).Put([]byte(id), stored(modRev, doc)); err != nil {
		return err
	}
	return w.reindex(prev, e)
}
