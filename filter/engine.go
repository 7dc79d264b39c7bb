package filter

import (
	"encoding/binary"
	"sync/atomic"

	lru "github.com/hashicorp/golang-lru/v2"
)

// cacheShards splits the flow cache so that concurrent queue readers rarely
// meet on one lock: golang-lru takes an exclusive lock even for Get.
const cacheShards = 32

// flowKey is what a verdict depends on. The source port is left out on
// purpose: no policy can match on it, so every new connection between the
// same two endpoints and destination port hits the cache.
type flowKey struct {
	src, dst [16]byte
	dport    uint16
	proto    uint8
}

func keyOf(f Flow) flowKey {
	return flowKey{src: f.Src.As16(), dst: f.Dst.As16(), dport: f.DstPort, proto: f.Proto}
}

// shard mixes the key's words (a multiply-xorshift hash; no allocation,
// unlike hashing through an interface).
func (k *flowKey) shard() int {
	h := binary.LittleEndian.Uint64(k.src[8:]) ^ binary.LittleEndian.Uint64(k.src[:8])*0x9e3779b97f4a7c15
	h ^= binary.LittleEndian.Uint64(k.dst[8:])*0xff51afd7ed558ccd ^ binary.LittleEndian.Uint64(k.dst[:8])
	h ^= uint64(k.dport)<<8 | uint64(k.proto)
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 29
	return int(h % cacheShards)
}

// Engine decides flows against the current Ruleset through a flow cache.
// It is safe for concurrent use by any number of queue readers.
type Engine struct {
	rs     atomic.Pointer[Ruleset]
	shards [cacheShards]*lru.Cache[flowKey, Verdict]

	hits, misses atomic.Uint64
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
		// lru.New fails only for a size below 1, which per never is.
		c, _ := lru.New[flowKey, Verdict](per)
		e.shards[i] = c
	}
	return e
}

// Swap publishes a recompiled Ruleset. Cached verdicts of the previous one
// stop counting at once: an entry is valid only for the Ruleset that made
// it, so no purge has to stop the readers.
func (e *Engine) Swap(rs *Ruleset) { e.rs.Store(rs) }

// Ruleset returns the Ruleset new decisions are made with.
func (e *Engine) Ruleset() *Ruleset { return e.rs.Load() }

// Decide returns the verdict for f, from the cache when it holds one made
// by the current Ruleset.
func (e *Engine) Decide(f Flow) Verdict {
	rs := e.rs.Load()
	if e.shards[0] == nil {
		return rs.Decide(f)
	}
	k := keyOf(f)
	c := e.shards[k.shard()]
	if v, ok := c.Get(k); ok && v.Ruleset == rs {
		e.hits.Add(1)
		v.Cached = true
		return v
	}
	e.misses.Add(1)
	v := rs.Decide(f)
	c.Add(k, v)
	return v
}

// CacheStats returns the cache hits and misses so far.
func (e *Engine) CacheStats() (hits, misses uint64) {
	return e.hits.Load(), e.misses.Load()
}

// Purge empties the flow cache (used when recompiling is not the cause,
// e.g. by tests; Swap alone already invalidates).
func (e *Engine) Purge() {
	for _, c := range e.shards {
		if c != nil {
			c.Purge()
		}
	}
}
