package bundle

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/gatehouse-dev/gatehouse/authz"
)

// DirSource keeps an engine's policy set in step with a directory: an edit
// (in place or by rename, including Kubernetes ConfigMap symlink swaps) takes
// effect within about a second, or is reported and ignored if it does not
// compile.
type DirSource struct {
	dir      string
	decision string
	version  ast.RegoVersion
	engine   *authz.Engine
	logger   *slog.Logger
	// Poll is the fallback polling interval (default 1s); file events make
	// most reloads faster.
	Poll time.Duration

	tried string // revision of the last attempted load
}

// NewDirSource returns a source for cfg.Dir feeding e.
func NewDirSource(cfg PolicyConfig, e *authz.Engine, logger *slog.Logger) (*DirSource, error) {
	cfg.SetDefaults()
	v, err := authz.ParseRegoVersion(cfg.RegoVersion)
	if err != nil {
		return nil, err
	}
	return &DirSource{dir: cfg.Dir, decision: cfg.Decision, version: v, engine: e, logger: logger, Poll: time.Second}, nil
}

// Load loads the directory now if it changed since the last attempt. It
// returns the compile error, if any, after reporting it to the engine.
func (s *DirSource) Load() error {
	rev, err := authz.DirRevision(s.dir, false)
	if err != nil {
		s.engine.PolicyFailed(err)
		return err
	}
	if rev == s.tried {
		return nil
	}
	s.tried = rev
	src, err := authz.LoadDir(s.dir, s.version)
	if err == nil {
		var ps *authz.PolicySet
		if ps, err = s.engine.Compile(src, s.decision); err == nil {
			s.engine.SetPolicy(ps)
			return nil
		}
	}
	err = fmt.Errorf("policy directory %q (revision %s): %w", s.dir, rev, err)
	s.engine.PolicyFailed(err)
	return err
}

// Run watches the directory until ctx is done.
func (s *DirSource) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		s.logger.Warn("file events unavailable; polling the policy directory", "err", err)
	} else {
		defer w.Close()
		s.watchTree(w, s.dir)
	}
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w != nil {
		events, errs = w.Events, w.Errors
	}
	poll := time.NewTicker(s.Poll)
	defer poll.Stop()
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if ev.Has(fsnotify.Create) {
				if info, err := os.Stat(ev.Name); err == nil && info.IsDir() {
					s.watchTree(w, ev.Name)
				}
			}
			debounce.Reset(100 * time.Millisecond)
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			s.logger.Warn("policy directory watch error", "err", err)
		case <-debounce.C:
			_ = s.Load()
		case <-poll.C:
			_ = s.Load()
		}
	}
}

func (s *DirSource) watchTree(w *fsnotify.Watcher, root string) {
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() {
			if p != root && strings.HasPrefix(d.Name(), ".") && !strings.HasPrefix(d.Name(), "..") {
				return filepath.SkipDir
			}
			if err := w.Add(p); err != nil {
				s.logger.Warn("cannot watch policy folder", "path", p, "err", err)
			}
		}
		return nil
	})
}
