package e2e

// The fault matrix (issue 14) on the kernel path: one agent in a one-node
// namespace cluster, real traffic while the fault happens. Every row
// prints one line,
//
//	fault NAME: established_cut=N new_let_through=N new_refused=N recovered_ms=N records_lost_unreported=N
//
// where established_cut counts long-lived connections that stopped
// echoing, new_let_through new connections the policy denies that got
// through while policing was in force (rows whose fault takes policing
// away — fail-open while no agent runs, rules flushed — print the flows
// that passed during that window on a second line, "unpoliced"),
// new_refused new connections the policy allows that did not connect,
// recovered_ms the time from the fault's end to the first correct new
// decision, and records_lost_unreported the denied flows the agent decided
// that are neither in the flow log nor counted there as lost.
//
// Run them with `make faults` (go test ./e2e ./integration -run Fault -v).

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"golang.org/x/sys/unix"

	"github.com/nfqpolicy/nfqpolicy/flowlog"
	"github.com/nfqpolicy/nfqpolicy/scenario"
)

// faultScenario: x/deny-all isolates x; y may reach x/b on 80 (probes)
// and 9000 (the test's long-lived echo connections). So y/c -> x/a:80 is
// denied, y/c -> x/b:80 allowed.
const faultScenario = `
name: e2e-faults
source: faults_kernel_test.go
objects:
  - {apiVersion: v1, kind: Namespace, metadata: {name: x, labels: {ns: x}}}
  - {apiVersion: v1, kind: Namespace, metadata: {name: y, labels: {ns: y}}}
  - {apiVersion: v1, kind: Node, metadata: {name: node-1}, status: {addresses: [{type: InternalIP, address: 192.168.78.1}]}}
  - {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x, labels: {pod: a}}, spec: {nodeName: node-1, containers: [{name: c}]}, status: {podIPs: [{ip: 10.244.78.10}]}}
  - {apiVersion: v1, kind: Pod, metadata: {name: b, namespace: x, labels: {pod: b}}, spec: {nodeName: node-1, containers: [{name: c}]}, status: {podIPs: [{ip: 10.244.78.11}]}}
  - {apiVersion: v1, kind: Pod, metadata: {name: c, namespace: y, labels: {pod: c}}, spec: {nodeName: node-1, containers: [{name: c}]}, status: {podIPs: [{ip: 10.244.78.12}]}}
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: deny-all, namespace: x}
    spec: {podSelector: {}, policyTypes: [Ingress]}
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: allow-b-from-y, namespace: x}
    spec:
      podSelector: {matchLabels: {pod: b}}
      ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80}, {port: 9000}]}]
probes:
  - {from: y/c, to: x/a, port: 80, expect: deny}
  - {from: y/c, to: x/b, port: 80, expect: allow}
`

const (
	faultEchoPort = 9000
	// faultEstablished is the number of long-lived connections held open
	// through each fault.
	faultEstablished = 50
	// estFirstPort starts the established connections' source ports,
	// below the prober's range.
	estFirstPort = 30000
)

// faultResult is one matrix line.
type faultResult struct {
	name                                             string
	cut, letThrough, refused, recoveredMS, lostUnrep int
}

func (r faultResult) String() string {
	return fmt.Sprintf("fault %s: established_cut=%d new_let_through=%d new_refused=%d recovered_ms=%d records_lost_unreported=%d",
		r.name, r.cut, r.letThrough, r.refused, r.recoveredMS, r.lostUnrep)
}

// print writes the line to stdout exactly as specified (t.Log would
// prefix it), and checks the figures every row guarantees.
func (r faultResult) print(t *testing.T) {
	t.Helper()
	fmt.Println(r.String())
	if r.letThrough != 0 {
		t.Errorf("%d new flows the policy denies got through", r.letThrough)
	}
	if r.lostUnrep != 0 {
		t.Errorf("%d flow records lost without being reported", r.lostUnrep)
	}
	if r.recoveredMS < 0 {
		t.Errorf("no correct decision after the fault ended")
	}
}

// faultRig is the fault scenario's cluster with one agent, its flags kept
// for restarts.
type faultRig struct {
	*observeCluster
	t                 *testing.T
	bin               string
	args              []string
	from, allow, deny endpoint
	flows, pcap       string
	restarts          int
	estPort           atomic.Uint32
	echoLn            net.Listener
	echoWG            sync.WaitGroup
	echoMu            sync.Mutex
	echoConns         []net.Conn
}

// startFaultRig builds the cluster and starts the agent with the flow
// log and capture in the test's directory, --deny-action reject (so that
// a decided denial is told from a kernel drop: refused, not a timeout)
// plus extra flags.
func startFaultRig(t *testing.T, bin, name string, extra func(dir string) []string) *faultRig {
	t.Helper()
	ss, err := scenario.Parse("faults.yaml", []byte(faultScenario))
	if err != nil {
		t.Fatalf("scenario: %v", err)
	}
	p, err := prepare(ss[0])
	if err != nil {
		t.Fatalf("scenario: %v", err)
	}
	r := &faultRig{t: t, bin: bin}
	r.observeCluster = startClusterOf(t, bin, name, p, func(dir string) []string {
		r.flows, r.pcap = filepath.Join(dir, "flows.jsonl"), filepath.Join(dir, "capture.pcapng")
		r.args = []string{"--deny-action", "reject", "--flow-log", r.flows, "--flow-log-rate", "0",
			"--capture", r.pcap, "--debug-socket", filepath.Join(dir, "debug.sock")}
		if extra != nil {
			r.args = append(r.args, extra(dir)...)
		}
		return r.args
	})
	r.from, r.allow, r.deny = r.endpoint("y/c"), r.endpoint("x/b"), r.endpoint("x/a")
	r.estPort.Store(estFirstPort)
	return r
}

// kill sends SIGKILL to the agent and waits for it to be gone.
func (r *faultRig) kill() {
	r.t.Helper()
	p := r.agents.agents[0]
	if err := p.cmd.Process.Kill(); err != nil {
		r.t.Fatalf("kill the agent: %v", err)
	}
	<-p.exited
}

// stop sends SIGTERM (a rolling update's stop) and waits.
func (r *faultRig) stop() {
	r.t.Helper()
	p := r.agents.agents[0]
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		r.t.Fatalf("the agent ignored SIGTERM for 10s")
	}
}

// restart starts a new agent with the same flags, keeping the old one's
// log, and returns when it was started (not when it is ready).
func (r *faultRig) restart() time.Time {
	r.t.Helper()
	old := r.agents.agents[0]
	r.restarts++
	_ = os.Rename(old.logPath, fmt.Sprintf("%s.%d", old.logPath, r.restarts))
	start := time.Now()
	p, err := r.agents.start(r.bin, r.args, old.node, old.ns)
	if err != nil {
		r.t.Fatalf("restart the agent: %v", err)
	}
	r.agents.agents[0] = p
	return start
}

