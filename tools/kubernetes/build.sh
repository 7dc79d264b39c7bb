#!/bin/sh
# Builds the upstream binaries and images of the real-cluster tests from the
# Go module proxy, caches them outside the source tree keyed by version, and
# prints where they are. Only what is missing is built; a second caller
# building the same target waits for the first (flock) instead of building it
# twice.
#
# Usage: tools/kubernetes/build.sh [TARGET...]      (no target: all)
#        NFQPOLICY_CACHE=/some/dir tools/kubernetes/build.sh ...
#
# Prints one line per target on stdout, NAME=PATH (progress goes to stderr):
#   kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy
#   kubectl agnhost     Kubernetes v1.37.2 binaries, all in $cache/kubernetes-v1.37.2/
#   e2e-netpol          upstream's Netpol e2e tests as one test binary (same folder)
#   ginkgo              the ginkgo v2 CLI of the same dependency set, to run e2e-netpol in parallel
#   containerd          folder with containerd, ctr, containerd-shim-runc-v2 (v2.4.2)
#   cni                 folder with the CNI plugins ptp host-local portmap loopback bridge (v1.10.0)
#   pause-image         OCI tarball registry.k8s.io/pause:3.10.2 (our static pause)
#   agnhost-image       OCI tarball registry.k8s.io/e2e-test-images/agnhost:2.66.1
#   cnp-conformance     network-policy-api v0.3.0 conformance suite (test binary)
# runc and etcd come from Debian (apt packages runc, etcd-server).
#
# Every build appends "TARGET WALL-s CPU-s DATE" to $cache/build-times.log;
# cold figures measured on this 2-core machine are in tools/kubernetes/README.md.
set -eu

k8s=v1.37.2
containerd=v2.4.2
cni=v1.10.0
pause_tag=3.10.2
agnhost_tag=2.66.1
npapi=v0.3.0

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${NFQPOLICY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nfqpolicy}
kdir=$cache/kubernetes-$k8s
cdir=$cache/containerd-$containerd
ndir=$cache/cni-plugins-$cni
idir=$cache/images
mkdir -p "$kdir" "$idir"

# CGO off: binaries must not depend on the build host's libc (and the images
# have none). -trimpath keeps them reproducible.
export CGO_ENABLED=0

# lock NAME: holds $cache/.lock.NAME on fd 9 until unlock.
lock() { exec 9>"$cache/.lock.$1"; flock 9; }
unlock() { exec 9>&-; }

# timed NAME CMD...: runs CMD, logging wall and CPU seconds.
timed() {
	tname=$1
	shift
	tf=$cache/.time.$$
	echo "building $tname" >&2
	/usr/bin/time -o "$tf" -f '%e %U %S' "$@"
	line=$(awk -v n="$tname" -v d="$(date -u +%FT%TZ)" 'END { printf "%s %.0f %.0f %s", n, $1, $2 + $3, d }' "$tf")
	rm -f "$tf"
	echo "built $line (target wall-s CPU-s date)" >&2
	echo "$line" >>"$cache/build-times.log"
}

vpkg=k8s.io/component-base/version
kldflags="-s -w -X $vpkg.gitVersion=$k8s -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=37 -X $vpkg.gitTreeState=clean"
kldflags="$kldflags -X k8s.io/client-go/pkg/version.gitVersion=$k8s"

# kube NAME PKG: one Kubernetes binary into $kdir/NAME.
kube() {
	out=$kdir/$1
	if [ ! -x "$out" ]; then
		lock "$1"
		if [ ! -x "$out" ]; then
			tmp=$out.tmp.$$
			(cd "$here" && timed "$1" go build -trimpath -ldflags="$kldflags" -o "$tmp" "$2")
			mv "$tmp" "$out"
		fi
		unlock
	fi
	echo "$1=$out"
}

# kube-apiserver keeps its historical path too ($cache/kube-apiserver-v1.37.2),
# which internal/apiserver and the Makefile use.
apiserver() {
	legacy=$cache/kube-apiserver-$k8s
	out=$kdir/kube-apiserver
	# A build by the former tools/kube-apiserver/build.sh may be running.
	while [ ! -x "$legacy" ] && pgrep -f "kube-apiserver-$k8s.tmp" >/dev/null; do sleep 10; done
	if [ ! -x "$out" ] && [ -x "$legacy" ]; then
		ln -f "$legacy" "$out"
	fi
	kube kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver >/dev/null
	[ -x "$legacy" ] || ln -f "$out" "$legacy"
	echo "kube-apiserver=$out"
}

e2enetpol() {
	out=$kdir/e2e-netpol.test
	if [ ! -x "$out" ]; then
		lock e2e-netpol
		if [ ! -x "$out" ]; then
			tmp=$out.tmp.$$
			(cd "$here" && timed e2e-netpol go test -c -vet=off -trimpath -ldflags="$kldflags" -o "$tmp" ./e2enetpol)
			mv "$tmp" "$out"
		fi
		unlock
	fi
	echo "e2e-netpol=$out"
}

