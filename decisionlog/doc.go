// Package decisionlog writes one record per decision (SPEC §9): OPA's
// decision-log event (decision_id, timestamp, path, input, result,
// labels, bundles, metrics, req_id, trace_id, span_id, erased, masked)
// plus Gatehouse's "gatehouse" object. Records go to any of three sinks
// together: the console (stdout), a rotated file, and an HTTP service in
// OPA's decision-log upload protocol (gzip'd JSON arrays). It also runs
// shadow policies (Shadow): a candidate policy evaluated beside the
// active one, whose answer never reaches Envoy.
//
// The Authorization header and the raw bearer token never appear in a
// record: the header is erased from the input, and every string of the
// record is scrubbed of the token before it is encoded. A policy may mask
// or drop records as in OPA (data.system.log.mask, data.system.log.drop,
// evaluated with the record as input).
//
// Without such a policy a record is written straight as JSON (JSON): the
// input from the front end's own writer (Entry.InputJSON, envoy.InputJSON)
// or from the OPA value it built, the rest from the Decision's fields; a
// mask or drop policy gets the record as a value (Record), then encoded.
// Both give the same JSON. AuthZEN answers are logged by the same Logger
// (Entry.Path, Entry.Result, Entry.BatchID).
//
// # Concurrency
//
// Log (Observe) never blocks a Check: it samples, then puts the entry on a
// bounded queue; a full queue drops the entry and counts it
// (gatehouse_decision_logs_dropped_total{reason="queue_full"}). One
// goroutine (Run) builds, masks and writes records; the upload sink has
// its own goroutine and a buffer bounded in bytes (full: the oldest
// records are dropped and counted). A Logger and a Shadow are safe for
// concurrent use.
//
// # Errors
//
// Nothing a sink does reaches a Check. Every record is written, or counted
// in gatehouse_decision_logs_dropped_total with its reason (queue_full,
// buffer_full, rejected, shutdown, encode_error, write_error), or skipped
// on purpose (gatehouse_decision_logs_skipped_total{reason="sample|policy"}).
package decisionlog
