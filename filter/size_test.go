package filter

import (
	"testing"
	"unsafe"
)

// A compiled rule is one cache line: NetworkPolicy rules are walked per
// decision.
func TestRuleSize(t *testing.T) {
	if n := unsafe.Sizeof(rule{}); n > 64 {
		t.Errorf("rule is %d bytes, want at most 64", n)
	}
	if n := unsafe.Sizeof(podHot{}); n > 64 {
		t.Errorf("podHot is %d bytes, want at most 64", n)
	}
}