func (r *faultRig) waitReady() {
	r.t.Helper()
	if err := r.agents.agents[0].waitReady(context.Background(), time.Now().Add(60*time.Second)); err != nil {
		r.t.Fatalf("restarted agent: %v", err)
	}
}

// counters reads the agent's /debug/counters.
func (r *faultRig) counters() map[string]any {
	r.t.Helper()
	body, code, err := r.agents.agents[0].get(context.Background(), "/debug/counters")
	if err != nil || code != 200 {
		r.t.Fatalf("/debug/counters: HTTP %d %v", code, err)
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		r.t.Fatalf("/debug/counters: %v", err)
	}
	return m
}

// established holds long-lived connections y/c -> x/b:9000 to an echo
// server; check reports how many stopped echoing.
type established struct {
	conns []net.Conn
}

func (r *faultRig) openEstablished(n int) *established {
	r.t.Helper()
	if r.echoLn == nil {
		ns := r.top.nsOf(r.allow.place)
		addr := netip.AddrPortFrom(r.allow.addr, faultEchoPort).String()
		if err := ns.Do(func() (err error) {
			r.echoLn, err = net.Listen("tcp", addr)
			return err
		}); err != nil {
			r.t.Fatalf("echo server on %s: %v", addr, err)
		}
		r.echoWG.Add(1)
		go func() {
			defer r.echoWG.Done()
			for {
				c, err := r.echoLn.Accept()
				if err != nil {
					return
				}
				r.echoMu.Lock()
				r.echoConns = append(r.echoConns, c)
				r.echoMu.Unlock()
				r.echoWG.Add(1)
				go func() {
					defer r.echoWG.Done()
					_, _ = io.Copy(c, c)
				}()
			}
		}()
		r.t.Cleanup(func() {
			r.echoLn.Close()
			r.echoMu.Lock()
			for _, c := range r.echoConns {
				c.Close()
			}
			r.echoMu.Unlock()
			r.echoWG.Wait()
		})
	}
	e := &established{}
	ns := r.top.nsOf(r.from.place)
	dst := netip.AddrPortFrom(r.allow.addr, faultEchoPort).String()
	for range n {
		var c net.Conn
		port := uint16(r.estPort.Add(1))
		err := ns.Do(func() (err error) {
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(r.from.addr, port))}
			c, err = d.Dial("tcp", dst)
			return err
		})
		if err != nil {
			r.t.Fatalf("established connection %d to %s: %v", len(e.conns), dst, err)
		}
		e.conns = append(e.conns, c)
	}
	r.t.Cleanup(func() {
		for _, c := range e.conns {
			c.Close()
		}
	})
	if cut := e.check(); cut != 0 {
		r.t.Fatalf("%d of %d fresh established connections do not echo", cut, n)
	}
	return e
}

// check sends a byte on every connection and counts those that do not
// echo it within 10s (a cut connection never does; a slow machine is
// given time).
func (e *established) check() int {
	var cut atomic.Int64
	var wg sync.WaitGroup
	for _, c := range e.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			var b [1]byte
			if _, err := c.Write([]byte{'x'}); err != nil {
				cut.Add(1)
				return
			}
			if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'x' {
				cut.Add(1)
			}
		}()
	}
	wg.Wait()
	return int(cut.Load())
}

// attempt is one new connection of the traffic generator.
type attempt struct {
	start, end time.Time
	deny       bool // to the denied destination
	o          outcome
}

// correct: an allowed destination connected, a denied one was refused by
// the agent's reject (a timeout is the kernel dropping it: no decision).
func (a attempt) correct() bool {
	if a.deny {
		return !a.o.allowed && a.o.detail == "refused"
	}
	return a.o.allowed
}

// traffic opens new connections to both destinations, alternately: one
// every gap, each in its own goroutine (at most inFlight at once), so
// that connections keep starting while earlier ones hang on a fault.
type traffic struct {
	mu   sync.Mutex
	all  []attempt
	stop chan struct{}
	wg   sync.WaitGroup
}

func (r *faultRig) startTraffic(inFlight int, gap time.Duration) *traffic {
	tr := &traffic{stop: make(chan struct{})}
	sem := make(chan struct{}, inFlight)
	tr.wg.Add(1)
	go func() {
		defer tr.wg.Done()
		for i := 0; ; i++ {
			select {
			case <-tr.stop:
				return
			case sem <- struct{}{}:
			}
			tr.wg.Add(1)
			go func() {
				defer tr.wg.Done()
				defer func() { <-sem }()
				a := attempt{start: time.Now(), deny: i%2 == 0}
				dst := r.allow
				if a.deny {
					dst = r.deny
				}
				a.o = r.pr.once(context.Background(), r.from, dst, 80, "TCP")
				a.end = time.Now()
				if a.o.err != nil {
					r.t.Errorf("probe: %v", a.o.err)
				}
				tr.mu.Lock()
				tr.all = append(tr.all, a)
				tr.mu.Unlock()
			}()
			time.Sleep(gap)
		}
	}()
	return tr
}

func (tr *traffic) halt() []attempt {
	close(tr.stop)
	tr.wg.Wait()
	return tr.all
}

// recoveredMS is the time from `from` to the end of the first correct
// attempt started after it; -1 if there is none.
func recoveredMS(all []attempt, from time.Time) int {
	best := time.Duration(math.MaxInt64)
	for _, a := range all {
		if !a.start.Before(from) && a.correct() && a.end.Sub(from) < best {
			best = a.end.Sub(from)
		}
	}
	if best == time.Duration(math.MaxInt64) {
		return -1
	}
	return int(best.Milliseconds())
}

// flowLogTally reads every flow-log file of the rig (the current one and
// rotated ones) and counts the records of denied flows to x/a:80 and the
// losses reported, per run.
type flowLogTally struct {
	records, reported int
	// denied counts every record of a denied flow, any destination.
	denied    int
	runs      map[string]int
	seqs      map[string][]uint64
	malformed int
	// order lists the runs as their lines appear; unclean maps a run that
	// ended without closing its log to what the next run reported of it.
	order   []string
	unclean map[string]uncleanEnd
}

