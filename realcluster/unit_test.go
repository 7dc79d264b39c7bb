package realcluster

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/nfqpolicy/nfqpolicy/internal/netns"
)

func TestSplitImage(t *testing.T) {
	for _, tc := range []struct {
		ref, name, tag string
		ok             bool
	}{
		{"nfqpolicy:dev", "nfqpolicy", "dev", true},
		{"registry:5000/a/b:v1", "registry:5000/a/b", "v1", true},
		{"registry:5000/a/b", "", "", false},
		{"nfqpolicy", "", "", false},
		{"nfqpolicy:", "", "", false},
		{":dev", "", "", false},
	} {
		name, tag, ok := splitImage(tc.ref)
		if ok != tc.ok || (ok && (name != tc.name || tag != tc.tag)) {
			t.Errorf("splitImage(%q) = %q, %q, %v; want %q, %q, %v", tc.ref, name, tag, ok, tc.name, tc.tag, tc.ok)
		}
	}
}

// The overlay must name the image as deploy/'s kustomization outputs it,
// or kubectl apply -k would run the registry image instead of ours.
func TestKustomizedImageOfDeploy(t *testing.T) {
	got, err := kustomizedImage("../deploy")
	if err != nil {
		t.Fatal(err)
	}
	if got == "" || got == "nfqpolicy:dev" {
		t.Fatalf("kustomizedImage = %q", got)
	}
}

func TestClusterOfNS(t *testing.T) {
	for _, tc := range []struct {
		ns   string
		pid  int
		want string
	}{
		{"nfqpk-123-1-n1", 123, "nfqpk-123-1"},
		{"nfqpk-123-12-ul", 123, "nfqpk-123-12"},
		{"nfqpk-7-3-cp", 7, "nfqpk-7-3"},
	} {
		if got := clusterOfNS(tc.ns, tc.pid); got != tc.want {
			t.Errorf("clusterOfNS(%q) = %q, want %q", tc.ns, got, tc.want)
		}
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		`/a/b`:          "/a/b",
		`/a\040b`:       "/a b",
		`/a\134b`:       `/a\b`,
		`/trailing\04`:  `/trailing\04`,
		`/x\011y\012z`:  "/x\ty\nz",
		`/not\999octal`: `/not\999octal`,
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

// The generated configurations parse as what their readers expect.
func TestConfigsParse(t *testing.T) {
	var kubelet map[string]any
	if err := yaml.UnmarshalStrict([]byte(kubeletConfig(netip.MustParseAddr("10.77.0.11"), "/ca", "/c", "/k", "/root-n1", "/s.sock", "/logs")), &kubelet); err != nil {
		t.Fatalf("kubelet config: %v", err)
	}
	for k, want := range map[string]any{"failCgroupV1": false, "cgroupDriver": "cgroupfs", "failSwapOn": false, "cgroupRoot": "/root-n1", "oomScoreAdj": float64(0)} {
		if kubelet[k] != want {
			t.Errorf("kubelet %s = %v, want %v", k, kubelet[k], want)
		}
	}
	var proxy map[string]any
	if err := yaml.UnmarshalStrict([]byte(kubeProxyConfig("/kc", "node-1", "10.244.0.0/16")), &proxy); err != nil {
		t.Fatalf("kube-proxy config: %v", err)
	}
	if proxy["mode"] != "iptables" {
		t.Errorf("kube-proxy mode = %v", proxy["mode"])
	}
	var cni struct {
		Name    string `json:"name"`
		Plugins []struct {
			Type   string `json:"type"`
			IPMasq bool   `json:"ipMasq"`
			IPAM   struct {
				Ranges [][]struct {
					Subnet string `json:"subnet"`
				} `json:"ranges"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(cniConfig("net", netip.MustParsePrefix("10.244.1.0/24"), "/ipam")), &cni); err != nil {
		t.Fatalf("CNI config: %v", err)
	}
	if len(cni.Plugins) != 2 || cni.Plugins[0].Type != "ptp" || cni.Plugins[0].IPMasq || cni.Plugins[1].Type != "portmap" ||
		cni.Plugins[0].IPAM.Ranges[0][0].Subnet != "10.244.1.0/24" {
		t.Errorf("CNI config: %+v", cni)
	}
}

// The forwarder relays a root-namespace loopback connection to a server
// that listens only inside another namespace.
func TestForwarderReachesIntoNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: needs root to create a network namespace")
	}
	ctx := context.Background()
	name := fmt.Sprintf("%s%d-0-fwtest", NamePrefix, os.Getpid())
	ns, err := netns.Create(ctx, name, netns.Replace())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			t.Error(err)
		}
	})
	if err := ns.IPBatch(ctx, []string{"link set lo up"}); err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				fmt.Fprintf(c, "echo %s", line)
			}()
		}
	}()
	// The namespace's port is not open in the root namespace.
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Logf("note: %s also answers in the root namespace (another listener)", ln.Addr())
	}
	f, err := newForwarder("127.0.0.1:0", ns, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		c, err := net.DialTimeout("tcp", f.Addr(), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "hello %d\n", i)
		got, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if want := fmt.Sprintf("echo hello %d\n", i); err != nil || got != want {
			t.Fatalf("through the forwarder: %q, %v; want %q", got, err, want)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", f.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatal("forwarder still accepts after Close")
	}
}
