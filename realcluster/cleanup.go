package realcluster

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nfqpolicy/nfqpolicy/internal/netns"
)

// NamePrefix starts every cluster's name, and so every namespace, cgroup
// and directory it makes: NamePrefix+"<pid>-<n>", pid being the process
// that owns the cluster, so a sweep can tell a dead run's leftovers apart.
const NamePrefix = "nfqpk-"

// BaseDir holds one directory per cluster (named like the cluster) plus
// the saved kernel settings; $NFQPOLICY_CLUSTER_DIR overrides it.
func BaseDir() string {
	if d := os.Getenv("NFQPOLICY_CLUSTER_DIR"); d != "" {
		return d
	}
	return "/var/lib/nfqpolicy-realcluster"
}

// globalSysctls are the machine-wide settings kubelet changes at start
// (pkg/kubelet/cm setupKernelTunables); they are saved before the first
// cluster starts and restored when the last one is gone.
var globalSysctls = []string{
	"vm/overcommit_memory",
	"vm/panic_on_oom",
	"kernel/panic",
	"kernel/panic_on_oops",
	"kernel/keys/root_maxkeys",
	"kernel/keys/root_maxbytes",
}

const sysctlFile = "sysctl-saved"

// hostPaths are the host files and folders that exist only because a
// cluster ran: the nfqpolicy DaemonSet's hostPath volumes (FileOrCreate,
// DirectoryOrCreate), and paths kubelet, the shims and mount(8) hard-code
// (/var/lib/kubelet/device-plugins, /var/log/containers,
// /run/containerd/s, /run/mount/utab, libcni's /var/lib/cni cache). Those
// absent before the first cluster started are removed when the last one is
// gone. (Two clusters alive at once share them, and the node-named folders
// under /var/log/nfqpolicy.)
var hostPaths = []string{"/run/xtables.lock", "/var/log/nfqpolicy", "/var/log/containers", "/var/lib/kubelet", "/var/lib/cni", "/run/containerd", "/run/mount"}

// lockBase serializes saving and restoring sysctls between harness
// processes.
func lockBase(base string) (func(), error) {
	if err := os.MkdirAll(base, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(base, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { _ = unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}

// saveSysctls records the global settings unless an earlier live cluster
// already did (its record holds the machine's values; ours would hold
// kubelet's).
func saveSysctls(base string) error {
	unlock, err := lockBase(base)
	if err != nil {
		return fmt.Errorf("save sysctls: %w", err)
	}
	defer unlock()
	path := filepath.Join(base, sysctlFile)
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	var b strings.Builder
	for _, k := range globalSysctls {
		v, err := os.ReadFile("/proc/sys/" + k)
		if err != nil {
			continue // absent on this kernel: kubelet will not set it either
		}
		fmt.Fprintf(&b, "%s=%s\n", k, strings.TrimSpace(string(v)))
	}
	for _, p := range hostPaths {
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			fmt.Fprintf(&b, "absent=%s\n", p)
		}
	}
	if err := os.WriteFile(path+".tmp", []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("save sysctls: %w", err)
	}
	return os.Rename(path+".tmp", path)
}

// restoreSysctls writes the saved settings back once no live cluster but
// self remains, and forgets them.
func restoreSysctls(base, self string) error {
	unlock, err := lockBase(base)
	if err != nil {
		return fmt.Errorf("restore sysctls: %w", err)
	}
	defer unlock()
	if others := liveClusters(base, self); len(others) > 0 {
		return nil
	}
	path := filepath.Join(base, sysctlFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("restore sysctls: %w", err)
	}
	var errs []error
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if k == "absent" && slices.Contains(hostPaths, v) {
			if err := os.RemoveAll(v); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if !ok || !slices.Contains(globalSysctls, k) {
			continue
		}
		if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore %s=%s: %w", k, v, err))
		}
	}
	if len(errs) == 0 {
		errs = append(errs, os.Remove(path))
	}
	return errors.Join(errs...)
}

// liveClusters lists the cluster directories in base whose owner runs,
// except self.
func liveClusters(base, self string) []string {
	entries, _ := os.ReadDir(base)
	var out []string
	for _, e := range entries {
		if !e.IsDir() || e.Name() == self {
			continue
		}
		if pid, ok := netns.Owner(NamePrefix, e.Name()); ok && netns.Alive(pid) {
			out = append(out, e.Name())
		}
	}
	return out
}

// cgroupMounts lists the mount points of every cgroup hierarchy (each v1
// controller, named ones, and the unified one): kubelet and runc create a
// node's cgroupRoot tree in each of them.
func cgroupMounts() ([]string, error) {
	mounts, err := mountInfo()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range mounts {
		if m.fstype == "cgroup" || m.fstype == "cgroup2" {
			out = append(out, m.point)
		}
	}
	return out, nil
}

// makeCgroupRoot creates root in every hierarchy: kubelet refuses a
// cgroupRoot that does not exist.
func makeCgroupRoot(root string) error {
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		if err := os.MkdirAll(filepath.Join(m, root), 0o755); err != nil {
			return fmt.Errorf("cgroup %s in %s: %w", root, m, err)
		}
	}
	return nil
}

