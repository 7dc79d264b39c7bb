package iptables

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
)

// fakeRunner answers each binary with a canned output (or error) and
// records every restore input, keyed by binary.
type fakeRunner struct {
	mu       sync.Mutex
	out      map[string]string
	fail     map[string]bool
	restores map[string][]string
	calls    map[string]int
}

func newFake() *fakeRunner {
	return &fakeRunner{out: map[string]string{}, fail: map[string]bool{}, restores: map[string][]string{}, calls: map[string]int{}}
}

func (f *fakeRunner) Run(_ context.Context, stdin, name string, args ...string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[name]++
	if f.fail[name] {
		return "", errors.New(name + ": not found")
	}
	if strings.HasSuffix(name, "-restore") || name == "ipset" {
		f.restores[name] = append(f.restores[name], stdin)
		if name == "ipset" && len(args) > 0 && args[0] == "list" {
			return "", nil
		}
	}
	return f.out[name], nil
}

const (
	kubeSave = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n" +
		"*mangle\n:KUBE-IPTABLES-HINT - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n"
	oursSave = "*filter\n:FORWARD ACCEPT [0:0]\n:NFQPOLICY-FORWARD - [0:0]\n-A FORWARD -m comment --comment nfqpolicy -j NFQPOLICY-FORWARD\nCOMMIT\n"
	bareSave = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
)

func TestDetect(t *testing.T) {
	tests := []struct {
		name         string
		legacy, nft  string
		failLegacy   bool
		failNFT      bool
		want         Backend
		wantReason   string
		wantErr      bool
		kubeL, kubeN int
	}{
		{name: "kube in legacy", legacy: kubeSave, nft: bareSave, want: Legacy, wantReason: "KUBE-* chains are in legacy", kubeL: 8},
		{name: "kube in nft", legacy: bareSave, nft: kubeSave, want: NFT, wantReason: "KUBE-* chains are in nft", kubeN: 8},
		// kube-proxy wins over our own leftovers elsewhere.
		{name: "kube in legacy, ours in nft", legacy: kubeSave, nft: oursSave, want: Legacy, kubeL: 8},
		{name: "more kube in nft", legacy: ":KUBE-X - [0:0]\n", nft: kubeSave, want: NFT, kubeL: 2, kubeN: 8},
		{name: "only ours in legacy", legacy: oursSave, nft: bareSave, want: Legacy, wantReason: "ours are in legacy"},
		{name: "only ours in nft", legacy: "", nft: oursSave, want: NFT, wantReason: "ours are in nft"},
		{name: "nothing anywhere", legacy: "", nft: bareSave, want: NFT, wantReason: "nft by default"},
		// A rule (not a chain) naming KUBE- is no declaration.
		{name: "jump only", legacy: "-A INPUT -j KUBE-FIREWALL\n", nft: "", want: NFT},
		{name: "nft broken", legacy: "", failNFT: true, want: Legacy, wantReason: "nft unusable"},
		{name: "legacy broken, kube nowhere", failLegacy: true, nft: bareSave, want: NFT, wantReason: "legacy unusable"},
		{name: "legacy broken", failLegacy: true, nft: kubeSave, want: NFT, kubeN: 8},
		{name: "both broken", failLegacy: true, failNFT: true, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newFake()
			for _, bin := range []string{"iptables-legacy-save", "ip6tables-legacy-save"} {
				r.out[bin], r.fail[bin] = tt.legacy, tt.failLegacy
			}
			for _, bin := range []string{"iptables-nft-save", "ip6tables-nft-save"} {
				r.out[bin], r.fail[bin] = tt.nft, tt.failNFT
			}
			d, err := Detect(context.Background(), r)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("Detect = %+v, want an error", d)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Backend != tt.want || !strings.Contains(d.Reason, tt.wantReason) {
				t.Errorf("Detect = %s (%s), want %s (%q)", d.Backend, d.Reason, tt.want, tt.wantReason)
			}
			// Both families are read: counts double.
			if d.Kube[Legacy] != tt.kubeL || d.Kube[NFT] != tt.kubeN {
				t.Errorf("KUBE chains legacy %d nft %d, want %d %d", d.Kube[Legacy], d.Kube[NFT], tt.kubeL, tt.kubeN)
			}
		})
	}
}

