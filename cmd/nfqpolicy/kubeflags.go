package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/nfqpolicy/nfqpolicy/agents"
	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/k8swatch"
)

// kubeFlags are kubectl's connection flags (k8s.io/cli-runtime's
// ConfigFlags: --kubeconfig, --context, -n/--namespace, --token, ...) on
// a subcommand's standard-library flag set, so that every tool reaches the
// cluster the way kubectl does and the binary works as a kubectl plugin.
type kubeFlags struct {
	cf *genericclioptions.ConfigFlags
	fs *flag.FlagSet
	// short maps a long flag name to its one-letter alias (namespace: n).
	short map[string]string
	// agentOpts locate the agents' pods (addAgentFlags).
	agentOpts agents.Options
}

// addAgentFlags adds the flags that find the agents' DaemonSet pods, for
// the commands that reach agents through the API server.
func (k *kubeFlags) addAgentFlags() {
	k.fs.StringVar(&k.agentOpts.Namespace, "agent-namespace", agents.DefaultNamespace, "namespace of the nfqpolicy DaemonSet's pods")
	k.fs.StringVar(&k.agentOpts.Selector, "agent-selector", agents.DefaultSelector, "label selector of the nfqpolicy DaemonSet's pods")
}

// defaultRequestTimeout bounds each request when --request-timeout is not
// given, so that a black-holed server is an error, not a hang.
const defaultRequestTimeout = 30 * time.Second

// addKubeFlags registers kubectl's connection flags on fs; withNamespace
// adds -n/--namespace for commands where a namespace scope makes sense.
// Flags fs already has keep their meaning.
func addKubeFlags(fs *flag.FlagSet, withNamespace bool) *kubeFlags {
	cf := genericclioptions.NewConfigFlags(false)
	cf.CacheDir = nil // nothing is cached: each run lists once
	if !withNamespace {
		cf.Namespace = nil
	}
	pfs := pflag.NewFlagSet(fs.Name(), pflag.ContinueOnError)
	cf.AddFlags(pfs)
	k := &kubeFlags{cf: cf, fs: fs, short: map[string]string{}}
	pfs.VisitAll(func(f *pflag.Flag) {
		if fs.Lookup(f.Name) != nil {
			return
		}
		// pflag.Value has flag.Value's methods, and its bool values
		// report IsBoolFlag, so the standard parser handles them alike.
		fs.Var(f.Value, f.Name, f.Usage)
		if f.Shorthand != "" && fs.Lookup(f.Shorthand) == nil {
			fs.Var(f.Value, f.Shorthand, f.Usage)
			k.short[f.Name] = f.Shorthand
		}
	})
	return k
}

// given reports whether any connection flag was set on the command line.
func (k *kubeFlags) given() bool {
	set := false
	k.fs.Visit(func(f *flag.Flag) {
		if k.isKubeFlag(f.Name) {
			set = true
		}
	})
	return set
}

func (k *kubeFlags) isKubeFlag(name string) bool {
	for long, short := range k.short {
		if name == long || name == short {
			return true
		}
	}
	switch name {
	case "kubeconfig", "context", "cluster", "user", "server", "token", "as", "as-uid", "as-group",
		"as-user-extra", "certificate-authority", "client-certificate", "client-key",
		"insecure-skip-tls-verify", "tls-server-name", "request-timeout", "disable-compression",
		"proxy-url", "username", "password", "namespace":
		return true
	}
	return false
}

// restConfig resolves the flags, $KUBECONFIG and ~/.kube/config as kubectl
// does.
func (k *kubeFlags) restConfig() (*rest.Config, error) {
	if raw, err := k.cf.ToRawKubeConfigLoader().RawConfig(); err == nil && len(raw.Clusters) == 0 && *k.cf.APIServer == "" {
		// kubectl would fall back to localhost:8080 and report that as
		// unreachable; name the actual problem instead.
		return nil, errors.New("no kubeconfig: pass --kubeconfig, set $KUBECONFIG, or give --snapshot FILE to read files instead")
	}
	cfg, err := k.cf.ToRESTConfig()
	if err != nil {
		if clientcmd.IsEmptyConfig(err) {
			return nil, errors.New("no kubeconfig: pass --kubeconfig, set $KUBECONFIG, or give --snapshot FILE to read files instead")
		}
		return nil, err
	}
	if k.cf.Timeout == nil || *k.cf.Timeout == "" || *k.cf.Timeout == "0" {
		cfg.Timeout = defaultRequestTimeout
	}
	return cfg, nil
}

// namespace is -n, else the kubeconfig context's namespace, else default.
func (k *kubeFlags) namespace() string {
	if k.cf.Namespace != nil && *k.cf.Namespace != "" {
		return *k.cf.Namespace
	}
	ns, _, err := k.cf.ToRawKubeConfigLoader().Namespace()
	if err != nil || ns == "" {
		return "default"
	}
	return ns
}

// namespaceGiven reports whether -n/--namespace was set.
func (k *kubeFlags) namespaceGiven() bool {
	return k.cf.Namespace != nil && *k.cf.Namespace != ""
}

// qualify turns a bare pod name into ns/name in the command's namespace, as
// kubectl reads names; node/NAME, ns/name and addresses pass unchanged.
func (k *kubeFlags) qualify(endpoint string) string {
	if endpoint == "" || strings.Contains(endpoint, "/") {
		return endpoint
	}
	if _, err := netip.ParseAddr(endpoint); err == nil {
		return endpoint
	}
	return k.namespace() + "/" + endpoint
}