# goinstall NAME DIR LDFLAGS TAGS PKG...: go install PKG@version into DIR.
# containerd and the CNI plugins have no replace directives, so
# "go install pkg@version" builds exactly their pinned dependency set.
goinstall() {
	name=$1 dir=$2 ldflags=$3 tags=$4
	shift 4
	if [ ! -f "$dir/.complete" ]; then
		lock "$name"
		if [ ! -f "$dir/.complete" ]; then
			tmp=$dir.tmp.$$
			rm -rf "$tmp"
			mkdir -p "$tmp"
			(cd "$cache" && GOBIN=$tmp timed "$name" go install -trimpath -tags "$tags" -ldflags="$ldflags" "$@")
			touch "$tmp/.complete"
			rm -rf "$dir"
			mv "$tmp" "$dir"
		fi
		unlock
	fi
	echo "$name=$dir"
}

containerd() {
	m=github.com/containerd/containerd/v2
	goinstall containerd "$cdir" "-s -w -X $m/version.Version=$containerd" "no_btrfs no_devmapper no_zfs" \
		"$m/cmd/containerd@$containerd" "$m/cmd/ctr@$containerd" "$m/cmd/containerd-shim-runc-v2@$containerd"
}

cniplugins() {
	m=github.com/containernetworking/plugins
	goinstall cni "$ndir" "-s -w -X $m/pkg/utils/buildversion.BuildVersion=$cni" "" \
		"$m/plugins/main/ptp@$cni" "$m/plugins/main/bridge@$cni" "$m/plugins/main/loopback@$cni" \
		"$m/plugins/ipam/host-local@$cni" "$m/plugins/meta/portmap@$cni"
}

# image NAME FILE KIND ARGS...: an image tarball made by tools/imagebuild KIND.
image() {
	name=$1 out=$2 kind=$3
	shift 3
	if [ ! -f "$out" ]; then
		lock "$name"
		if [ ! -f "$out" ]; then
			tmp=$out.tmp.$$
			(cd "$repo" && timed "$name" go run ./tools/imagebuild "$kind" -o "$tmp" "$@")
			mv "$tmp" "$out"
		fi
		unlock
	fi
	echo "$name=$out"
}

pauseimage() {
	image pause-image "$idir/pause-$pause_tag.tar" pause -tag "registry.k8s.io/pause:$pause_tag"
}

# cnpconformance: network-policy-api's conformance suite as a test binary
# (tools/cnpconformance; its base manifests patched by patch.sh for this
# cluster, its SCTP probes made skippable by sctpprobes.sh). Keyed by the
# API version and a hash of our sources, so an edit to them rebuilds.
cnpconformance() {
	src=$repo/tools/cnpconformance
	key=$(cat "$src/go.mod" "$src/go.sum" "$src"/*.sh "$src"/*.go | sha256sum | cut -c1-12)
	out=$cache/network-policy-api-$npapi/cnp-conformance-$key.test
	if [ ! -x "$out" ]; then
		lock cnp-conformance
		if [ ! -x "$out" ]; then
			mkdir -p "$(dirname "$out")"
			tmp=$out.tmp.$$
			work=$(mktemp -d)
			cp "$src/go.mod" "$src/go.sum" "$src"/*.go "$work/"
			mdir=$(cd "$src" && go list -m -f '{{.Dir}}' sigs.k8s.io/network-policy-api)
			sh "$src/patch.sh" "$mdir/conformance" "$work/base"
			sh "$src/sctpprobes.sh" "$mdir" "$work/npapi"
			(cd "$work" && go mod edit -replace sigs.k8s.io/network-policy-api=./npapi)
			(cd "$work" && timed cnp-conformance go test -c -vet=off -trimpath -o "$tmp" .)
			rm -rf "$work"
			mv "$tmp" "$out"
		fi
		unlock
	fi
	echo "cnp-conformance=$out"
}

agnhostimage() {
	agnhost=$(kube agnhost k8s.io/kubernetes/test/images/agnhost | sed 's/^agnhost=//')
	image agnhost-image "$idir/agnhost-$agnhost_tag-$k8s.tar" agnhost -tag "registry.k8s.io/e2e-test-images/agnhost:$agnhost_tag" -binary "$agnhost"
}

one() {
	case $1 in
	kube-apiserver) apiserver ;;
	kube-controller-manager | kube-scheduler | kube-proxy | kubelet | kubectl)
		kube "$1" "k8s.io/kubernetes/cmd/$1" ;;
	agnhost) kube agnhost k8s.io/kubernetes/test/images/agnhost ;;
	e2e-netpol) e2enetpol ;;
	ginkgo) kube ginkgo github.com/onsi/ginkgo/v2/ginkgo ;;
	containerd) containerd ;;
	cni) cniplugins ;;
	pause-image) pauseimage ;;
	agnhost-image) agnhostimage ;;
	cnp-conformance) cnpconformance ;;
	*)
		echo "unknown target $1 (want kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl agnhost e2e-netpol ginkgo containerd cni pause-image agnhost-image cnp-conformance, or none for all)" >&2
		exit 2
		;;
	esac
}

if [ $# -eq 0 ]; then
	# Cheap runtime pieces first so a caller can start on them early.
	set -- containerd cni pause-image kube-apiserver kubelet kube-proxy kubectl \
		kube-controller-manager kube-scheduler agnhost agnhost-image e2e-netpol ginkgo cnp-conformance
fi
for t in "$@"; do one "$t"; done
