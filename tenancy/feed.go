package tenancy

import (
	"encoding/json"
	"time"
)

// The sync protocol (SPEC §7) streams newline-delimited JSON (one FeedLine
// per line, Content-Type application/x-ndjson).
//
// A revision travels as one or more revision lines (parts) of bounded size,
// in order, every part but the last with "more":true; the last carries the
// revision's history hash (see RevisionHash). A revision of any size thus
// reaches a sidecar, which applies all its parts in one transaction: a
// stream cut inside a revision leaves nothing of it.
//
//	{"type":"revision","revision":R,"time":"...","changes":[...],"more":true}
//	{"type":"revision","revision":R,"time":"...","changes":[...],"hash":"H(R)"}
//
// GET /v1/sync/snapshot:
//
//	{"type":"header","revision":S,"epoch":"E","hash":"H(S)"}
//	{"type":"entity","collection":"tenants","id":"acme","mod_revision":12,"value":{...}}   (every entity, collections in Collections order)
//	{"type":"revision",...}   (the revisions S+1..R committed while the entities were read, if any)
//	{"type":"end","revision":R,"count":N,"hash":"H(R)"}
//
// The entities are read in short transactions, each seeing a revision
// between S and R; replaying the revisions S+1..R over them (puts and
// deletes are idempotent) gives exactly the data at R, whose history hash
// the end line carries. A snapshot without its end line (or whose count or
// hash differs) is truncated and must be discarded whole.
//
// GET /v1/sync/changes?since=R&epoch=E&hash=H(R) (long-lived):
//
//	{"type":"header","revision":CURRENT,"epoch":"E","oldest":O}
//	revision lines from R+1 on, without gaps
//	{"type":"heartbeat","revision":CURRENT,"time":"..."}   (every few seconds while idle)
//
// A line that does not parse was cut and is not applied. A since older than
// the retained history, an epoch or hash that is not the control endpoint's
// history at since (a restored or replaced control endpoint) answers 410
// Gone, a since ahead of the current revision 409 with code "ahead": the
// sidecar takes a new snapshot in both cases, and never applies revisions
// of a history whose hash does not follow the one it holds.
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
	// More marks a revision line followed by more parts of its revision.
	More bool `json:"more,omitempty"`
	// Hash is the history hash at Revision: on the last part of a revision,
	// and on snapshot header and end lines.
	Hash string `json:"hash,omitempty"`
}

// LogEntry is one record of the change history, as the control endpoint
// stores it: a revision, or one part of it (More: more parts follow; the
// last part carries the revision's Hash).
type LogEntry struct {
	Revision uint64    `json:"revision"`
	Time     time.Time `json:"time"`
	Changes  []Change  `json:"changes"`
	More     bool      `json:"more,omitempty"`
	Hash     string    `json:"hash,omitempty"`
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
	k := []byte(id)
	if err := w.bucket("e/"+collection).Put(k, encodeValue(k, modRev, doc)); err != nil {
		return err
	}
	return w.reindex(prev, e)
}