// killCgroupTree SIGKILLs every process in root's subtree of every
// hierarchy until none is left (or 10 s pass) and removes the subtree.
func killCgroupTree(root string) error {
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	var dirs []string
	for _, m := range mounts {
		top := filepath.Join(m, root)
		_ = filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	// Deepest first, so that every rmdir finds its children gone.
	slices.SortFunc(dirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := 0
		for _, d := range dirs {
			data, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(data)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
					_ = syscall.Kill(pid, syscall.SIGKILL)
					left++
				}
			}
		}
		if left == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	var errs []error
	for _, d := range dirs {
		var err error
		for range 50 {
			if err = unix.Rmdir(d); err == nil || errors.Is(err, unix.ENOENT) {
				err = nil
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

type mountEntry struct{ point, fstype string }

// mountInfo reads /proc/self/mountinfo.
func mountInfo() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// id parent major:minor root point options [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		if len(fields) < 7 {
			continue
		}
		sep := slices.Index(fields, "-")
		if sep < 0 || sep+1 >= len(fields) {
			continue
		}
		out = append(out, mountEntry{point: unescapeMount(fields[4]), fstype: fields[sep+1]})
	}
	return out, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a blank).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountUnder detaches every mount at or below dir (kubelet's volume
// tmpfs, containerd's overlays, shm and pod namespaces), deepest first,
// until none is left.
func unmountUnder(dir string) error {
	dir = filepath.Clean(dir)
	for range 10 {
		mounts, err := mountInfo()
		if err != nil {
			return err
		}
		var points []string
		for _, m := range mounts {
			if m.point == dir || strings.HasPrefix(m.point, dir+"/") {
				points = append(points, m.point)
			}
		}
		if len(points) == 0 {
			return nil
		}
		slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
		for _, p := range points {
			_ = unix.Unmount(p, unix.MNT_DETACH)
		}
	}
	return fmt.Errorf("mounts under %s survive 10 rounds of unmounting", dir)
}

// unixSocketsOf lists the paths of the unix sockets bound in pid's network
// namespace under prefix: the shims' sockets in /run/containerd/s, which a
// killed shim leaves behind.
func unixSocketsOf(pid int, prefix string) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/unix", pid))
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 8 && strings.HasPrefix(f[7], prefix) {
			out = append(out, f[7])
		}
	}
	return out
}

// removeContainerLogLinks removes kubelet's /var/log/containers symlinks
// that point into dir (that folder's name is fixed in kubelet).
func removeContainerLogLinks(dir string) {
	const logs = "/var/log/containers"
	entries, err := os.ReadDir(logs)
	if err != nil {
		return
	}
	for _, e := range entries {
		p := filepath.Join(logs, e.Name())
		if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, dir+"/") {
			_ = os.Remove(p)
		}
	}
}

// removeCNICache removes libcni's cached results for the cluster's
// networks (libcni keeps them in /var/lib/cni, named after the network).
func removeCNICache(name string) {
	for _, sub := range []string{"results"} {
		matches, _ := filepath.Glob(filepath.Join("/var/lib/cni", sub, name+"-*"))
		for _, m := range matches {
			_ = os.Remove(m)
		}
	}
}

// cleanupNamed removes everything a cluster named name with directory dir
// may have left, whether or not its processes still run: the processes in
// its namespaces and cgroups, every mount under dir, its namespaces, its
// cgroup trees, shim sockets, log links, CNI cache entries and dir itself,
// and restores the global sysctls when no other cluster lives.
func cleanupNamed(name, dir string) error {
	var errs []error
	// Shims live in the node namespaces; their sockets are in the shared
	// /run/containerd/s, which only the namespace's socket table ties to us.
	var sockets []string
	nsNames, _ := namespacesOf(name)
	for _, ns := range nsNames {
		for _, pid := range pidsIn(ns) {
			sockets = append(sockets, unixSocketsOf(pid, "/run/containerd/s/")...)
		}
	}
	for _, n := range nodeNames {
		if err := killCgroupTree(cgroupRootOf(name, n)); err != nil {
			errs = append(errs, err)
		}
	}
	// Deleting a namespace first kills what runs in it (containerd,
	// shims, kubelet, the control plane).
	for _, ns := range nsNames {
		if err := netns.Delete(ns); err != nil {
			errs = append(errs, err)
		}
	}
	for _, s := range sockets {
		_ = os.Remove(s)
	}
	if err := unmountUnder(dir); err != nil {
		errs = append(errs, err)
	}
	removeContainerLogLinks(dir)
	removeCNICache(name)
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
	}
	if err := restoreSysctls(filepath.Dir(dir), name); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// namespacesOf lists the named network namespaces of cluster name.
func namespacesOf(name string) ([]string, error) {
	entries, err := os.ReadDir(netns.Dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), name+"-") {
			out = append(out, e.Name())
		}
	}
	// Nodes before the underlay and the control plane, so that kubelets go
	// before the API server they report to.
	slices.SortFunc(out, func(a, b string) int { return strings.Compare(b, a) })
	return out, nil
}

