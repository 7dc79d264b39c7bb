#!/bin/sh
# sctpprobes.sh SRC DST: copies the network-policy-api module from SRC (its
# directory in the module cache) to DST with one change, for kernels
# without SCTP sockets: conformance/utils/kubernetes PokeServer, through
# which every probe of the suite goes, does not run an SCTP probe when
# NFQPOLICY_CNP_SKIP_SCTP_PROBES is set; it logs
#   SCTP probe not run: NS/POD -> HOST:PORT (expected to connect: BOOL): REASON
# and asserts nothing, so the TCP and UDP probes of the same test still run.
# internal/cnpsuite sets the variable (with the reason) when this kernel
# has no SCTP sockets, and reports each such probe as not run, per test.
# tools/kubernetes/build.sh builds the suite against DST (go mod edit
# -replace): files beneath GOMODCACHE cannot be overlaid.
set -eu
src=$1 dst=$2
rm -rf "$dst"
mkdir -p "$dst"
cp -r "$src/go.mod" "$src/go.sum" "$src/apis" "$src/conformance" "$src/pkg" "$dst/"
chmod -R u+w "$dst"
f=$dst/conformance/utils/kubernetes/helper.go
perl -0pi -e '
	s{^import \(\n}{import (\n\t"os"\n}m or die "no import block\n";
	s{(func PokeServer\(t \*testing\.T, [^\n]*\) \{\n)}{$1\tif why := os.Getenv("NFQPOLICY_CNP_SKIP_SCTP_PROBES"); why != "" && protocol == "sctp" {\n\t\tt.Logf("SCTP probe not run: %s/%s -> %s (expected to connect: %v): %s", clientNamespace, clientPod, net.JoinHostPort(targetHost, fmt.Sprint(targetPort)), shouldConnect, why)\n\t\treturn\n\t}\n} or die "no PokeServer\n";
' "$f"
grep -q 'SCTP probe not run' "$f"
