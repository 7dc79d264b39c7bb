package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/nfqpolicy/nfqpolicy/cluster"
)

const (
	nodeYAML = `
- apiVersion: v1
  kind: Node
  metadata: {name: %s}
  status: {addresses: [{type: InternalIP, address: %s}]}`
	podYAML = `
- apiVersion: v1
  kind: Pod
  metadata: {name: %s, namespace: x, labels: {pod: %s}}
  spec: {nodeName: %q, hostNetwork: %v, containers: [{name: c}]}
  status: {phase: Running, hostIP: %q, podIPs: [%s]}`
)

func node(name, addr string) string { return fmt.Sprintf(nodeYAML, name, addr) }

func pod(name, node string, hostNet bool, hostIP string, ips ...string) string {
	var list []string
	for _, ip := range ips {
		list = append(list, "{ip: "+ip+"}")
	}
	return fmt.Sprintf(podYAML, name, name, node, hostNet, hostIP, strings.Join(list, ", "))
}

func decodeCluster(t *testing.T, objs ...string) *cluster.Cluster {
	t.Helper()
	doc := "apiVersion: v1\nkind: List\nitems:" + strings.Join(objs, "")
	c, err := cluster.Decode("test.yaml", []byte(doc))
	if err != nil {
		t.Fatalf("decode test cluster: %v\n%s", err, doc)
	}
	return c
}

func TestPlanClusterErrors(t *testing.T) {
	tests := []struct {
		name string
		objs []string
		want string // substring of the error; "" for success
	}{
		{"two nodes with pods", []string{node("n1", "192.168.56.1"), node("n2", "192.168.56.2"),
			pod("a", "n1", false, "", "10.244.1.1", "fd00::1"), pod("b", "n2", false, "", "10.244.2.1")}, ""},
		{"pod address used twice", []string{node("n1", "192.168.56.1"),
			pod("a", "n1", false, "", "10.244.1.1"), pod("b", "n1", false, "", "10.244.1.1")}, "belongs to both"},
		{"pod on a node address", []string{node("n1", "192.168.56.1"),
			pod("a", "n1", false, "", "192.168.56.1")}, "belongs to both"},
		{"pod on no node", []string{node("n1", "192.168.56.1"),
			pod("a", "", false, "", "10.244.1.1")}, ""},
		{"hostNetwork pod on no node", []string{node("n1", "192.168.56.1"),
			pod("h", "", true, "", "192.168.56.9")}, "cannot tell which node"},
		{"pod placed by hostIP", []string{node("n1", "192.168.56.1"),
			pod("a", "", false, "192.168.56.1", "10.244.1.1")}, ""},
		{"node known only from a pod's hostIP", []string{
			pod("a", "n9", false, "192.168.56.9", "10.244.1.1")}, ""},
		{"node without any address", []string{pod("a", "n9", false, "", "10.244.1.1")}, ""},
		{"hostNetwork pod on its node", []string{node("n1", "192.168.56.1"),
			pod("h", "n1", true, "192.168.56.1", "192.168.56.1")}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := planCluster(decodeCluster(t, tc.objs...))
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("planCluster: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("planCluster error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestResolvePlaces(t *testing.T) {
	c := decodeCluster(t, node("n1", "192.168.56.1"), node("n2", "192.168.56.2"),
		pod("a", "n1", false, "192.168.56.1", "10.244.1.1", "fd00::1"),
		pod("b", "n2", false, "192.168.56.2", "10.244.2.1"),
		pod("h", "n2", true, "192.168.56.2", "192.168.56.2"))
	pl, err := planCluster(c)
	if err != nil {
		t.Fatal(err)
	}
	r := newResolver(c, pl)
	tests := []struct {
		ep      string
		family  int
		kind    placeKind
		index   int
		addr    string
		wantErr bool
	}{
		{"x/a", 4, placePod, 0, "10.244.1.1", false},
		{"x/a", 6, placePod, 0, "fd00::1", false},
		{"x/b", 4, placePod, 1, "10.244.2.1", false},
		{"x/b", 6, 0, 0, "", true}, // no IPv6 address
		{"x/h", 4, placeNode, 1, "192.168.56.2", false},
		{"node/n1", 4, placeNode, 0, "192.168.56.1", false},
		{"10.244.2.1", 4, placePod, 1, "10.244.2.1", false},
		{"192.168.56.1", 4, placeNode, 0, "192.168.56.1", false},
		{"203.0.113.7", 4, placeExt, 0, "203.0.113.7", false},
		{"203.0.113.7", 6, 0, 0, "", true}, // family mismatch
		{"x/nope", 4, 0, 0, "", true},
		{"node/n7", 4, 0, 0, "", true},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s/v%d", tc.ep, tc.family), func(t *testing.T) {
			e, err := r.resolve(tc.ep, tc.family)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("resolve = %+v, want an error", e)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := endpoint{place: place{kind: tc.kind, index: tc.index}, addr: netip.MustParseAddr(tc.addr)}
			if e != want {
				t.Fatalf("resolve = %+v, want %+v", e, want)
			}
		})
	}
}

func TestFingerprintGroups(t *testing.T) {
	base := []string{node("n1", "192.168.56.1"), pod("a", "n1", false, "", "10.244.1.1")}
	relabelled := []string{node("n1", "192.168.56.1"), strings.Replace(pod("a", "n1", false, "", "10.244.1.1"), "{pod: a}", "{pod: other}", 1)}
	moved := []string{node("n1", "192.168.56.1"), pod("a", "n1", false, "", "10.244.1.2")}
	fp := func(objs []string) string {
		pl, err := planCluster(decodeCluster(t, objs...))
		if err != nil {
			t.Fatal(err)
		}
		return pl.fingerprint()
	}
	if fp(base) != fp(relabelled) {
		t.Errorf("relabelling a pod changed the topology fingerprint")
	}
	if fp(base) == fp(moved) {
		t.Errorf("a different pod address kept the topology fingerprint")
	}
}

func TestUnroutable(t *testing.T) {
	tests := []struct {
		addr string
		skip bool
	}{
		{"127.167.98.1", true},
		{"::1", true},
		{"0.0.0.0", true},
		{"224.0.0.5", true},
		{"ff02::1", true},
		{"255.255.255.255", true},
		{"169.254.1.1", true},
		{"fe80::1", true},
		{"10.244.1.1", false},
		{"203.0.113.10", false},
		{"129.211.249.1", false},
		{"fd00::1", false},
		{"2001:db8::1", false},
	}
	for _, tc := range tests {
		if got := unroutable(netip.MustParseAddr(tc.addr)) != ""; got != tc.skip {
			t.Errorf("unroutable(%s) = %v, want %v", tc.addr, got, tc.skip)
		}
	}
}