// uncleanEnd is one unclean-end line: the dead run's last seq in the log,
// what it lost (counted from its state file) or that nobody could count it.
type uncleanEnd struct {
	lastSeq, lost, limited uint64
	unknown                bool
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (r *faultRig) tallyFlowLog() flowLogTally {
	r.t.Helper()
	tl := flowLogTally{runs: map[string]int{}, seqs: map[string][]uint64{}, unclean: map[string]uncleanEnd{}}
	paths, _ := filepath.Glob(r.flows + ".*")
	for _, path := range append(paths, r.flows) {
		f, err := os.Open(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			r.t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var e flowlog.Entry
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				tl.malformed++
				r.t.Errorf("%s: line %q is not a record: %v", path, sc.Text(), err)
				continue
			}
			tl.reported += int(e.Lost + e.RateLimited)
			if e.UncleanRun != "" {
				tl.unclean[e.UncleanRun] = uncleanEnd{lastSeq: e.LastSeq, lost: e.Lost, limited: e.RateLimited, unknown: e.LostUnknown}
			}
			if e.Run != "" && (len(tl.order) == 0 || tl.order[len(tl.order)-1] != e.Run) {
				tl.order = append(tl.order, e.Run)
			}
			if e.IsSummary() {
				continue
			}
			if e.Verdict == "deny" {
				tl.denied++
			}
			if e.Dst == r.deny.addr.String() && e.DstPort == 80 {
				tl.records++
				tl.runs[e.Run]++
				tl.seqs[e.Run] = append(tl.seqs[e.Run], e.Seq)
			}
		}
		f.Close()
	}
	return tl
}

