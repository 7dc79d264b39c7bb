// Package apiserver runs a real kube-apiserver backed by a private etcd for
// tests: random loopback ports, temporary directories, a bearer-token user
// in system:masters, everything torn down with t.Cleanup.
//
// The binaries are not vendored. etcd comes from Debian's etcd-server
// package (or $NFQPOLICY_ETCD); kube-apiserver is built by
// tools/kube-apiserver/build.sh (or named by $NFQPOLICY_KUBE_APISERVER or
// $KUBE_APISERVER). Tests skip when either is missing, unless
// NFQPOLICY_REQUIRE_APISERVER=1, which makes a missing binary a failure
// (make test sets it after building).
package apiserver

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Version is the kube-apiserver release tools/kube-apiserver builds.
const Version = "v1.37.2"

// Server is a running kube-apiserver with its etcd.
type Server struct {
	// Config reaches the server as a system:masters user.
	Config *rest.Config
	// URL is the server's https address.
	URL string
	// Dir holds certificates, keys and logs.
	Dir string

	apiserver, etcd *process
	apiserverBin    string
	apiserverArgs   []string
}

// Client returns a clientset for Config.
func (s *Server) Client(t testing.TB) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(s.Config)
	if err != nil {
		t.Fatalf("apiserver: clientset: %v", err)
	}
	return c
}

// Binaries returns the kube-apiserver and etcd paths the harness would run,
// or an error naming the missing one and how to get it.
func Binaries() (apiserverBin, etcdBin string, err error) {
	apiserverBin = os.Getenv("NFQPOLICY_KUBE_APISERVER")
	if apiserverBin == "" {
		apiserverBin = os.Getenv("KUBE_APISERVER") // the Makefile's name for it
	}
	if apiserverBin == "" {
		cache := os.Getenv("NFQPOLICY_CACHE")
		if cache == "" {
			base := os.Getenv("XDG_CACHE_HOME")
			if base == "" {
				home, herr := os.UserHomeDir()
				if herr != nil {
					return "", "", fmt.Errorf("locating the kube-apiserver cache: %w", herr)
				}
				base = filepath.Join(home, ".cache")
			}
			cache = filepath.Join(base, "nfqpolicy")
		}
		apiserverBin = filepath.Join(cache, "kube-apiserver-"+Version)
	}
	if _, err := os.Stat(apiserverBin); err != nil {
		return "", "", fmt.Errorf("kube-apiserver %s not found at %s (build it with tools/kube-apiserver/build.sh, or set NFQPOLICY_KUBE_APISERVER): %w", Version, apiserverBin, err)
	}
	etcdBin = os.Getenv("NFQPOLICY_ETCD")
	if etcdBin == "" {
		etcdBin = "etcd"
	}
	p, err := exec.LookPath(etcdBin)
	if err != nil {
		return "", "", fmt.Errorf("etcd not found (apt-get install -y etcd-server, or set NFQPOLICY_ETCD): %w", err)
	}
	return apiserverBin, p, nil
}

// Required reports whether missing binaries must fail tests instead of
// skipping them.
func Required() bool { return os.Getenv("NFQPOLICY_REQUIRE_APISERVER") == "1" }

// Start runs etcd and kube-apiserver and waits until /readyz answers ok.
// It skips the test when a binary is missing (fails when Required).
func Start(t testing.TB) *Server {
	t.Helper()
	apiserverBin, etcdBin, err := Binaries()
	if err != nil {
		if Required() {
			t.Fatalf("apiserver: %v (NFQPOLICY_REQUIRE_APISERVER=1)", err)
		}
		t.Skipf("SKIPPED, NO API SERVER: %v", err)
	}
	dir := t.TempDir()
	s := &Server{Dir: dir}
	start := time.Now()
	// Cleanups run last-in first-out: the apiserver stops before etcd, and
	// both before t.TempDir removes their directories.
	etcdURL, err := s.startEtcd(t, etcdBin)
	if err != nil {
		t.Fatalf("apiserver: %v", err)
	}
	if err := s.startAPIServer(t, apiserverBin, etcdURL); err != nil {
		t.Fatalf("apiserver: %v", err)
	}
	t.Logf("kube-apiserver %s ready at %s after %v", Version, s.URL, time.Since(start).Round(time.Millisecond))
	return s
}