// listCluster reads the live cluster state.
func (k *kubeFlags) listCluster(ctx context.Context) (*cluster.Cluster, error) {
	cfg, err := k.restConfig()
	if err != nil {
		return nil, err
	}
	return k8swatch.List(ctx, cfg)
}

// loadLive lists the cluster and compiles it like the agent. Invalid
// policies (the agent skips them too) are returned in the
// *cluster.ValidationError next to the cluster of everything else.
func (k *kubeFlags) loadLive(ctx context.Context) (*cluster.Cluster, *filter.Ruleset, error) {
	c, err := k.listCluster(ctx)
	var ve *cluster.ValidationError
	if err != nil && !errors.As(err, &ve) {
		return nil, nil, err
	}
	rs, cerr := filter.Compile(c)
	if cerr != nil {
		return nil, nil, cerr
	}
	return c, rs, err
}

// kubeError renders an error talking to the API server the way kubectl
// does, on one line: "Error from server (Forbidden): ...", "The connection
// to the server HOST was refused ...", "Unable to connect to the server:
// ...". Other errors get kubectl's "error: " prefix.
func kubeError(err error) string {
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		st := status.Status()
		if apierrors.IsUnauthorized(err) {
			return "error: You must be logged in to the server (" + oneLine(st.Message) + ")"
		}
		reason := string(st.Reason)
		if reason == "" {
			reason = "Unknown"
		}
		return fmt.Sprintf("Error from server (%s): %s", reason, oneLine(st.Message))
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		if errors.Is(err, syscall.ECONNREFUSED) {
			host := ue.URL
			if u, perr := url.Parse(ue.URL); perr == nil {
				host = u.Host
			}
			return fmt.Sprintf("The connection to the server %s was refused - did you specify the right host or port?", host)
		}
		return "Unable to connect to the server: " + oneLine(ue.Err.Error())
	}
	return "error: " + oneLine(err.Error())
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// printLiveError prints what loading the live cluster failed with: the
// invalid objects one per line, or the API error on one line.
func printLiveError(w io.Writer, err error) {
	var ve *cluster.ValidationError
	if errors.As(err, &ve) {
		printLoadError(w, err)
		return
	}
	fmt.Fprintln(w, kubeError(err))
}

// progName is how the user invoked us: "kubectl nfqpolicy" when run as a
// kubectl plugin (kubectl execs kubectl-nfqpolicy), else "nfqpolicy".
func progName() string {
	if strings.HasPrefix(filepath.Base(os.Args[0]), "kubectl-") {
		return "kubectl nfqpolicy"
	}
	return "nfqpolicy"
}

// kubectlUsage prints a command's help the way kubectl prints its own:
// description, examples, options (sorted, "--name='default':" then the
// text), usage line.
func kubectlUsage(w io.Writer, fs *flag.FlagSet, k *kubeFlags, use, long, examples string) {
	prog := progName()
	fmt.Fprintf(w, "%s\n", strings.TrimSpace(long))
	if examples != "" {
		fmt.Fprintf(w, "\nExamples:\n")
		for _, l := range strings.Split(strings.Trim(examples, "\n"), "\n") {
			if l == "" {
				fmt.Fprintln(w)
				continue
			}
			fmt.Fprintf(w, "  %s\n", strings.ReplaceAll(l, "nfqpolicy ", prog+" "))
		}
	}
	fmt.Fprintf(w, "\nOptions:\n")
	shortOf := map[string]string{}
	isShort := map[string]bool{}
	if k != nil {
		for l, s := range k.short {
			shortOf[l], isShort[s] = s, true
		}
	}
	var flags []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) {
		if !isShort[f.Name] {
			flags = append(flags, f)
		}
	})
	sort.Slice(flags, func(i, j int) bool { return flags[i].Name < flags[j].Name })
	for _, f := range flags {
		name := "--" + f.Name
		if len(f.Name) == 1 {
			name = "-" + f.Name
		}
		if s := shortOf[f.Name]; s != "" {
			name = "-" + s + ", " + name
		}
		def := f.DefValue
		if _, isBool := f.Value.(interface{ IsBoolFlag() bool }); !isBool || def == "" {
			def = "'" + def + "'"
		}
		if def == "'[]'" {
			def = "[]"
		}
		fmt.Fprintf(w, "    %s=%s:\n\t%s\n\n", name, def, f.Usage)
	}
	fmt.Fprintf(w, "Usage:\n  %s %s\n", prog, use)
}

// loadSnapshotOrCluster reads --snapshot files, or the live cluster when
// none is given, and compiles it; errors are printed (invalid objects one
// per line, an API error on one line). Policies the agent would skip as
// invalid are reported and the rest is used, as the agent does; snapshot
// files must be valid throughout.
func loadSnapshotOrCluster(ctx context.Context, kf *kubeFlags, snaps []string, stderr io.Writer) (*cluster.Cluster, *filter.Ruleset, error) {
	if len(snaps) > 0 {
		if kf.given() && !kf.namespaceGiven() {
			err := errors.New("--snapshot reads files: kubeconfig flags (--kubeconfig, --context, ...) cannot be used with it")
			fmt.Fprintln(stderr, "error: "+err.Error())
			return nil, nil, err
		}
		c, rs, err := loadSnapshot(snaps)
		if err != nil {
			printLoadError(stderr, err)
		}
		return c, rs, err
	}
	c, rs, err := kf.loadLive(ctx)
	if err != nil && c == nil {
		printLiveError(stderr, err)
		return nil, nil, err
	}
	if err != nil {
		printLoadError(stderr, err)
	}
	return c, rs, nil
}
