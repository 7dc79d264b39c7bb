package k8swatch

import (
	"context"
	"crypto/sha256"
	"fmt"
	"github.com/nfqpolicy/nfqpolicy/cluster"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// SnapshotSource is the Source of an agent fed from files (tests, demos,
// clusters without API access for the agent). It polls the files instead
// of watching them: editors and config-map mounts replace files in ways
// that inotify watches lose, and a stat every few seconds costs nothing.
type SnapshotSource struct {
	paths   []string
	poll    time.Duration
	log     zerolog.Logger
	changed chan struct{}

	mu      sync.Mutex
	current *cluster.Cluster
}

var _ Source = (*SnapshotSource)(nil)

// NewSnapshotSource returns a source reading paths (files or directories,
// see cluster.ExpandPaths) every poll interval (one second if poll <= 0).
func NewSnapshotSource(paths []string, poll time.Duration, log zerolog.Logger) *SnapshotSource {
	if poll <= 0 {
		poll = time.Second
	}
	return &SnapshotSource{
		paths:   append([]string(nil), paths...),
		poll:    poll,
		log:     log.With().Str("component", "snapshot").Logger(),
		changed: make(chan struct{}, 1),
	}
}

// Current returns the last state read without errors that prevent it.
func (s *SnapshotSource) Current() (*cluster.Cluster, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current, s.current != nil
}

// Changed receives a value after Current has changed.
func (s *SnapshotSource) Changed() <-chan struct{} { return s.changed }

// fileState is what decides whether a file must be read again: size and
// mtime are cheap; the hash tells a touched file from a changed one.
type fileState struct {
	size  int64
	mtime time.Time
	sum   [sha256.Size]byte
}

// Run loads the files, publishes the result, and then reloads whenever
// their content changes, until ctx is done. It returns an error when the
// first load fails (a missing file, a document that does not parse);
// objects that fail validation are logged and skipped, not fatal. After
// the start, a load that fails keeps the last good state.
//
// A change is acted on once two consecutive polls see the same content, so
// that a file caught half-written (which may well parse) is not published.
func (s *SnapshotSource) Run(ctx context.Context) error {
	loaded, err := s.load()
	if err != nil {
		return err
	}
	var pending map[string]fileState // content seen at the last poll, not yet loaded
	t := time.NewTicker(s.poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		seen, err := s.check(loaded)
		if err != nil {
			s.log.Error().Err(err).Msg("snapshot unreadable; keeping the last good state")
			pending = nil
			continue
		}
		if sameContent(seen, loaded) {
			pending = nil
			loaded = seen // keep the new mtimes so that files are not hashed again
			continue
		}
		if pending == nil || !sameContent(seen, pending) {
			pending = seen
			continue
		}
		pending = nil
		st, err := s.load()
		if err != nil {
			s.log.Error().Err(err).Msg("snapshot reload failed; keeping the last good state")
			loaded = seen // do not retry the same bad content every poll
			continue
		}
		loaded = st
	}
}

func sameContent(a, b map[string]fileState) bool {
	if len(a) != len(b) {
		return false
	}
	for f, x := range a {
		y, ok := b[f]
		if !ok || x.sum != y.sum {
			return false
		}
	}
	return true
}

// check stats the files and hashes those whose size or mtime differ from
// known, returning the state of every file now.
func (s *SnapshotSource) check(known map[string]fileState) (map[string]fileState, error) {
	files, err := cluster.ExpandPaths(s.paths)
	if err != nil {
		return nil, err
	}
	next := make(map[string]fileState, len(files))
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			return nil, fmt.Errorf("snapshot: %w", err)
		}
		if old, ok := known[f]; ok && old.size == st.Size() && old.mtime.Equal(st.ModTime()) {
			next[f] = old
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("snapshot: %w", err)
		}
		next[f] = fileState{size: st.Size(), mtime: st.ModTime(), sum: sha256.Sum256(data)}
	}
	return next, nil
}

// load reads every file, decodes and publishes, returning the state of the
// files it read. A document that does not parse fails the load: publishing
// the rest would silently drop whatever policies that document held.
func (s *SnapshotSource) load() (map[string]fileState, error) {
	files, err := cluster.ExpandPaths(s.paths)
	if err != nil {
		return nil, err
	}
	states := make(map[string]fileState, len(files))
	var docs []cluster.Document
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			return nil, fmt.Errorf("snapshot: %w", err)
		}
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("snapshot: %w", err)
		}
		states[f] = fileState{size: int64(len(data)), mtime: st.ModTime(), sum: sha256.Sum256(data)}
		d, err := cluster.ParseDocuments(f, data)
		if err != nil {
			return nil, err
		}
		docs = append(docs, d...)
	}
	c, err := cluster.DecodeDocuments(docs...)
	invalid := cluster.FieldErrors(err)
	for _, fe := range invalid {
		s.log.Warn().Str("file", fe.File).Int("doc", fe.Doc).Str("object", fe.Object).Str("field", fe.Field).
			Msg("invalid object skipped: " + fe.Msg)
	}
	for _, fe := range c.Skipped {
		s.log.Warn().Str("file", fe.File).Int("doc", fe.Doc).Str("object", fe.Object).Msg(fe.Msg)
	}
	s.mu.Lock()
	s.current = c
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
	s.log.Info().Int("files", len(files)).Int("namespaces", len(c.Namespaces)).Int("nodes", len(c.Nodes)).
		Int("pods", len(c.Pods)).Int("policies", len(c.Policies)).Int("clusterPolicies", len(c.ClusterPolicies)).Int("skipped", len(c.Skipped)).Int("invalid", len(invalid)).Msg("snapshot loaded")
	return states, nil
}
