// Command kcluster brings up the real two-node cluster of package
// realcluster with nfqpolicy deployed from deploy/, leaves it running under
// a background supervisor, and takes it down again.
//
//	kcluster up [--image-tar bin/nfqpolicy-image.tar] [--image nfqpolicy:dev] [--deploy deploy] [--no-agent]
//	kcluster down
//	kcluster status
//
// `up` prints, last, two lines to paste: export KUBECONFIG=... and
// export PATH=... (the folder holding the matching kubectl). `down` stops
// the supervisor, which removes everything, then sweeps whatever a dead
// supervisor left. Exit status: 0 ok, 1 failure, 2 usage.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nfqpolicy/nfqpolicy/internal/netns"
	"github.com/nfqpolicy/nfqpolicy/realcluster"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "up":
		err = up(os.Args[2:])
	case "down":
		err = down()
	case "status":
		err = status()
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kcluster:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: kcluster up [flags] | down | status")
	os.Exit(2)
}

// stateFile names the running supervisor: "pid kubeconfig pathdir".
func stateFile() string { return filepath.Join(realcluster.BaseDir(), "current") }

func up(args []string) error {
	fs := flag.NewFlagSet("kcluster up", flag.ExitOnError)
	imageTar := fs.String("image-tar", realcluster.NFQPolicyImageTar, "the nfqpolicy image tarball (make image)")
	image := fs.String("image", realcluster.NFQPolicyImage, "the reference the tarball carries")
	deployDir := fs.String("deploy", "deploy", "the deploy/ folder applied with kubectl apply -k (through an overlay that sets the image)")
	noAgent := fs.Bool("no-agent", false, "bring the cluster up without nfqpolicy")
	apiAddr := fs.String("api-addr", "127.0.0.1:0", "root-namespace address of the API server forwarder")
	foreground := fs.Bool("foreground", false, "stay in the foreground as the supervisor (until SIGTERM/SIGINT)")
	_ = fs.Parse(args)
	if pid, _, _, err := readState(); err == nil && netns.Alive(pid) {
		return fmt.Errorf("a cluster already runs (supervisor pid %d); kcluster down first", pid)
	}
	if *foreground {
		return supervise(*imageTar, *image, *deployDir, *noAgent, *apiAddr)
	}
	return spawn(args)
}