// lostUnreported compares the denials the traffic saw decided with the
// flow log: each refused connection is one decision, one record.
func (r *faultRig) lostUnreported(all []attempt, extraDecided int) int {
	r.t.Helper()
	decided := extraDecided
	for _, a := range all {
		if a.deny && a.o.detail == "refused" {
			decided++
		}
	}
	// The writer flushes every 10ms; wait for what the agent decided.
	var tl flowLogTally
	deadline := time.Now().Add(10 * time.Second)
	for {
		tl = r.tallyFlowLog()
		if tl.records+tl.reported >= decided || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.t.Logf("flow log: %d denied-flow records and %d reported lost for %d decided denials, runs %v", tl.records, tl.reported, decided, tl.runs)
	return max(0, decided-tl.records-tl.reported)
}

// TestFaultMatrixKernel runs rows 1 and 3-7 of the fault matrix (row 2,
// the API server, is TestFaultAPIServerGone in integration/).
func TestFaultMatrixKernel(t *testing.T) {
	requireKernel(t, "iptables", "ipset")
	bin := agentBinary(t)
	t.Run("kill9", func(t *testing.T) { testFaultKill9(t, bin, false) })
	t.Run("kill9-fail-open", func(t *testing.T) { testFaultKill9(t, bin, true) })
	t.Run("queue-overflow", func(t *testing.T) { testFaultQueueOverflow(t, bin) })
	t.Run("disk-full", func(t *testing.T) { testFaultDiskFull(t, bin) })
	t.Run("rules-flushed", func(t *testing.T) { testFaultRulesFlushed(t, bin) })
	t.Run("malformed-flood", func(t *testing.T) { testFaultMalformedFlood(t, bin) })
	t.Run("restart-keeps-evidence", func(t *testing.T) { testFaultRestartKeepsEvidence(t, bin) })
}

// testFaultKill9: kill -9 the agent during a flood of new connections
// with 50 established ones open, and restart it. Fail-closed: nothing new
// passes while it is down (allowed flows wait and retry), established
// flows keep echoing, decisions resume after the restart. Fail-open: new
// flows pass unpoliced while it is down (counted on the second line).
func testFaultKill9(t *testing.T, bin string, failOpen bool) {
	name := "kill9"
	var extra func(string) []string
	if failOpen {
		name = "kill9-fail-open"
		extra = func(string) []string { return []string{"--fail-open"} }
	}
	r := startFaultRig(t, bin, "k9", extra)
	est := r.openEstablished(faultEstablished)
	tr := r.startTraffic(400, 5*time.Millisecond)
	time.Sleep(time.Second)
	killStart := time.Now()
	r.kill()
	killed := time.Now()
	time.Sleep(1500 * time.Millisecond)
	cutWhileDown := est.check()
	up := r.restart()
	r.waitReady()
	time.Sleep(1500 * time.Millisecond)
	all := tr.halt()
	cut := max(cutWhileDown, est.check())

	res := faultResult{name: name, cut: cut, recoveredMS: recoveredMS(all, up)}
	// With fail-open an allowed flow connects with or without an agent:
	// only a refusal proves the agent decides again.
	back := up.Add(time.Duration(res.recoveredMS) * time.Millisecond)
	if failOpen {
		res.recoveredMS, _ = firstDenialMS(all, up)
		back = up.Add(time.Duration(res.recoveredMS) * time.Millisecond)
	}
	var unpoliced, unpolicedDenied, whileDown int
	for _, a := range all {
		// Fail-closed, a connection needs a decision: one started after
		// the old agent was gone that completed before the new one was
		// started had none. Fail-open, a denied connection that completed
		// after the kill signal passed unpoliced.
		noAgent := a.o.allowed && a.start.After(killed) && a.end.Before(up)
		if failOpen {
			noAgent = a.o.allowed && a.end.After(killStart) && a.start.Before(back)
		}
		if noAgent {
			unpoliced++
			if a.deny {
				unpolicedDenied++
			}
		}
		if a.start.After(killed) && a.start.Before(up) {
			whileDown++
		}
		switch {
		case a.deny && a.o.allowed && !(failOpen && noAgent):
			res.letThrough++
			t.Logf("denied flow connected: started %v after the kill, ended %v after (restart at %v, first denial at %v)",
				a.start.Sub(killed), a.end.Sub(killed), up.Sub(killed), back.Sub(killed))
		case !a.deny && !a.o.allowed:
			res.refused++
		}
	}
	if os.Getenv("NFQP_FAULT_DEBUG") != "" {
		for _, a := range all {
			if a.deny && a.start.After(killed.Add(-100*time.Millisecond)) {
				t.Logf("deny attempt start %v end %v: %s", a.start.Sub(killed), a.end.Sub(killed), a.o.detail)
			}
		}
		t.Logf("up at %v, back at %v", up.Sub(killed), back.Sub(killed))
	}
	// A run killed -9 loses the records still in its buffer (the writer
	// flushes every 10ms); the restarted agent counts them from the dead
	// run's state file and reports them on its unclean-end line ("lost"),
	// which lostUnreported sums with every other reported loss. A loss
	// nobody could count ("lost_unknown") is not reported: it stays in
	// records_lost_unreported.
	res.lostUnrep = r.lostUnreported(all, 0)
	tl := r.tallyFlowLog()
	if len(tl.order) >= 2 {
		first := tl.order[0]
		u, reported := tl.unclean[first]
		t.Logf("run %s logged %d denials to x/a:80 (last seq %d); run %s logged %d; unclean end of %s reported: %v, lost %d, rate-limited %d, count unknown %v",
			first, tl.runs[first], u.lastSeq, tl.order[1], tl.runs[tl.order[1]], first, reported, u.lost, u.limited, u.unknown)
		switch {
		case !reported:
			t.Errorf("the restarted agent did not report that run %s ended without closing its log", first)
		case u.unknown:
			t.Errorf("the restarted agent could not count what run %s lost", first)
		}
		fmt.Printf("fault %s: records_lost_at_kill=%d (counted by the next run's unclean_run line) records_lost_uncounted=%d\n", name, u.lost+u.limited, b2i(u.unknown))
	} else {
		t.Errorf("the flow log holds %d runs, want the killed one and its successor", len(tl.order))
	}
	t.Logf("%d new connections, %d started while no agent ran; the restarted agent was started %s after the kill",
		len(all), whileDown, up.Sub(killed).Round(time.Millisecond))
	res.print(t)
	if failOpen {
		fmt.Printf("fault %s: unpoliced_window_ms=%d unpoliced_new=%d unpoliced_new_denied_by_policy=%d\n",
			name, back.Sub(killed).Milliseconds(), unpoliced, unpolicedDenied)
		if unpoliced == 0 {
			t.Errorf("fail-open: no new flow passed while the agent was down")
		}
	} else if unpoliced > 0 {
		t.Errorf("fail-closed: %d new connections started while no agent ran completed before it was back", unpoliced)
	}
	if res.cut != 0 {
		t.Errorf("%d established connections cut", res.cut)
	}
	if whileDown == 0 {
		t.Errorf("no new connection was attempted while the agent was down")
	}
	if res.recoveredMS > 30000 {
		t.Errorf("decisions resumed only %d ms after the restart", res.recoveredMS)
	}
}

// testFaultQueueOverflow: a burst of raw SYNs far larger than the queue
// (--queue-len 4): the agent survives, the kernel's drops are in the
// metrics and the agent's log, nothing denied gets through (fail-closed),
// and every burst packet is either decided or counted as dropped.
func testFaultQueueOverflow(t *testing.T, bin string) {
	const burst = 600
	r := startFaultRig(t, bin, "qo", func(string) []string { return []string{"--queue-len", "4", "--rules-check", "200ms"} })
	est := r.openEstablished(faultEstablished)
	const q = `{queue="100"}`
	before := r.settledMetrics()
	stopRecv := r.countSynAcks()
	sent := r.sendRawSYNs(burst, func(i int) (netip.Addr, uint16, []byte) {
		dst := r.allow.addr
		if i%2 == 0 {
			dst = r.deny.addr
		}
		return dst, 80, nil
	})
	ended := time.Now()
	// Let the queue drain and SYN-ACKs in flight arrive, then account for
	// the burst alone.
	time.Sleep(time.Second)
	fromDenied, fromAllowed := stopRecv()
	mid := r.metrics()
	delta := func(a, b map[string]float64, k string) int { return int(b[k] - a[k]) }
	dropped := delta(before, mid, "nfqpolicy_queue_dropped_total"+q) + delta(before, mid, "nfqpolicy_queue_user_dropped_total"+q)
	allowV, denyV := `nfqpolicy_verdicts_total{mode="enforce",verdict="allow"}`, `nfqpolicy_verdicts_total{mode="enforce",verdict="deny"}`
	decided := delta(before, mid, allowV) + delta(before, mid, denyV)
	burstDenied := delta(before, mid, denyV)

	tr := r.startTraffic(8, 10*time.Millisecond)
	time.Sleep(time.Second)
	all := tr.halt()
	res := faultResult{name: "queue-overflow", cut: est.check(), recoveredMS: recoveredMS(all, ended)}
	res.letThrough = fromDenied[0]
	res.refused = sent/2 - fromAllowed[0] // allowed SYNs that got no answer: dropped with the overflow
	for _, a := range all {
		switch {
		case a.deny && a.o.allowed:
			res.letThrough++
		case !a.deny && !a.o.allowed:
			res.refused++
		}
	}
	res.lostUnrep = r.lostUnreported(all, burstDenied)
	t.Logf("burst of %d SYNs (queue length 4): %d decided by the agent, %d dropped by the kernel and counted in the metrics; %d SYN-ACKs from the allowed pod, %d from the denied one; then %d new connections, all decided correctly: %v",
		sent, decided, dropped, fromAllowed[0], fromDenied[0], len(all), res.refused == sent/2-fromAllowed[0])
	res.print(t)
	if dropped == 0 {
		t.Errorf("no queue drop counted: the burst did not overflow the queue")
	}
	if decided+dropped != sent {
		t.Errorf("decided (%d) + dropped (%d) = %d, want every burst packet (%d) accounted for", decided, dropped, decided+dropped, sent)
	}
	if log := readFileString(r.agents.agents[0].logPath); !strings.Contains(log, "could not queue new flows' packets") {
		t.Errorf("the agent's log does not report the queue drops")
	}
	if err := r.agents.alive(); err != nil {
		t.Error(err)
	}
	if res.cut != 0 {
		t.Errorf("%d established connections cut", res.cut)
	}
}

// settledMetrics reads /metrics once the verdict counters stopped moving:
// the agent counts a verdict after sending it, so a connection it let
// through may be up before its verdict is counted, and a count taken then
// would put that verdict into the next window.
func (r *faultRig) settledMetrics() map[string]float64 {
	r.t.Helper()
	verdicts := func(m map[string]float64) float64 {
		return m[`nfqpolicy_verdicts_total{mode="enforce",verdict="allow"}`] + m[`nfqpolicy_verdicts_total{mode="enforce",verdict="deny"}`]
	}
	m := r.metrics()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		next := r.metrics()
		if verdicts(next) == verdicts(m) {
			return next
		}
		m = next
	}
	r.t.Fatalf("verdict counters still moving after 10s")
	return nil
}

func readFileString(path string) string {
	data, _ := os.ReadFile(path)
	return string(data)
}

// sendRawSYNs sends n crafted packets from y/c on a raw socket as fast as
// it can: pick gives the destination, port and, if not nil, the whole
// packet (for malformed ones). Source ports run from 20000 up, one per
// packet. It returns how many were sent.
func (r *faultRig) sendRawSYNs(n int, pick func(i int) (netip.Addr, uint16, []byte)) int {
	r.t.Helper()
	ns := r.top.nsOf(r.from.place)
	var fd int
	if err := ns.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		return err
	}); err != nil {
		r.t.Fatalf("raw socket: %v", err)
	}
	defer unix.Close(fd)
	sent := 0
	for i := range n {
		dst, port, pkt := pick(i)
		if pkt == nil {
			pkt = synPacket(r.t, r.from.addr, dst, uint16(20000+i), port)
		}
		if err := unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
			if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) {
				time.Sleep(time.Millisecond)
				continue
			}
			r.t.Fatalf("send packet %d: %v", i, err)
		}
		sent++
	}
	return sent
}

