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

// flowKey is what a verdict depends on: source and destination address,
// destination port and protocol, packed into plain bytes so that the map
// hashes and compares it in one pass (a struct with padding is hashed
// field by field). The source port is left out on purpose: no policy can
// match on it, so every new connection between the same two endpoints and
// destination port hits the cache.
type flowKey [36]byte

func keyOf(f Flow) flowKey {
	var k flowKey
	src, dst := f.Src.As16(), f.Dst.As16()
	copy(k[0:16], src[:])
	copy(k[16:32], dst[:])
	binary.BigEndian.PutUint16(k[32:34], f.DstPort)
	k[34] = f.Proto
	return k
}

// shard mixes the key's words (a multiply-xorshift hash; no allocation,
// unlike hashing through an interface).
func (k *flowKey) shard() int {
	h := binary.LittleEndian.Uint64(k[8:16]) ^ binary.LittleEndian.Uint64(k[0:8])*0x9e3779b97f4a7c15
	h ^= binary.LittleEndian.Uint64(k[24:32])*0xff51afd7ed558ccd ^ binary.LittleEndian.Uint64(k[16:24])
	h ^= uint64(binary.LittleEndian.Uint32(k[32:36]))
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
	e.cached = true
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
	sh.lru.Add(k, v)
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
