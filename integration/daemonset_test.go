package integration

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

func decodeManifest(t *testing.T, file string, into any) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(deployDir, file))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(data, into); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// TestDaemonSetShape checks the properties the agent's correctness depends
// on; the API server accepts a DaemonSet without any of them.
func TestDaemonSetShape(t *testing.T) {
	var ds appsv1.DaemonSet
	decodeManifest(t, "daemonset.yaml", &ds)
	spec := ds.Spec.Template.Spec
	if ds.Namespace != "kube-system" {
		t.Errorf("namespace %q, want kube-system (system-node-critical is only admitted there)", ds.Namespace)
	}
	if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("hostNetwork=%v dnsPolicy=%q, want true and ClusterFirstWithHostNet", spec.HostNetwork, spec.DNSPolicy)
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", spec.PriorityClassName)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists || spec.Tolerations[0].Key != "" {
		t.Errorf("tolerations %+v, want [{operator: Exists}] (every node, every taint)", spec.Tolerations)
	}
	if spec.ServiceAccountName != "nfqpolicy" {
		t.Errorf("serviceAccountName %q", spec.ServiceAccountName)
	}
	u := ds.Spec.UpdateStrategy
	if u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate == nil || u.RollingUpdate.MaxUnavailable == nil || u.RollingUpdate.MaxUnavailable.IntValue() != 1 {
		t.Errorf("updateStrategy %+v, want RollingUpdate maxUnavailable 1", u)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("no securityContext capabilities")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("privileged: the agent needs only NET_ADMIN and NET_RAW")
	}
	caps := slices.Sorted(slices.Values(sc.Capabilities.Add))
	if !slices.Equal(caps, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) {
		t.Errorf("capabilities add %v, want NET_ADMIN, NET_RAW", caps)
	}
	var nodeName *corev1.EnvVar
	for i := range c.Env {
		if c.Env[i].Name == "NODE_NAME" {
			nodeName = &c.Env[i]
		}
	}
	if nodeName == nil || nodeName.ValueFrom == nil || nodeName.ValueFrom.FieldRef == nil || nodeName.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("NODE_NAME not from the downward API spec.nodeName: %+v", nodeName)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path {
			t.Errorf("%s probe %+v, want httpGet %s", p.name, p.probe, p.path)
		}
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	if m, ok := mounts["/run/xtables.lock"]; !ok || m.ReadOnly {
		t.Errorf("/run/xtables.lock mount %+v: iptables must be able to take the shared lock", m)
	}
	// Useless without CAP_SYS_MODULE, and absent on nodes with a
	// monolithic kernel (the hostPath check would keep the pod from
	// starting there).
	if m, ok := mounts["/lib/modules"]; ok {
		t.Errorf("/lib/modules mount %+v: the agent cannot load modules (no CAP_SYS_MODULE); the kernel loads them", m)
	}
	// Flow log and capture outlive the pod (rollouts, crashes), one folder
	// per node.
	if m, ok := mounts["/var/log/nfqpolicy"]; !ok || m.ReadOnly || m.SubPathExpr != "$(NODE_NAME)" {
		t.Errorf("/var/log/nfqpolicy mount %+v, want writable with subPathExpr $(NODE_NAME)", m)
	}
}

var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// TestDaemonSetArgsAndConfigMap: every $(VAR) in the container args is
// defined (the kubelet leaves an undefined one as literal text, which the
// agent would then reject), every ConfigMap key is used, and the probes use
// the port the health address listens on.
func TestDaemonSetArgsAndConfigMap(t *testing.T) {
	var ds appsv1.DaemonSet
	decodeManifest(t, "daemonset.yaml", &ds)
	var cm corev1.ConfigMap
	decodeManifest(t, "configmap.yaml", &cm)
	c := ds.Spec.Template.Spec.Containers[0]
	if len(c.EnvFrom) != 1 || c.EnvFrom[0].ConfigMapRef == nil || c.EnvFrom[0].ConfigMapRef.Name != cm.Name {
		t.Fatalf("container envFrom %+v, want the ConfigMap %q", c.EnvFrom, cm.Name)
	}
	defined := map[string]bool{}
	for k := range cm.Data {
		defined[k] = true
	}
	for _, e := range c.Env {
		defined[e.Name] = true
	}
	used := map[string]bool{}
	for _, a := range c.Args {
		for _, m := range envRef.FindAllStringSubmatch(a, -1) {
			used[m[1]] = true
			if !defined[m[1]] {
				t.Errorf("arg %q uses $(%s), which neither the ConfigMap nor env defines", a, m[1])
			}
		}
	}
	for k := range cm.Data {
		if !used[k] {
			t.Errorf("ConfigMap key %s is not passed to any flag", k)
		}
	}
	addr := cm.Data["NFQPOLICY_HEALTH_ADDR"]
	_, port, _ := strings.Cut(addr, ":")
	for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil {
			continue
		}
		if p.HTTPGet.Port.String() != port {
			t.Errorf("probe port %s, but the health address is %s", p.HTTPGet.Port.String(), addr)
		}
		if host, _, _ := strings.Cut(addr, ":"); host != "" && host != "0.0.0.0" && p.HTTPGet.Host != host {
			t.Errorf("probe host %q cannot reach a health server bound to %s", p.HTTPGet.Host, addr)
		}
	}
}

// TestDaemonSetArgsParse expands the args with the ConfigMap's values, as
// the kubelet does, and has the real binary validate them: a renamed flag or
// a value the agent rejects fails here, not on a node. --kubeconfig points
// at a missing file so that the agent stops after validating its flags,
// before it touches the host; it runs in a fresh network namespace anyway
// so that no change to that order can reach the host's rules.
func TestDaemonSetArgsParse(t *testing.T) {
	if testing.Short() {
		t.Skip("builds cmd/nfqpolicy")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil || os.Geteuid() != 0 {
		t.Skipf("needs root and unshare to run the agent in a throwaway network namespace (err=%v)", err)
	}
	var ds appsv1.DaemonSet
	decodeManifest(t, "daemonset.yaml", &ds)
	var cm corev1.ConfigMap
	decodeManifest(t, "configmap.yaml", &cm)
	vals := map[string]string{"NODE_NAME": "node-a"}
	for k, v := range cm.Data {
		vals[k] = v
	}
	c := ds.Spec.Template.Spec.Containers[0]
	args := make([]string, len(c.Args))
	for i, a := range c.Args {
		args[i] = envRef.ReplaceAllStringFunc(a, func(m string) string { return vals[m[2:len(m)-1]] })
	}
	if len(args) == 0 || args[0] != "run" {
		t.Fatalf("args %v do not start with the run subcommand", args)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "nfqpolicy")
	build := exec.Command("go", "build", "-o", bin, "../cmd/nfqpolicy")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	full := append([]string{"--net", bin}, append(args, "--kubeconfig="+filepath.Join(dir, "missing-kubeconfig"))...)
	cmd := exec.Command(unshare, full...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	_ = cmd.Run() // exits 2 either way; the log says why
	log := out.String()
	switch {
	case strings.Contains(log, "bad flags"), strings.Contains(log, "flag provided but not defined"), strings.Contains(log, "invalid value"):
		t.Fatalf("the agent rejects the DaemonSet's flags %v:\n%s", args, log)
	case strings.Contains(log, "missing-kubeconfig"), strings.Contains(log, "cannot run on this host"):
		// Flags accepted; stopped at the host or API server check.
	default:
		t.Fatalf("unexpected agent output for %v:\n%s", args, log)
	}
}