func synPacket(t testing.TB, src, dst netip.Addr, sport, dport uint16) []byte {
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), Id: sport}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), SYN: true, Window: 1024, Seq: uint32(sport) << 8}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, tcp); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// countSynAcks counts, in y/c's namespace, SYN-ACKs to the raw packets'
// source ports (20000-29999) from the denied and the allowed pod; stop
// returns the counts [denied], [allowed].
func (r *faultRig) countSynAcks() (stop func() (fromDenied, fromAllowed [1]int)) {
	r.t.Helper()
	ns := r.top.nsOf(r.from.place)
	var fd int
	if err := ns.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		return err
	}); err != nil {
		r.t.Fatalf("raw receive socket: %v", err)
	}
	f := os.NewFile(uintptr(fd), "synack")
	var denied, allowed atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			_ = f.SetReadDeadline(time.Now().Add(time.Hour))
			n, err := f.Read(buf)
			if err != nil {
				return
			}
			p := buf[:n]
			if len(p) < 40 {
				continue
			}
			ihl := int(p[0]&0x0f) * 4
			if len(p) < ihl+14 {
				continue
			}
			src := netip.AddrFrom4([4]byte(p[12:16]))
			tcp := p[ihl:]
			dport := binary.BigEndian.Uint16(tcp[2:4])
			if dport < 20000 || dport >= 30000 || tcp[13]&0x12 != 0x12 {
				continue
			}
			switch src {
			case r.deny.addr:
				denied.Add(1)
			case r.allow.addr:
				allowed.Add(1)
			}
		}
	}()
	return func() (d, a [1]int) {
		f.Close()
		<-done
		return [1]int{int(denied.Load())}, [1]int{int(allowed.Load())}
	}
}

// nodeExec runs a shell command inside the node namespace (where the
// agent's rules are), as someone on the node would.
func (r *faultRig) nodeExec(script string) {
	r.t.Helper()
	ns := r.agents.agents[0].ns
	if out, err := exec.Command("ip", "netns", "exec", ns.Name, "sh", "-c", script).CombinedOutput(); err != nil {
		r.t.Fatalf("%s in %s: %v: %s", script, ns.Name, err, out)
	}
}

// counter reads a number from /debug/counters.
func (r *faultRig) counter(name string) float64 {
	v, _ := r.counters()[name].(float64)
	return v
}

// firstDenialMS is the time from `from` to the end of the first attempt to
// the denied destination, started after it, that the agent refused: the
// first moment policing is proven back. -1 if none.
func firstDenialMS(all []attempt, from time.Time) (int, time.Time) {
	var first attempt
	for _, a := range all {
		if a.deny && a.o.detail == "refused" && !a.start.Before(from) && (first.end.IsZero() || a.end.Before(first.end)) {
			first = a
		}
	}
	if first.end.IsZero() {
		return -1, time.Time{}
	}
	return int(first.end.Sub(from).Milliseconds()), first.start
}

