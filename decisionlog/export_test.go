package decisionlog

import "context"

// Write is write for benchmarks.
func (l *Logger) Write(e Entry) { l.write(context.Background(), e) }

// Flush is flush for tests.
func (l *Logger) Flush() { l.flush() }

// FastLine is the record of e as written without a mask policy.
func (l *Logger) FastLine(e Entry) []byte {
	return append([]byte(nil), l.appendRecord(nil, &e, l.secretsOf(e.Authorization))...)
}

// GenericLine is the record of e built as a value (the mask policies'
// path) and encoded.
func (l *Logger) GenericLine(e Entry) ([]byte, error) {
	rec, err := l.build(e, secretsOf(e.Authorization))
	if err != nil {
		return nil, err
	}
	line, err := l.encode(rec)
	return append([]byte(nil), line...), err
}