// pidsIn lists the processes in a named network namespace.
func pidsIn(ns string) []int {
	// The bind mount shows the namespace's nsfs inode; compare it with
	// each process's.
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(netns.Dir, ns), &st); err != nil {
		return nil
	}
	procs, _ := os.ReadDir("/proc")
	var out []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		var ps unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &ps) == nil && ps.Ino == st.Ino && ps.Dev == st.Dev {
			out = append(out, pid)
		}
	}
	return out
}

// Sweep removes the leftovers of clusters whose owner process is dead (a
// run that was killed or crashed): their namespaces, processes, mounts,
// cgroups and directories, and restores the sysctls kubelet changed if no
// cluster lives. It returns the names it cleaned.
func Sweep() ([]string, error) {
	base := BaseDir()
	seen := map[string]bool{}
	entries, err := os.ReadDir(base)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("sweep %s: %w", base, err)
	}
	for _, e := range entries {
		if e.IsDir() {
			seen[e.Name()] = true
		}
	}
	// A namespace without its directory (killed between the two) counts too.
	if nss, err := os.ReadDir(netns.Dir); err == nil {
		for _, e := range nss {
			if pid, ok := netns.Owner(NamePrefix, e.Name()); ok {
				seen[clusterOfNS(e.Name(), pid)] = true
			}
		}
	}
	var cleaned []string
	var errs []error
	for name := range seen {
		pid, ok := netns.Owner(NamePrefix, name)
		if !ok || netns.Alive(pid) {
			continue
		}
		if err := cleanupNamed(name, filepath.Join(base, name)); err != nil {
			errs = append(errs, fmt.Errorf("sweep %s: %w", name, err))
		}
		cleaned = append(cleaned, name)
	}
	// A dead run may have left the saved sysctls with no cluster alive.
	if len(liveClusters(base, "")) == 0 {
		if err := restoreSysctls(base, ""); err != nil {
			errs = append(errs, err)
		}
	}
	slices.Sort(cleaned)
	return cleaned, errors.Join(errs...)
}

// clusterOfNS maps a namespace name (nfqpk-<pid>-<n>-<role>) to its
// cluster's name (nfqpk-<pid>-<n>).
func clusterOfNS(ns string, pid int) string {
	rest := strings.TrimPrefix(ns, NamePrefix+strconv.Itoa(pid)+"-")
	seq, _, _ := strings.Cut(rest, "-")
	return NamePrefix + strconv.Itoa(pid) + "-" + seq
}

// Leftovers lists what any cluster (live or dead) still holds on the
// machine: namespaces, cluster folders, mounts under BaseDir, cgroup
// trees, saved sysctls. Empty means the machine is as before.
func Leftovers() []string {
	var out []string
	if nss, err := os.ReadDir(netns.Dir); err == nil {
		for _, e := range nss {
			if strings.HasPrefix(e.Name(), NamePrefix) {
				out = append(out, "namespace "+e.Name())
			}
		}
	}
	base := BaseDir()
	if entries, err := os.ReadDir(base); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), NamePrefix) || e.Name() == sysctlFile {
				out = append(out, filepath.Join(base, e.Name()))
			}
		}
	}
	if mounts, err := mountInfo(); err == nil {
		for _, m := range mounts {
			if strings.HasPrefix(m.point, base+"/") {
				out = append(out, "mount "+m.point)
			}
		}
	}
	if cgs, err := cgroupMounts(); err == nil {
		for _, m := range cgs {
			matches, _ := filepath.Glob(filepath.Join(m, NamePrefix+"*"))
			for _, d := range matches {
				out = append(out, "cgroup "+d)
			}
		}
	}
	return out
}

// cgroupPids lists the processes in root's subtree of the pids hierarchy
// (or, without one, the first hierarchy that has the tree).
func cgroupPids(root string) []int {
	mounts, _ := cgroupMounts()
	var out []int
	for _, m := range mounts {
		top := filepath.Join(m, root)
		if _, err := os.Stat(top); err != nil {
			continue
		}
		_ = filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			data, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			for _, f := range strings.Fields(string(data)) {
				if pid, err := strconv.Atoi(f); err == nil {
					out = append(out, pid)
				}
			}
			return nil
		})
		if len(out) > 0 {
			break
		}
	}
	return out
}

// RemoveBase removes BaseDir once it holds no cluster (only the lock and
// kcluster's log): the last teardown leaves no folder behind.
func RemoveBase() error {
	base := BaseDir()
	if _, err := os.Stat(base); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	// Under the lock Up takes to make its folder, so that a cluster
	// starting meanwhile never loses it.
	unlock, err := lockBase(base)
	if err != nil {
		return err
	}
	defer unlock()
	entries, err := os.ReadDir(base)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Name() != ".lock" && e.Name() != "kcluster.log" {
			return nil
		}
	}
	return os.RemoveAll(base)
}
