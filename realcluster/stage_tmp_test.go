package realcluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestStageTmp(t *testing.T) {
	if os.Getenv("STAGE") == "" {
		t.Skip()
	}
	cache := CacheDir()
	b := Binaries{Etcd: "/usr/bin/etcd", APIServer: filepath.Join(cache, "kube-apiserver-v1.37.2"),
		Containerd: filepath.Join(containerdDir(), "containerd"), Ctr: filepath.Join(containerdDir(), "ctr"), Shim: filepath.Join(containerdDir(), "containerd-shim-runc-v2"), Runc: "/usr/sbin/runc", CNIDir: cniDir()}
	c := &Cluster{Name: "nfqpk-" + itoa(os.Getpid()) + "-1", Bins: b, logf: t.Logf}
	c.Dir = filepath.Join(BaseDir(), c.Name)
	os.MkdirAll(c.Dir, 0o755)
	c.env = append(filteredEnv("PATH"), "PATH="+filepath.Dir(b.Shim)+":/usr/sbin:/usr/bin:/sbin:/bin")
	defer func() { t.Log("down:", c.Down()) }()
	ctx := context.Background()
	start := time.Now()
	if err := c.network(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.certificates(); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- c.startContainerd(ctx, c.Nodes[0], nil) }()
	c.Bins.ControllerManager = "/bin/sleep"
	c.Bins.Scheduler = "/bin/sleep"
	if err := c.startControlPlane(ctx, ""); err != nil {
		t.Fatal(err)
	}
	t.Logf("apiserver ready after %v at %s", time.Since(start), c.APIAddr())
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	out, err := c.ctr(ctx, c.Nodes[0], "-n", "k8s.io", "plugins", "ls")
	t.Log(out, err)
	v, err := c.Client.Discovery().ServerVersion()
	t.Log(v, err)
}

func itoa(i int) string   { return fmtInt(i) }
func fmtInt(i int) string { return fmt.Sprint(i) }
