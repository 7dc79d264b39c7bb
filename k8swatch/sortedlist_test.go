package k8swatch

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestSortedList: over random changes to a store (objects added, deleted,
// replaced by new versions), sortedList gives the order a full sort gives.
func TestSortedList(t *testing.T) {
	rnd := rand.New(rand.NewPCG(7, 8))
	store := map[string]*corev1.Pod{}
	newPod := func() *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprint("ns-", rnd.IntN(12)), Name: fmt.Sprint("p-", rnd.IntN(300))}}
	}
	var l sortedList[*corev1.Pod]
	for step := range 300 {
		for range rnd.IntN(40) {
			switch rnd.IntN(3) {
			case 0:
				p := newPod()
				store[p.Namespace+"/"+p.Name] = p
			case 1:
				for k := range store {
					delete(store, k)
					break
				}
			default:
				for k, p := range store {
					store[k] = p.DeepCopy()
					break
				}
			}
		}
		var items []any
		for _, p := range store {
			items = append(items, p)
		}
		items = append(items, &corev1.Namespace{}) // another type: skipped
		got := l.from(items)
		want := make([]*corev1.Pod, 0, len(store))
		for _, p := range store {
			want = append(want, p)
		}
		slices.SortFunc(want, func(a, b *corev1.Pod) int {
			return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
		})
		if !slices.Equal(got, want) {
			t.Fatalf("step %d: %d objects out of order or missing (want %d)", step, len(got), len(want))
		}
	}
}