// TestAutoInstallFollowsKubeProxy: with Auto, Install goes where the KUBE-*
// chains are; when they appear in the other backend later (the agent
// started before kube-proxy), the next Install moves our rules there and
// removes them from the backend it left.
func TestAutoInstallFollowsKubeProxy(t *testing.T) {
	ctx := context.Background()
	r := newFake()
	r.out["iptables-legacy-save"] = bareSave
	r.out["iptables-nft-save"] = oursSave // a previous run of ours
	tb := New(r, Auto, IPv4)
	c := Config{Marks: DefaultMarks, QueueBase: 100, Queues: 1, Deny: Drop}
	if b, _ := tb.Backend(); b != "" {
		t.Errorf("Backend before Install = %q, want empty", b)
	}
	if err := tb.Install(ctx, c); err != nil {
		t.Fatal(err)
	}
	if b, why := tb.Backend(); b != NFT {
		t.Fatalf("first Install used %s (%s), want nft", b, why)
	}
	if len(r.restores["iptables-nft-restore"]) != 1 || len(r.restores["iptables-legacy-restore"]) != 0 {
		t.Fatalf("first Install restores: nft %d, legacy %d; want 1, 0", len(r.restores["iptables-nft-restore"]), len(r.restores["iptables-legacy-restore"]))
	}

	r.mu.Lock()
	r.out["iptables-legacy-save"] = kubeSave // kube-proxy starts, in legacy
	r.restores = map[string][]string{}
	r.mu.Unlock()
	if err := tb.Install(ctx, c); err != nil {
		t.Fatal(err)
	}
	b, why := tb.Backend()
	if b != Legacy || !strings.Contains(why, "legacy") {
		t.Fatalf("second Install used %s (%s), want legacy", b, why)
	}
	nft := r.restores["iptables-nft-restore"]
	if len(nft) != 1 || !strings.Contains(nft[0], "-X NFQPOLICY-FORWARD") || !strings.Contains(nft[0], "-D FORWARD") {
		t.Errorf("nft restores after the move = %q, want one cleanup of our chain and jump", nft)
	}
	legacy := r.restores["iptables-legacy-restore"]
	if len(legacy) != 1 || !strings.Contains(legacy[0], ":NFQPOLICY-FORWARD") {
		t.Errorf("legacy restores after the move = %q, want our install", legacy)
	}
	for _, in := range r.restores["ipset"] {
		if strings.Contains(in, "destroy") {
			t.Errorf("the move destroyed a set (shared by both backends): %q", in)
		}
	}

	// Decided by the KUBE-* chains: later installs detect no more (no save
	// of the other backend) and stay, whatever appears elsewhere.
	r.mu.Lock()
	r.out["iptables-nft-save"] = kubeSave + kubeSave
	r.calls = map[string]int{}
	r.mu.Unlock()
	if err := tb.Install(ctx, c); err != nil {
		t.Fatal(err)
	}
	if b, _ := tb.Backend(); b != Legacy || r.calls["iptables-nft-save"] != 0 {
		t.Errorf("after a decided detection: backend %s, %d nft saves; want legacy and none", b, r.calls["iptables-nft-save"])
	}

	// An explicit backend never detects.
	r2 := newFake()
	r2.fail["iptables-nft-save"] = true
	tl := New(r2, Legacy, IPv4)
	if err := tl.Install(ctx, c); err != nil {
		t.Fatal(err)
	}
	if b, why := tl.Backend(); b != Legacy || why != "set by flag" {
		t.Errorf("explicit legacy: Backend = %s (%s)", b, why)
	}
}

// TestAutoCleanupBothBackends: with Auto, Cleanup and Leftovers look at
// every working backend, since ours may be in either.
func TestAutoCleanupBothBackends(t *testing.T) {
	ctx := context.Background()
	r := newFake()
	r.out["iptables-legacy-save"] = oursSave
	r.out["iptables-nft-save"] = oursSave
	tb := New(r, Auto, IPv4)
	left, err := tb.Leftovers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(left, "\n")
	for _, want := range []string{"legacy ipv4 chain NFQPOLICY-FORWARD", "nft ipv4 chain NFQPOLICY-FORWARD"} {
		if !strings.Contains(got, want) {
			t.Errorf("Leftovers lack %q:\n%s", want, got)
		}
	}
	if err := tb.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if len(r.restores["iptables-legacy-restore"]) != 1 || len(r.restores["iptables-nft-restore"]) != 1 {
		t.Errorf("Cleanup restores: legacy %d, nft %d; want 1 each", len(r.restores["iptables-legacy-restore"]), len(r.restores["iptables-nft-restore"]))
	}
	// A broken backend is skipped, not an error, when the other works.
	r.fail["iptables-nft-save"] = true
	if err := tb.Cleanup(ctx); err != nil {
		t.Errorf("Cleanup with nft broken: %v", err)
	}
}
