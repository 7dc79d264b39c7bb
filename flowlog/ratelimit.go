package flowlog

import (
	"net/netip"
	"sync"
)

const limiterShards = 16

// limiter is a token bucket per source address. The map is bounded: a new
// source arriving at a full shard evicts a random entry of that shard (Go
// map iteration order), which at worst hands that source a fresh burst.
// Shards keep the verdict goroutines from serialising on one mutex; each
// shard's map is sized up front so that inserting never grows it and the
// verdict path stays allocation-free.
type limiter struct {
	perSec   float64 // tokens per nanosecond * 1e9
	burst    float64
	perShard int
	shards   [limiterShards]limiterShard
}

type limiterShard struct {
	mu sync.Mutex
	m  map[netip.Addr]bucket
	_  [40]byte // keep shards on separate cache lines
}

type bucket struct {
	tokens float64
	last   int64 // unix nanoseconds of the last refill
}

func newLimiter(perSec float64, burst int, maxSources int) *limiter {
	per := max(maxSources/limiterShards, 1)
	l := &limiter{perSec: perSec, burst: float64(max(burst, 1)), perShard: per}
	for i := range l.shards {
		l.shards[i].m = make(map[netip.Addr]bucket, per)
	}
	return l
}

func shardOf(a netip.Addr) int {
	b := a.As16()
	// The low bytes vary most between pods of a cluster.
	return int(b[15]^b[14]^b[11]) % limiterShards
}

// allow takes a token for src at time now (unix nanoseconds).
func (l *limiter) allow(src netip.Addr, now int64) bool {
	s := &l.shards[shardOf(src)]
	s.mu.Lock()
	b, ok := s.m[src]
	if !ok {
		if len(s.m) >= l.perShard {
			for k := range s.m {
				delete(s.m, k)
				break
			}
		}
		b = bucket{tokens: l.burst, last: now}
	} else if now > b.last {
		b.tokens = min(l.burst, b.tokens+float64(now-b.last)*l.perSec/1e9)
		b.last = now
	}
	ok = b.tokens >= 1
	if ok {
		b.tokens--
	}
	s.m[src] = b
	s.mu.Unlock()
	return ok
}

// sources is the number of tracked addresses, for tests.
func (l *limiter) sources() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}
