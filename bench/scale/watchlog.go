package scale

import (
	"context"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

// watchLog records when the API server's watch delivers each change of
// the probe namespace's policies and pods to the harness: the part of a
// measured delay that passes before any agent could know of the change
// (an agent's own watch is served the same way, by the same server).
type watchLog struct {
	mu   sync.Mutex
	seen map[string][]time.Time // "np/NAME" (any event), "pod/NAME" (an event with a pod IP)
}

func startWatchLog(ctx context.Context, c kubernetes.Interface) *watchLog {
	l := &watchLog{seen: map[string][]time.Time{}}
	go l.follow(ctx, func(ctx context.Context) (watch.Interface, error) {
		return c.NetworkingV1().NetworkPolicies(probeNS).Watch(ctx, metav1.ListOptions{})
	}, func(ev watch.Event) string {
		if m, ok := ev.Object.(metav1.Object); ok {
			return "np/" + m.GetName()
		}
		return ""
	})
	go l.follow(ctx, func(ctx context.Context) (watch.Interface, error) {
		return c.CoreV1().Pods(probeNS).Watch(ctx, metav1.ListOptions{})
	}, func(ev watch.Event) string {
		if p, ok := ev.Object.(*corev1.Pod); ok && ev.Type != watch.Deleted && p.Status.PodIP != "" {
			return "pod/" + p.Name
		}
		return ""
	})
	return l
}

// follow watches until ctx ends, watching again whenever the server
// closes the watch (events in between are missed, and their changes get
// no delivery figure).
func (l *watchLog) follow(ctx context.Context, open func(context.Context) (watch.Interface, error), key func(watch.Event) string) {
	for ctx.Err() == nil {
		w, err := open(ctx)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		for ev := range w.ResultChan() {
			if k := key(ev); k != "" {
				now := time.Now()
				l.mu.Lock()
				l.seen[k] = append(l.seen[k], now)
				l.mu.Unlock()
			}
		}
		w.Stop()
	}
}

// after returns the first delivery for key at or after t.
func (l *watchLog) after(key string, t time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, at := range l.seen[key] {
		if !at.Before(t) {
			return at, true
		}
	}
	return time.Time{}, false
}
