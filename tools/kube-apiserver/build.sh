#!/bin/sh
# Builds the upstream kube-apiserver used by the integration tests and prints
# its path ($cache/kube-apiserver-v1.37.2). Kept for the Makefile and
# internal/apiserver; the build itself is tools/kubernetes/build.sh, whose
# module builds every Kubernetes binary with one dependency set so they share
# the Go build cache.
#
# Usage: tools/kube-apiserver/build.sh            (prints the binary's path)
#        NFQPOLICY_CACHE=/some/dir tools/kube-apiserver/build.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$(sh "$here/../kubernetes/build.sh" kube-apiserver)
out=${out#kube-apiserver=}            # $cache/kubernetes-VERSION/kube-apiserver
dir=${out%/kube-apiserver}
# The historical path, a hard link to the same file.
echo "${dir%/*}/kube-apiserver-${dir##*/kubernetes-}"