func (s *Server) startEtcd(t testing.TB, bin string) (string, error) {
	ports, err := freePorts(2)
	if err != nil {
		return "", err
	}
	client := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peer := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	args := []string{
		"--name=test",
		"--data-dir=" + filepath.Join(s.Dir, "etcd"),
		"--listen-client-urls=" + client,
		"--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=test=" + peer,
		"--log-level=warn",
		"--logger=zap",
	}
	p, err := startProcess(t, "etcd", bin, args, filepath.Join(s.Dir, "etcd.log"))
	if err != nil {
		return "", err
	}
	s.etcd = p
	httpc := &http.Client{Timeout: time.Second}
	err = waitUntil(30*time.Second, p, func() error {
		resp, err := httpc.Get(client + "/health")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("etcd /health: %s", resp.Status)
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("etcd did not become healthy: %w\n%s", err, p.tail())
	}
	return client, nil
}

func (s *Server) startAPIServer(t testing.TB, bin, etcdURL string) error {
	ports, err := freePorts(1)
	if err != nil {
		return err
	}
	token, err := randomHex(16)
	if err != nil {
		return err
	}
	tokens := filepath.Join(s.Dir, "tokens.csv")
	// token,user,uid,"group,..."
	if err := os.WriteFile(tokens, []byte(token+`,admin,admin-uid,"system:masters"`+"\n"), 0o600); err != nil {
		return fmt.Errorf("writing token file: %w", err)
	}
	saKey := filepath.Join(s.Dir, "sa.key")
	if err := writeECKey(saKey); err != nil {
		return err
	}
	certDir := filepath.Join(s.Dir, "certs")
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(ports[0]),
		"--cert-dir=" + certDir,
		"--token-auth-file=" + tokens,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + saKey,
		"--service-account-signing-key-file=" + saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		// No controller-manager creates the "default" service account, so
		// the admission plugin that requires it would reject every pod.
		"--disable-admission-plugins=ServiceAccount",
		// The endpoint reconciler refuses loopback advertise addresses; no
		// test needs the kubernetes Service's endpoints.
		"--endpoint-reconciler-type=none",
		"--storage-media-type=application/vnd.kubernetes.protobuf",
		"--v=0",
	}
	s.apiserverBin, s.apiserverArgs = bin, args
	p, err := startProcess(t, "kube-apiserver", bin, args, filepath.Join(s.Dir, "kube-apiserver.log"))
	if err != nil {
		return err
	}
	s.apiserver = p
	s.URL = "https://127.0.0.1:" + strconv.Itoa(ports[0])
	s.Config = &rest.Config{
		Host:        s.URL,
		BearerToken: token,
		// The server writes its self-signed certificate (and the CA that
		// signed it) when it starts; until then TLS cannot be verified.
		TLSClientConfig: rest.TLSClientConfig{CAFile: filepath.Join(certDir, "apiserver.crt")},
		QPS:             200,
		Burst:           400,
		Timeout:         30 * time.Second,
	}
	return s.waitReady(p)
}

// waitReady polls /readyz until the server answers ok.
func (s *Server) waitReady(p *process) error {
	var client *kubernetes.Clientset
	err := waitUntil(90*time.Second, p, func() error {
		if _, err := os.Stat(s.Config.TLSClientConfig.CAFile); err != nil {
			return err
		}
		if client == nil {
			c, err := kubernetes.NewForConfig(s.Config)
			if err != nil {
				return err
			}
			client = c
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return fmt.Errorf("/readyz: %w: %s", err, body)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("kube-apiserver did not become ready: %w\n%s", err, p.tail())
	}
	return nil
}

// process is a child the harness started, with its log file.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // valid after done is closed
}

func startProcess(t testing.TB, name, bin string, args []string, logPath string) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Pdeathsig: if the test binary dies (timeout panic, kill), so do the
	// servers, instead of leaking processes that hold ports.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s log (last lines):\n%s", name, p.tail())
		}
		p.stop()
	})
	return p, nil
}

// stop asks the process to exit and kills it if it does not within 10s.
func (p *process) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *process) exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited: %v", p.name, p.err)
	default:
		return nil
	}
}

// tail returns the end of the process's log for failure messages.
func (p *process) tail() string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return fmt.Sprintf("(no %s log: %v)", p.name, err)
	}
	const max = 6000
	if len(b) > max {
		b = b[len(b)-max:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return strings.TrimRight(string(b), "\n")
}

// waitUntil polls check until it succeeds, the process exits or the timeout
// passes.
func waitUntil(timeout time.Duration, p *process, check func() error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if err := p.exited(); err != nil {
			return err
		}
		if last = check(); last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// freePorts asks the kernel for n unused loopback ports. Another process
// could take one before the server binds it; the server would then fail to
// start and the test fail loudly, which is rare enough to accept.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// writeECKey writes a fresh P-256 key: the apiserver signs service account
// tokens with it and verifies them with its public half.
func writeECKey(path string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("service account key: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("service account key: %w", err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("service account key: %w", err)
	}
	return nil
}

// StopAPIServer stops kube-apiserver (etcd keeps the data), so that tests
// can watch clients lose the server. It is idempotent.
func (s *Server) StopAPIServer() { s.apiserver.stop() }

// RestartAPIServer starts kube-apiserver again on the same port, with the
// same certificates and data, and waits until it is ready.
func (s *Server) RestartAPIServer(t testing.TB) {
	t.Helper()
	s.apiserver.stop()
	p, err := startProcess(t, "kube-apiserver", s.apiserverBin, s.apiserverArgs, filepath.Join(s.Dir, "kube-apiserver.log"))
	if err != nil {
		t.Fatalf("apiserver: restart: %v", err)
	}
	s.apiserver = p
	if err := s.waitReady(p); err != nil {
		t.Fatalf("apiserver: restart: %v", err)
	}
}