// testFaultRulesFlushed: someone flushes the filter table and destroys
// the ipsets on the node (a firewall reload). The agent's rules check
// notices within its interval and restores them; established flows keep
// echoing; the unpoliced window is printed on the second line.
func testFaultRulesFlushed(t *testing.T, bin string) {
	r := startFaultRig(t, bin, "rf", nil) // --rules-check 1s, the default
	est := r.openEstablished(faultEstablished)
	tr := r.startTraffic(16, 5*time.Millisecond)
	time.Sleep(time.Second)
	restored := r.counter("rules_restored")
	flushStart := time.Now()
	r.nodeExec("iptables -F; ip6tables -F 2>/dev/null; ipset destroy")
	// The fault is complete when the command returns: connections started
	// earlier may still have met the rules.
	flushed := time.Now()
	deadline := time.Now().Add(30 * time.Second)
	for r.counter("rules_restored") == restored {
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not restore its rules within 30s; its log:\n%s", r.agents.agents[0].logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cutAfter := est.check()
	time.Sleep(time.Second)
	all := tr.halt()
	res := faultResult{name: "rules-flushed", cut: cutAfter}
	var back time.Time
	res.recoveredMS, back = firstDenialMS(all, flushed)
	var unpoliced int
	for _, a := range all {
		switch {
		case a.deny && a.o.allowed && !a.start.Before(flushStart) && a.start.Before(back):
			unpoliced++
		case a.deny && a.o.allowed:
			res.letThrough++
		case !a.deny && !a.o.allowed:
			res.refused++
		}
	}
	res.lostUnrep = r.lostUnreported(all, 0)
	cs := r.counters()
	t.Logf("agent: rule_checks %v, rules_restored %v, last_restore_ms %v; agent log: %s", cs["rule_checks"], cs["rules_restored"], cs["last_restore_ms"], grepLines(r.agents.agents[0].logPath, "restor"))
	res.print(t)
	fmt.Printf("fault rules-flushed: unpoliced_window_ms=%d unpoliced_new_denied_by_policy=%d\n", back.Sub(flushStart).Milliseconds(), unpoliced)
	if res.cut != 0 {
		t.Errorf("%d established connections cut", res.cut)
	}
}

// grepLines returns the lines of a file containing s, joined.
func grepLines(path, s string) string {
	var out []string
	for _, l := range strings.Split(readFileString(path), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// testFaultRestartKeepsEvidence: ten denied flows per run over three runs
// of the agent (stopped, then killed -9 between them): the flow log keeps
// all thirty records, each run's with its own run id and sequence from 1;
// the capture keeps all thirty packets in three sections named by run.
func testFaultRestartKeepsEvidence(t *testing.T, bin string) {
	r := startFaultRig(t, bin, "rk", nil)
	res := faultResult{name: "restart-keeps-evidence"}
	total := 0
	deny := func() {
		for range 10 {
			o := r.pr.once(context.Background(), r.from, r.deny, 80, "TCP")
			if o.allowed {
				res.letThrough++
			}
		}
		total += 10
		deadline := time.Now().Add(10 * time.Second)
		for {
			tl, pk := r.tallyFlowLog(), len(readCaptureFile(t, r.pcap, nil))
			if tl.records >= total && pk >= total {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("after %d denied flows: %d records, %d captured packets", total, tl.records, pk)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	deny()
	r.stop()
	r.restart()
	r.waitReady()
	deny()
	r.kill()
	up := r.restart()
	var all []attempt
	tr := r.startTraffic(16, 5*time.Millisecond)
	r.waitReady()
	time.Sleep(300 * time.Millisecond)
	all = tr.halt()
	res.recoveredMS, _ = firstDenialMS(all, up)
	deny()
	r.stop()

	tl := r.tallyFlowLog()
	var sections []string
	pkts := readCaptureFile(t, r.pcap, &sections)
	captured := 0
	for _, p := range pkts {
		if p == r.deny.addr {
			captured++
		}
	}
	extra := 0
	for _, a := range all {
		if a.deny && a.o.detail == "refused" {
			extra++
		}
	}
	res.lostUnrep = max(0, total+extra-tl.records-tl.reported) + max(0, total+extra-captured)
	t.Logf("flow log: %d records of denied flows in runs %v; capture: %d packets of denied flows in sections %q", tl.records, tl.runs, captured, sections)
	res.print(t)
	if len(tl.runs) != 3 {
		t.Errorf("flow log runs %v, want three distinct run ids", tl.runs)
	}
	for run, seqs := range tl.seqs {
		for i, s := range seqs {
			if s != uint64(i+1) {
				t.Errorf("run %s: seqs %v, want 1, 2, ... (a new run starts again)", run, seqs)
				break
			}
		}
	}
	if len(sections) != 3 {
		t.Errorf("capture sections %q, want three (one per run)", sections)
	}
	for run := range tl.runs {
		found := false
		for _, s := range sections {
			found = found || strings.Contains(s, "run "+run)
		}
		if !found {
			t.Errorf("no capture section names run %s", run)
		}
	}
}

// readCaptureFile reads a pcapng file (all sections) and returns each
// packet's destination address; with sections it also collects every
// section's header comment. A file that ends in a partial block fails the
// test: the capture must never leave one.
func readCaptureFile(t *testing.T, path string, sections *[]string) []netip.Addr {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	opts := pcapgo.DefaultNgReaderOptions
	if sections != nil {
		opts.SectionEndCallback = func(_ []pcapgo.NgInterface, si pcapgo.NgSectionInfo) { *sections = append(*sections, si.Comment) }
	}
	rd, err := pcapgo.NewNgReader(f, opts)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil // header not flushed yet
		}
		t.Fatalf("%s: %v", path, err)
	}
	var out []netip.Addr
	for {
		data, _, err := rd.ReadPacketData()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s after %d packets: %v", path, len(out), err)
		}
		if len(data) >= 20 {
			out = append(out, netip.AddrFrom4([4]byte(data[16:20])))
		}
	}
	if sections != nil {
		*sections = append(*sections, rd.SectionInfo().Comment)
	}
	return out
}

// captureLoss reads the loss a capture file reports: the sum of its
// packets' drop counts and its last interface statistics' drop total.
func captureLoss(t *testing.T, path string) (packets int, dropCounts, statsDropped uint64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rd, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	for {
		_, _, opts, err := rd.ReadPacketDataWithOptions()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s after %d packets: %v (a partial or corrupt block)", path, packets, err)
		}
		packets++
		if opts.DropCount != nil {
			dropCounts += *opts.DropCount
		}
	}
	if intf, err := rd.Interface(0); err == nil {
		statsDropped = intf.Statistics.PacketsDropped
	}
	return packets, dropCounts, statsDropped
}

// testFaultDiskFull: the flow log (every flow) and the capture (every
// packet) on a 512 KiB tmpfs that fills up: connections go on being
// decided, every record and packet that does not fit is counted and
// reported, both files stay whole (no partial line or block), and
// writing resumes once space returns.
func testFaultDiskFull(t *testing.T, bin string) {
	var disk string
	r := startFaultRig(t, bin, "df", func(dir string) []string {
		disk = filepath.Join(dir, "disk")
		if err := os.Mkdir(disk, 0o700); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "nfqp-faults", disk).CombinedOutput(); err != nil {
			t.Skipf("SKIP KERNEL TEST: cannot mount a tmpfs: %v: %s", err, out)
		}
		// Registered before the agent's stop, so it runs after it.
		t.Cleanup(func() {
			if out, err := exec.Command("umount", disk).CombinedOutput(); err != nil {
				t.Logf("umount %s: %v: %s; detaching it", disk, err, out)
				if out, err := exec.Command("umount", "-l", disk).CombinedOutput(); err != nil {
					t.Errorf("umount -l %s: %v: %s", disk, err, out)
				}
			}
		})
		return []string{"--flow-log", filepath.Join(disk, "flows.jsonl"), "--flow-log-select", "all",
			"--capture", filepath.Join(disk, "capture.pcapng"), "--capture-select", "all"}
	})
	r.flows, r.pcap = filepath.Join(disk, "flows.jsonl"), filepath.Join(disk, "capture.pcapng")
	est := r.openEstablished(10)

	tr := r.startTraffic(16, 5*time.Millisecond)
	time.Sleep(time.Second)
	// Fill the disk but for 16 KiB: a few dozen records.
	var st unix.Statfs_t
	if err := unix.Statfs(disk, &st); err != nil {
		t.Fatal(err)
	}
	filler := filepath.Join(disk, "filler")
	free := int64(st.Bavail)*st.Bsize - 16<<10
	if err := os.WriteFile(filler, make([]byte, max(free, 0)), 0o600); err != nil && !errors.Is(err, syscall.ENOSPC) {
		t.Fatal(err)
	}
	full := time.Now()
	time.Sleep(3 * time.Second)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	time.Sleep(2 * time.Second)
	all := tr.halt()
	cut := est.check()

	// Settle: every decided flow written or lost.
	allowV, denyV := `nfqpolicy_verdicts_total{mode="enforce",verdict="allow"}`, `nfqpolicy_verdicts_total{mode="enforce",verdict="deny"}`
	var m map[string]float64
	deadline := time.Now().Add(20 * time.Second)
	for {
		m = r.metrics()
		decided := m[allowV] + m[denyV]
		fl := m[`nfqpolicy_flowlog_records_total{result="written"}`] + m[`nfqpolicy_flowlog_records_total{result="lost"}`]
		cp := m[`nfqpolicy_capture_packets_total{result="written"}`] + m[`nfqpolicy_capture_packets_total{result="lost"}`]
		if (fl == decided && cp == decided) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	decided := int(m[allowV] + m[denyV])
	r.stop() // flushes, writes the final summary and capture statistics

	var records, reported, afterFreed int
	for _, l := range strings.SplitAfter(readFileString(r.flows), "\n") {
		if l == "" {
			continue
		}
		var e flowlog.Entry
		if !strings.HasSuffix(l, "\n") || json.Unmarshal([]byte(l), &e) != nil {
			t.Errorf("flow log line %q is partial or not JSON", l)
			continue
		}
		reported += int(e.Lost)
		if !e.IsSummary() {
			records++
			if e.Time.After(freed) {
				afterFreed++
			}
		}
	}
	pkts, dropCounts, statsDropped := captureLoss(t, r.pcap)
	capReported := max(int(dropCounts), int(statsDropped))
	flowUnrep := max(0, decided-records-reported)
	capUnrep := max(0, decided-pkts-capReported)

	res := faultResult{name: "disk-full", cut: cut, recoveredMS: recoveredMS(all, freed), lostUnrep: flowUnrep + capUnrep}
	var before, during int
	for _, a := range all {
		switch {
		case a.deny && a.o.allowed:
			res.letThrough++
		case !a.deny && !a.o.allowed:
			res.refused++
		}
		if a.start.Before(full) {
			before++
		} else if a.start.Before(freed) {
			during++
		}
	}
	t.Logf("%d flows decided; flow log: %d records (%d after space returned), %d reported lost (metrics: lost %v); capture: %d packets, %d reported lost on later packets, %d in the final statistics (metrics: lost %v)",
		decided, records, afterFreed, reported, m[`nfqpolicy_flowlog_records_total{result="lost"}`], pkts, dropCounts, statsDropped, m[`nfqpolicy_capture_packets_total{result="lost"}`])
	t.Logf("new connections per second: %.0f before the disk filled, %.0f while it was full", float64(before)/time.Second.Seconds(), float64(during)/(3*time.Second).Seconds())
	res.print(t)
	if reported == 0 || capReported == 0 {
		t.Errorf("nothing reported lost: the disk did not fill (flow log %d, capture %d)", reported, capReported)
	}
	if afterFreed == 0 {
		t.Errorf("no flow record written after space returned")
	}
	if res.refused != 0 {
		t.Errorf("%d allowed connections failed while the disk was full", res.refused)
	}
}

// testFaultMalformedFlood: malformed, truncated and fragmented first
// packets from raw sockets in y/c, mixed with good connections: no crash,
// the good ones decided as usual, no bad packet reaches the denied pod,
// the agent's memory stays bounded, and every bad packet is accounted
// for: dropped and counted by our INVALID rule
// (nfqpolicy_invalid_dropped_total), queued and decided by the agent (a
// flow-log record: the row logs every flow), or dropped by the kernel
// before any filter rule sees it (IP header errors, and fragments held for
// a reassembly that never completes), counted by the node's own IP
// statistics.
func testFaultMalformedFlood(t *testing.T, bin string) {
	const rounds = 400
	r := startFaultRig(t, bin, "mf", func(string) []string {
		return []string{"--flow-log-select", "all", "--rules-check", "200ms"}
	})
	est := r.openEstablished(10)
	rss := func() int {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.agents.agents[0].cmd.Process.Pid))
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
				return n
			}
		}
		return 0
	}
	const invalidMetric = "nfqpolicy_invalid_dropped_total"
	before, rss0, m0, ip0 := r.counters(), rss(), r.metrics(), r.nodeIPStats()
	if _, ok := m0[invalidMetric]; !ok {
		t.Fatalf("/metrics has no %s", invalidMetric)
	}
	synAcks := r.countSynAcks()
	arrived := r.countArrivals(r.deny)
	tr := r.startTraffic(8, 10*time.Millisecond)
	kinds := malformedKinds(r.from.addr)
	started := time.Now()
	sent := r.sendRawSYNs(rounds*len(kinds), func(i int) (netip.Addr, uint16, []byte) {
		dst := r.allow.addr
		if i%2 == 0 {
			dst = r.deny.addr
		}
		return dst, 80, kinds[i%len(kinds)].build(dst, uint16(20000+i%10000))
	})
	time.Sleep(time.Second)
	all := tr.halt()
	fromDenied, _ := synAcks()
	atDenied := arrived()
	// The INVALID counter is read at each rules check (200ms here): wait
	// for two after the flood.
	for checks, deadline := r.counter("rule_checks"), time.Now().Add(10*time.Second); r.counter("rule_checks") < checks+2 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	after, rss1, m1, ip1 := r.counters(), rss(), r.metrics(), r.nodeIPStats()
	total := func(m map[string]any, k string) float64 {
		v, _ := m["total"].(map[string]any)[k].(float64)
		return v
	}
	res := faultResult{name: "malformed-flood", cut: est.check(), recoveredMS: recoveredMS(all, started)}
	// A bad packet that reached the denied pod got through as much as a
	// connection would have.
	res.letThrough = fromDenied[0] + atDenied
	for _, a := range all {
		switch {
		case a.deny && a.o.allowed:
			res.letThrough++
		case !a.deny && !a.o.allowed:
			res.refused++
		}
	}
	decidedDeny := int(total(after, "denied") - total(before, "denied"))
	decided := decidedDeny + int(total(after, "allowed")-total(before, "allowed"))
	// Every decision, good or bad packet, is a flow-log record (the row
	// logs every flow, unlimited); the bad ones come from y/c's raw
	// socket, source ports below the good connections' (30000 and up) or
	// no port at all.
	var tl flowLogTally
	var bad badRecords
	deadline := time.Now().Add(10 * time.Second)
	for {
		tl = r.tallyFlowLog()
		bad = r.badRecords()
		if bad.all+tl.reported >= decided || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	res.lostUnrep = max(0, decidedDeny-tl.denied-tl.reported)
	invalid := int(m1[invalidMetric] - m0[invalidMetric])
	hdrErrors, fragments := ip1["InHdrErrors"]-ip0["InHdrErrors"], ip1["ReasmReqds"]-ip0["ReasmReqds"]
	var names []string
	for _, k := range kinds {
		names = append(names, k.name)
	}
	t.Logf("sent %d bad packets (%s) in %d rounds with %d good connections; the agent decided %d flows in all (%d denied, %v malformed), %d of them bad packets (%d denied); our INVALID rule dropped %d; the kernel dropped %d with IP header errors and holds %d fragments; %d bad packets reached the denied pod's namespace; %d records of denied flows in the log, %d reported lost; RSS %d -> %d KiB",
		sent, strings.Join(names, ", "), rounds, len(all), decided, decidedDeny, total(after, "malformed")-total(before, "malformed"),
		bad.all, bad.denied, invalid, hdrErrors, fragments, atDenied, tl.denied, tl.reported, rss0, rss1)
	res.print(t)
	fmt.Printf("fault malformed-flood: bad_sent=%d invalid_dropped_counted=%d bad_decided_by_agent=%d kernel_ip_header_errors=%d kernel_fragments_held=%d bad_unaccounted=%d bad_reaching_denied_pod=%d rss_kib_before=%d rss_kib_after=%d\n",
		sent, invalid, bad.all, hdrErrors, fragments, sent-invalid-bad.all-hdrErrors-fragments, atDenied, rss0, rss1)
	if atDenied != 0 {
		t.Errorf("%d bad packets reached the denied pod's namespace", atDenied)
	}
	if invalid == 0 {
		t.Errorf("%s did not grow: no INVALID packet dropped", invalidMetric)
	}
	if got := invalid + bad.all + hdrErrors + fragments; got != sent || tl.reported != 0 {
		t.Errorf("bad packets: %d dropped as INVALID + %d decided + %d IP header errors + %d fragments held = %d, want every one sent (%d), with no flow-log record lost (%d)",
			invalid, bad.all, hdrErrors, fragments, got, sent, tl.reported)
	}
	if log := readFileString(r.agents.agents[0].logPath); !strings.Contains(log, "conntrack marks INVALID") {
		t.Errorf("the agent's log does not report the INVALID drops")
	}
	if err := r.agents.alive(); err != nil {
		t.Error(err)
	}
	if rss1 > rss0+64<<10 {
		t.Errorf("the agent's RSS grew from %d to %d KiB", rss0, rss1)
	}
	if res.refused != 0 {
		t.Errorf("%d good allowed connections failed during the flood", res.refused)
	}
}

