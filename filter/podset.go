package filter

import (
	"encoding/binary"
	"math/bits"
)

// podSet is a set of pod indexes. Pods are numbered in (namespace, name)
// order, so the pods one selector picks usually sit in a narrow window of
// the index space; the set stores only that window's bits. Membership is a
// bounds check and a bit test.
type podSet struct {
	base  int32 // index of the first bit of words[0]
	words []uint64
}

func newPodSet(members []int32) *podSet {
	s := &podSet{}
	if len(members) == 0 {
		return s
	}
	lo, hi := members[0], members[0]
	for _, m := range members {
		lo = min(lo, m)
		hi = max(hi, m)
	}
	s.base = lo &^ 63
	s.words = make([]uint64, (hi-s.base)/64+1)
	for _, m := range members {
		off := m - s.base
		s.words[off>>6] |= 1 << (uint(off) & 63)
	}
	return s
}

func (s *podSet) has(pod int32) bool {
	off := pod - s.base
	if off < 0 || int(off>>6) >= len(s.words) {
		return false
	}
	return s.words[off>>6]&(1<<(uint(off)&63)) != 0
}

// appendMembers appends the set's members to out, in increasing order.
func (s *podSet) appendMembers(out []int32) []int32 {
	for w, word := range s.words {
		for word != 0 {
			bit := bits.TrailingZeros64(word)
			out = append(out, s.base+int32(w*64+bit))
			word &= word - 1
		}
	}
	return out
}

// key is the set's members as a string, for finding equal sets: its base
// and words, 8 bytes each.
func (s *podSet) key() string {
	b := make([]byte, 0, 8+8*len(s.words))
	b = binary.LittleEndian.AppendUint64(b, uint64(s.base))
	for _, w := range s.words {
		b = binary.LittleEndian.AppendUint64(b, w)
	}
	return string(b)
}
