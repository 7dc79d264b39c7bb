package filter

import (
	"encoding/binary"
	"sync/atomic"

	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// cacheShards splits the flow cache so that concurrent queue readers rarely
// meet on one lock: golang-lru takes an exclusive lock even for Get.
const cacheShards = 32

// flowKey is what a verdict depends on: source and destination address
// (as their 16-byte forms, in four words), destination port and protocol.
// Five whole words leave no padding, so the map hashes and compares the
// key as plain memory in one pass. The source port is left out on purpose:
// no policy can match on it, so every new connection between the same two
// endpoints and destination port hits the cache.
type flowKey struct {
	srcHi, srcLo, dstHi, dstLo uint64
	portProto                  uint64
}

func keyOf(f Flow) flowKey {
	src, dst := f.Src.As16(), f.Dst.As16()
	return flowKey{
		srcHi:     binary.BigEndian.Uint64(src[:8]),
		srcLo:     binary.BigEndian.Uint64(src[8:]),
		dstHi:     binary.BigEndian.Uint64(dst[:8]),
		dstLo:     binary.BigEndian.Uint64(dst[8:]),
		portProto: uint64(f.DstPort)<<8 | uint64(f.Proto),
	}
}

// shard mixes the key's words (a multiply-xorshift hash; no allocation,
// unlike hashing through an interface).
func (k *flowKey) shard() int {
	h := k.srcLo ^ k.srcHi*0x9e3779b97f4a7c15
	h ^= k.dstLo*0xff51afd7ed558ccd ^ k.dstHi
	h ^= k.portProto
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 29
	return int(h % cacheShards)
}

// shard is one lock's worth of cache, with its own counters so that
// readers on different shards share no written cache line. It wraps
// golang-lru's simplelru with a plain mutex: lru.Cache's RWMutex costs
// more to take exclusively, and Get always takes it exclusively.
type shard struct {
	mu           sync.Mutex
	lru          *simplelru.LRU[flowKey, Verdict]
	hits, misses atomic.Uint64
	_            [32]byte
}

// Engine decides flows against the current Ruleset through a flow cache.
// It is safe for concurrent use by any number of queue readers.
type Engine struct {
	rs     atomic.Pointer[Ruleset]
	cached bool
	per    int // entries per shard
	shards [cacheShards]shard
}

// NewEngine returns an engine deciding with rs. cacheSize is the number of
// flows remembered in all (0 or less turns the cache off).
func NewEngine(rs *Ruleset, cacheSize int) *Engine {
	e := &Engine{}
	e.rs.Store(rs)
	if cacheSize <= 0 {
		return e
	}
	per := max(cacheSize/cacheShards, 1)
	for i := range e.shards {
		// NewLRU fails only for a size below 1, which per never is.
		e.shards[i].lru, _ = simplelru.NewLRU[flowKey, Verdict](per, nil)
	}
	e.cached, e.per = true, per
	return e
}

// Swap publishes a recompiled Ruleset. Cached verdicts of the previous one
// stop counting at once: an entry is valid only for the Ruleset that made
// it. Each shard's cache is then replaced by an empty one, a pointer swap
// under its lock (readers wait for no purge), because a Verdict points at
// its Ruleset: an entry left behind kept that whole compiled state alive
// until the LRU evicted it. Under churn (a recompile every few hundred ms)
// every quiet flow class pinned the Ruleset of its last decision, 11 MiB
// each at 10,000 pods (bench/scale).
func (e *Engine) Swap(rs *Ruleset) {
	e.rs.Store(rs)
	if !e.cached {
		return
	}
	for i := range e.shards {
		fresh, _ := simplelru.NewLRU[flowKey, Verdict](e.per, nil)
		sh := &e.shards[i]
		sh.mu.Lock()
		sh.lru = fresh
		sh.mu.Unlock()
	}
}

// Ruleset returns the Ruleset new decisions are made with.
func (e *Engine) Ruleset() *Ruleset { return e.rs.Load() }

// Decide returns the verdict for f, from the cache when it holds one made
// by the current Ruleset.
func (e *Engine) Decide(f Flow) Verdict {
	rs := e.rs.Load()
	if !e.cached {
		return rs.Decide(f)
	}
	k := keyOf(f)
	sh := &e.shards[k.shard()]
	sh.mu.Lock()
	v, ok := sh.lru.Get(k)
	sh.mu.Unlock()
	if ok && v.Ruleset == rs {
		sh.hits.Add(1)
		v.Cached = true
		return v
	}
	sh.misses.Add(1)
	v = rs.Decide(f)
	sh.mu.Lock()
	// A Swap since the Load above has emptied this shard already (or will,
	// if it has not reached it): caching the old Ruleset's verdict would
	// pin that Ruleset again.
	if e.rs.Load() == rs {
		sh.lru.Add(k, v)
	}
	sh.mu.Unlock()
	return v
}

// CacheStats returns the cache hits and misses so far.
func (e *Engine) CacheStats() (hits, misses uint64) {
	for i := range e.shards {
		hits += e.shards[i].hits.Load()
		misses += e.shards[i].misses.Load()
	}
	return hits, misses
}

// Purge empties the flow cache (used when recompiling is not the cause,
// e.g. by tests; Swap alone already invalidates).
func (e *Engine) Purge() {
	for i := range e.shards {
		if sh := &e.shards[i]; sh.lru != nil {
			sh.mu.Lock()
			sh.lru.Purge()
			sh.mu.Unlock()
		}
	}
}