// badRecords counts the flow-log records of the raw sockets' packets from
// y/c (source port below 30000: the raw packets use 20000-29999, the good
// connections 30000 and up; or no port, a protocol without ports or a
// header that did not decode).
type badRecords struct{ all, denied int }

func (r *faultRig) badRecords() badRecords {
	r.t.Helper()
	var n badRecords
	data := readFileString(r.flows)
	for line := range strings.Lines(data) {
		var e flowlog.Entry
		if json.Unmarshal([]byte(line), &e) != nil || e.IsSummary() || e.Src != r.from.addr.String() || e.SrcPort >= estFirstPort {
			continue
		}
		n.all++
		if e.Verdict == "deny" {
			n.denied++
		}
	}
	return n
}

// nodeIPStats reads the node namespace's IP statistics (/proc/net/snmp,
// "Ip:" lines): packets the kernel drops before any filter rule.
func (r *faultRig) nodeIPStats() map[string]int {
	r.t.Helper()
	out, err := exec.Command("ip", "netns", "exec", r.agents.agents[0].ns.Name, "cat", "/proc/net/snmp").Output()
	if err != nil {
		r.t.Fatalf("node IP statistics: %v", err)
	}
	var names []string
	stats := map[string]int{}
	for line := range strings.Lines(string(out)) {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "Ip: ")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if names == nil {
			names = f
			continue
		}
		for i, v := range f {
			if i < len(names) {
				stats[names[i]], _ = strconv.Atoi(v)
			}
		}
	}
	if len(stats) == 0 {
		r.t.Fatalf("no Ip: statistics in the node's /proc/net/snmp")
	}
	return stats
}

