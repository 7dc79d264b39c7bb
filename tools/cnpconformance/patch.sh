#!/bin/sh
# patch.sh SRC DST: copies network-policy-api's conformance/base manifests
# from SRC (the module's conformance directory) to DST, changed only where
# this project's test cluster differs from the one upstream assumes:
#   - agnhost:2.45 -> agnhost:2.66.1, the agnhost tools/kubernetes/build.sh
#     builds and every node imports (there is no registry to pull from);
#   - ["/bin/bash", "-c", "/agnhost ARGS"] -> ["/agnhost", ARGS...]: our agnhost
#     image holds only /agnhost, no shell ($(HOST_IP) is expanded by the
#     kubelet, not the shell, so it still works);
#   - "/agnhost porter" serving SERVE_SCTP_PORT_* -> "/agnhost pause": this
#     kernel has no SCTP sockets, porter exits on listen and the pod would
#     never be Ready, failing the suite's setup. The SCTP tests are skipped
#     (cnp-conformance -skip-tests) and SCTP probes inside mixed tests fail.
set -eu
src=$1 dst=$2
rm -rf "$dst"
cp -r "$src/base" "$dst"
chmod -R u+w "$dst"
find "$dst" -name '*.yaml' | while read -r f; do
	perl -pi -e '
		s{registry\.k8s\.io/e2e-test-images/agnhost:2\.45}{registry.k8s.io/e2e-test-images/agnhost:2.66.1}g;
		s{\["/bin/bash", "-c", "/agnhost porter"\]}{["/agnhost", "pause"]}g;
		if (m{\["/bin/bash", "-c", "/agnhost ([^"]*)"\]}) {
			my $args = $1;
			$args =~ s/\{\{ index \.HostNetworkPorts (\d+) \}\}/\@HNP$1\@/g;
			my $list = join(", ", map { "\"$_\"" } ("/agnhost", split(/ /, $args)));
			$list =~ s/\@HNP(\d+)\@/{{ index .HostNetworkPorts $1 }}/g;
			s{\["/bin/bash", "-c", "/agnhost [^"]*"\]}{[$list]};
		}
	' "$f"
done
if grep -rn 'bin/bash\|agnhost:2\.45' "$dst"; then
	echo "patch.sh: unpatched lines left (above)" >&2
	exit 1
fi
