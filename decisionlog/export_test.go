package decisionlog

import "context"

// Write is write for benchmarks.
func (l *Logger) Write(e Entry) { l.write(context.Background(), e) }

// Flush is flush for tests.
func (l *Logger) Flush() { l.flush() }
