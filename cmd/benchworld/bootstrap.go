package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/internal/loadgen"
	"github.com/gatehouse-dev/gatehouse/replica"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// bootstrap measures a new sidecar's bootstrap: a fresh cache folder, a
// Syncer taking its first snapshot from the control endpoint, until the
// cache is present. It prints the time, this process's peak RSS, the
// cache file's size and its bytes per entity.
func bootstrap(args []string) error {
	fs := flag.NewFlagSet("bootstrap", flag.ExitOnError)
	control := fs.String("control", "http://127.0.0.1:8282", "control endpoint URL (a comma-separated list of replicas)")
	tokenFile := fs.String("token-file", "", "sync token file")
	dir := fs.String("dir", "", "cache folder (emptied first)")
	entities := fs.Int64("entities", 0, "entities of the world, for bytes per entity (0: from the log)")
	timeout := fs.Duration("timeout", 30*time.Minute, "give up after")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the bootstrap to this file")
	_ = fs.Parse(args)
	if *dir == "" {
		return errors.New("bootstrap needs --dir")
	}
	if err := os.RemoveAll(*dir); err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	start := time.Now()
	store, err := replica.OpenStore(replica.StoreConfig{Dir: *dir}, logger)
	if err != nil {
		return err
	}
	defer func() { _ = store.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	syncer := replica.NewSyncer(replica.SyncConfig{ControlURL: *control, TokenFile: *tokenFile}, store, logger)
	done := make(chan error, 1)
	go func() { done <- syncer.Run(ctx) }()
	for !store.State().Present {
		select {
		case <-ctx.Done():
			return fmt.Errorf("no snapshot within %v", *timeout)
		case err := <-done:
			return fmt.Errorf("sync ended: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	took := time.Since(start)
	cancel()
	<-done
	mem, _ := loadgen.ProcMem(os.Getpid())
	st, err := os.Stat(filepath.Join(*dir, "tenancy.db"))
	if err != nil {
		return err
	}
	rev := store.State().Revision
	_ = store.Close()
	n := *entities
	if n == 0 {
		if n, err = countEntities(filepath.Join(*dir, "tenancy.db")); err != nil {
			return err
		}
	}
	per := 0.0
	if n > 0 {
		per = float64(st.Size()) / float64(n)
	}
	fmt.Printf("bootstrap: ready in %.2f s at revision %d, %d entities, peak RSS %.1f MiB (now: anon %.1f, file %.1f), cache file %.1f MiB (%.0f bytes/entity)\n",
		took.Seconds(), rev, n, float64(mem.Peak)/(1<<20), float64(mem.RSSAnon)/(1<<20), float64(mem.RSSFile)/(1<<20), float64(st.Size())/(1<<20), per)
	return nil
}

// countEntities counts the entities of a tenancy file.
func countEntities(path string) (int64, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return 0, err
	}
	defer db.Close()
	var n int64
	err = db.View(func(tx *bolt.Tx) error {
		for _, c := range tenancy.Collections {
			if b := tx.Bucket([]byte("e/" + c)); b != nil {
				n += int64(b.Stats().KeyN)
			}
		}
		return nil
	})
	return n, err
}