// countArrivals counts the bad packets (source ports 20000-29999, or
// protocol 253) from y/c that reach dst's namespace, on raw sockets there
// (they see a packet before its protocol's own checks discard it).
func (r *faultRig) countArrivals(dst endpoint) (stop func() int) {
	r.t.Helper()
	ns := r.top.nsOf(dst.place)
	var files []*os.File
	for _, proto := range []int{unix.IPPROTO_TCP, unix.IPPROTO_UDP, 253} {
		var fd int
		if err := ns.Do(func() (err error) {
			fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
			return err
		}); err != nil {
			r.t.Fatalf("raw socket in %s: %v", ns.Name, err)
		}
		files = append(files, os.NewFile(uintptr(fd), "arrivals"))
	}
	var n atomic.Int64
	var wg sync.WaitGroup
	for _, f := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 2048)
			for {
				k, err := f.Read(buf)
				if err != nil {
					return
				}
				p := buf[:k]
				if len(p) < 20 || netip.AddrFrom4([4]byte(p[12:16])) != r.from.addr {
					continue
				}
				ihl := int(p[0]&0x0f) * 4
				if p[9] == 253 {
					n.Add(1)
					continue
				}
				if len(p) >= ihl+2 {
					if sport := binary.BigEndian.Uint16(p[ihl : ihl+2]); sport >= 20000 && sport < 30000 {
						n.Add(1)
					}
				}
			}
		}()
	}
	return func() int {
		for _, f := range files {
			f.Close()
		}
		wg.Wait()
		return int(n.Load())
	}
}

// malformedKind builds one kind of bad first packet to dst:80.
type malformedKind struct {
	name  string
	build func(dst netip.Addr, sport uint16) []byte
}

func malformedKinds(src netip.Addr) []malformedKind {
	ipHeader := func(dst netip.Addr, proto byte, payload int, fragOff uint16) []byte {
		h := make([]byte, 20)
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:4], uint16(20+payload))
		binary.BigEndian.PutUint16(h[6:8], fragOff)
		h[8], h[9] = 64, proto
		copy(h[12:16], src.AsSlice())
		copy(h[16:20], dst.AsSlice())
		return h
	}
	syn := func(dst netip.Addr, sport uint16) []byte { return synPacket(nil, src, dst, sport, 80) }
	return []malformedKind{
		{"truncated TCP header", func(dst netip.Addr, sport uint16) []byte {
			return append(ipHeader(dst, 6, 8, 0), syn(dst, sport)[20:28]...)
		}},
		{"TCP data offset 2", func(dst netip.Addr, sport uint16) []byte {
			p := syn(dst, sport)
			p[32] = 2 << 4
			return p
		}},
		{"bad TCP checksum", func(dst netip.Addr, sport uint16) []byte {
			p := syn(dst, sport)
			p[36] ^= 0xff
			return p
		}},
		{"first fragment of 8 bytes, never completed", func(dst netip.Addr, sport uint16) []byte {
			return append(ipHeader(dst, 6, 8, 0x2000), syn(dst, sport)[20:28]...)
		}},
		{"lone later fragment", func(dst netip.Addr, sport uint16) []byte {
			return append(ipHeader(dst, 6, 16, 3), syn(dst, sport)[20:36]...)
		}},
		{"IP options of garbage", func(dst netip.Addr, sport uint16) []byte {
			p := syn(dst, sport)
			h := append(append([]byte(nil), p[:20]...), 0x44, 12, 5, 0x7f, 1, 2, 3, 4, 5, 6, 7, 8, 1, 1, 1, 0)
			h[0] = 0x49
			return append(h, p[20:]...)
		}},
		{"unknown protocol 253", func(dst netip.Addr, sport uint16) []byte {
			return append(ipHeader(dst, 253, 12, 0), 0xde, 0xad, 0xbe, 0xef, byte(sport>>8), byte(sport), 0, 0, 0, 0, 0, 0)
		}},
		{"UDP length beyond the packet", func(dst netip.Addr, sport uint16) []byte {
			u := []byte{byte(sport >> 8), byte(sport), 0, 80, 0x05, 0xdc, 0, 0}
			return append(ipHeader(dst, 17, 8, 0), u...)
		}},
		{"SYN+FIN", func(dst netip.Addr, sport uint16) []byte {
			p := syn(dst, sport)
			p[33] |= 0x01
			return p
		}},
	}
}