// spawn starts this program as a detached supervisor and waits for its
// one-line report on a pipe: "ok KUBECONFIG PATHDIR" or an error.
func spawn(args []string) error {
	if err := os.MkdirAll(realcluster.BaseDir(), 0o755); err != nil {
		return err
	}
	logPath := filepath.Join(realcluster.BaseDir(), "kcluster.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, append([]string{"up", "--foreground"}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{w}
	cmd.Env = append(os.Environ(), "KCLUSTER_REPORT_FD=3")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	w.Close()
	fmt.Fprintf(os.Stderr, "kcluster: supervisor pid %d bringing the cluster up (log: %s)\n", cmd.Process.Pid, logPath)
	line, _ := bufio.NewReader(r).ReadString('\n')
	r.Close()
	fields := strings.Fields(line)
	if len(fields) != 3 || fields[0] != "ok" {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_, _ = cmd.Process.Wait()
		tail, _ := os.ReadFile(logPath)
		if len(tail) > 4000 {
			tail = tail[len(tail)-4000:]
		}
		return fmt.Errorf("cluster did not come up: %s\n%s", strings.TrimSpace(line), tail)
	}
	_ = cmd.Process.Release()
	fmt.Printf("cluster up in %.1fs; take it down with: make cluster-down\n", time.Since(start).Seconds())
	fmt.Printf("export KUBECONFIG=%s\n", fields[1])
	fmt.Printf("export PATH=%s:$PATH\n", fields[2])
	return nil
}

// supervise brings the cluster up, deploys nfqpolicy, reports, and holds
// the cluster (and its API forwarder) until told to stop.
func supervise(imageTar, image, deployDir string, noAgent bool, apiAddr string) (err error) {
	var report io.WriteCloser = os.Stdout
	if fd := os.Getenv("KCLUSTER_REPORT_FD"); fd != "" {
		n, _ := strconv.Atoi(fd)
		report = os.NewFile(uintptr(n), "report")
	}
	defer func() {
		if err != nil {
			fmt.Fprintf(report, "error %v\n", strings.ReplaceAll(err.Error(), "\n", " "))
		}
		report.Close()
	}()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	// The state names this supervisor from the start, so that `down`
	// can stop a bring-up still in progress.
	pathDir := "-"
	if b, err := realcluster.FindBinaries(); err == nil {
		pathDir = filepath.Dir(b.Kubectl)
	}
	if err := os.WriteFile(stateFile(), []byte(fmt.Sprintf("%d - %s\n", os.Getpid(), pathDir)), 0o644); err != nil {
		return err
	}
	defer os.Remove(stateFile())
	if err := realcluster.CanRun(); err != nil {
		return err
	}
	images, err := realcluster.ImageTarballs()
	if err != nil {
		return err
	}
	if !noAgent {
		if _, err := os.Stat(imageTar); err != nil {
			return fmt.Errorf("nfqpolicy image (make image): %w", err)
		}
		images = append(images, imageTar)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// A signal during bring-up cancels it; Up and Deploy then fail and
	// everything made so far is removed.
	upDone := make(chan struct{})
	defer close(upDone)
	go func() {
		select {
		case s := <-sigs:
			cancel()
			sigs <- s // for the wait below, should bring-up have finished
		case <-upDone:
		}
	}()
	logf := func(format string, a ...any) {
		fmt.Printf("%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, a...))
	}
	start := time.Now()
	c, err := realcluster.Up(ctx, realcluster.Options{Images: images, APIAddr: apiAddr, Logf: logf})
	if err != nil {
		return err
	}
	defer func() {
		if derr := c.Down(); derr != nil {
			err = errors.Join(err, derr)
			logf("teardown: %v", derr)
		} else {
			logf("teardown complete")
		}
	}()
	var dep *realcluster.Deployment
	if !noAgent {
		if dep, err = c.Deploy(ctx, deployDir, image); err != nil {
			return err
		}
		logf("nfqpolicy DaemonSet ready on every node (%v after start)", time.Since(start).Round(time.Millisecond))
	}
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	pathDir = filepath.Dir(c.Bins.Kubectl)
	state := fmt.Sprintf("%d %s %s\n", os.Getpid(), c.Kubeconfig, pathDir)
	if err := os.WriteFile(stateFile(), []byte(state), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(report, "ok %s %s\n", c.Kubeconfig, pathDir)
	report.Close()
	report = nopCloser{io.Discard}
	s := <-sigs
	logf("%v: taking the cluster down", s)
	if dep != nil {
		dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Minute)
		if err := dep.Delete(dctx); err != nil {
			logf("kubectl delete -k: %v", err)
		}
		dcancel()
	}
	return nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

func readState() (pid int, kubeconfig, pathDir string, err error) {
	data, err := os.ReadFile(stateFile())
	if err != nil {
		return 0, "", "", err
	}
	f := strings.Fields(string(data))
	if len(f) != 3 {
		return 0, "", "", fmt.Errorf("%s: malformed", stateFile())
	}
	pid, err = strconv.Atoi(f[0])
	return pid, f[1], f[2], err
}

func down() error {
	pid, _, _, err := readState()
	if err == nil && netns.Alive(pid) {
		fmt.Fprintf(os.Stderr, "kcluster: stopping supervisor %d\n", pid)
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
			return err
		}
		deadline := time.Now().Add(4 * time.Minute)
		for netns.Alive(pid) && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
		}
		if netns.Alive(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			time.Sleep(500 * time.Millisecond)
		}
	}
	os.Remove(stateFile())
	swept, err := realcluster.Sweep()
	if len(swept) > 0 {
		fmt.Fprintf(os.Stderr, "kcluster: swept %v\n", swept)
	}
	if err != nil {
		return err
	}
	if left := realcluster.Leftovers(); len(left) > 0 {
		return fmt.Errorf("left behind (a live owner holds them): %s", strings.Join(left, "; "))
	}
	if err := realcluster.RemoveBase(); err != nil {
		return err
	}
	fmt.Println("cluster down; nothing left behind")
	return nil
}

func status() error {
	pid, kubeconfig, pathDir, err := readState()
	if err != nil || !netns.Alive(pid) {
		fmt.Println("no cluster running")
		return nil
	}
	if kubeconfig == "-" {
		fmt.Printf("supervisor pid %d: bringing the cluster up\n", pid)
		return nil
	}
	fmt.Printf("supervisor pid %d\nexport KUBECONFIG=%s\nexport PATH=%s:$PATH\n", pid, kubeconfig, pathDir)
	cmd := exec.Command(filepath.Join(pathDir, "kubectl"), "--kubeconfig", kubeconfig, "get", "nodes,pods", "-A", "-o", "wide")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	return cmd.Run()
}
