package cluster

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestParseRef(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{"networkpolicy/shop/deny-all", "NetworkPolicy/shop/deny-all", ""},
		{"NetPol/shop/x", "NetworkPolicy/shop/x", ""},
		{"cnp/baseline", "ClusterNetworkPolicy/baseline", ""},
		{"ns/shop", "Namespace/shop", ""},
		{"pod/shop", "", "want KIND/NAMESPACE/NAME"},
		{"node/a/b", "", "want KIND/NAME"},
		{"service/x/y", "", "unknown kind"},
		{"netpol/shop/", "", "want KIND/NAMESPACE/NAME"},
	} {
		r, err := ParseRef(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseRef(%q) err = %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || r.String() != tc.want {
			t.Errorf("ParseRef(%q) = %v, %v; want %s", tc.in, r, err, tc.want)
		}
	}
}

func TestOverlay(t *testing.T) {
	pol := func(ns, name, label string) *networkingv1.NetworkPolicy {
		return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"v": label}}}
	}
	base := &Cluster{
		Namespaces: []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "a"}}},
		Policies:   []*networkingv1.NetworkPolicy{pol("a", "p1", "old"), pol("a", "p2", "old"), pol("b", "p3", "old")},
	}
	add := &Cluster{Policies: []*networkingv1.NetworkPolicy{pol("a", "p2", "new"), pol("a", "p0", "new")}}
	got, err := Overlay(base, add, []Ref{{Kind: "NetworkPolicy", Namespace: "b", Name: "p3"}})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range got.Policies {
		names = append(names, p.Namespace+"/"+p.Name+"="+p.Labels["v"])
	}
	if strings.Join(names, " ") != "a/p0=new a/p1=old a/p2=new" {
		t.Errorf("policies %v", names)
	}
	if len(base.Policies) != 3 || base.Policies[1].Labels["v"] != "old" || len(got.Namespaces) != 1 {
		t.Errorf("base modified or namespaces lost")
	}
	if _, err := Overlay(base, nil, []Ref{{Kind: "NetworkPolicy", Namespace: "b", Name: "typo"}}); err == nil || !strings.Contains(err.Error(), "NetworkPolicy/b/typo: no such object") {
		t.Errorf("deleting a missing object: %v", err)
	}
}
