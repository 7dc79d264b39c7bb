# nfqpolicy — build, test, benchmark, demo.
# `make demo` and `make test` are the two commands a fresh Debian machine
# needs; both install what they need (as root) first.

GO       ?= go
BIN      := bin/nfqpolicy
PKGS     := ./...
DEBS     := iptables ipset conntrack socat tshark iproute2 etcd-server runc
APISERVER_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/nfqpolicy
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# The image `make image` writes (a tarball for ctr import / docker load).
IMAGE     ?= ghcr.io/nfqpolicy/nfqpolicy:dev
IMAGE_TAR ?= bin/nfqpolicy-image.tar

.PHONY: install all build deps test e2e e2e-run test-unit test-integration bench bench-dataplane bench-realnode bench-scale lint demo apiserver kubernetes image clean cluster cluster-down

all: build

build:
	$(GO) build -o $(BIN) ./cmd/nfqpolicy

# The CLI as a kubectl plugin: kubectl runs kubectl-nfqpolicy from PATH for
# `kubectl nfqpolicy ...` (docs/debugging.md). PREFIX=$$HOME/.local works
# without root.
PREFIX ?= /usr/local
install: build
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/kubectl-nfqpolicy

# Debian packages the kernel and integration tests use. Installed only when
# missing, and only when we are root (CI is); otherwise the tests that need
# them say so loudly and skip.
deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "WARNING: not root, cannot install:$$missing"; fi; \
	fi
	@# etcd-server's package starts a system etcd; the tests run their own.
	@-command -v systemctl >/dev/null 2>&1 && systemctl disable --now etcd >/dev/null 2>&1 || true

# The kube-apiserver for the integration tests is built from the Go module
# proxy once (about 10 minutes on two cores) and cached outside the tree.
apiserver:
	@NFQPOLICY_CACHE=$(APISERVER_CACHE) sh tools/kube-apiserver/build.sh

# Every upstream binary and image of the real-cluster tests (Kubernetes
# v1.37.2, containerd, CNI plugins, pause and agnhost images), cached like
# kube-apiserver; prints NAME=PATH lines (tools/kubernetes/README.md).
kubernetes:
	@NFQPOLICY_CACHE=$(APISERVER_CACHE) sh tools/kubernetes/build.sh

# The nfqpolicy image without a Docker engine: the static binary plus the
# Debian packages of internal/nfqimage's recipe (deploy/Dockerfile's).
image:
	@mkdir -p bin
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o bin/nfqpolicy-static ./cmd/nfqpolicy
	$(GO) run ./tools/imagebuild nfqpolicy -binary bin/nfqpolicy-static -o $(IMAGE_TAR) -tag $(IMAGE) -work bin/image-work
	@echo "$(IMAGE_TAR) ($(IMAGE))"

# Everything: unit, conformance, kernel (netns) and API-server tests, then
# the real two-node cluster (realcluster/: kubelet, containerd, kube-proxy,
# nfqpolicy from `make image` as a DaemonSet; upstream's Netpol specs, a
# representative third) as a step of its own so that it does not compete
# with the kernel tests for the two cores.
test: deps build apiserver kubernetes image
	$(GO) vet $(PKGS)
	NFQPOLICY_REQUIRE_APISERVER=1 KUBE_APISERVER=$$(NFQPOLICY_CACHE=$(APISERVER_CACHE) sh tools/kube-apiserver/build.sh) \
	  $(GO) test -count=1 -timeout 40m $$($(GO) list $(PKGS) | grep -v '/realcluster$$')
	@$(MAKE) --no-print-directory e2e-run E2E_NETPOL=representative

# The whole real-cluster suite: every upstream Netpol spec (SCTP
# connectivity skipped: no SCTP sockets here), network-policy-api's
# ClusterNetworkPolicy conformance (SCTP probes not run here), our corpus
# on real pods and the real-node checks; ends with one "e2e: N passed,
# M failed" line counting upstream specs and tests and our tests.
e2e: deps build kubernetes image
	@$(MAKE) --no-print-directory e2e-run E2E_NETPOL=all E2E_CNP=1

E2E_NETPOL ?= all
E2E_CNP ?= 0
e2e-run:
	@mkdir -p bin; rc=0; NFQPOLICY_CACHE=$(APISERVER_CACHE) NFQPOLICY_REQUIRE_CLUSTER=1 NFQPOLICY_NETPOL=$(E2E_NETPOL) NFQPOLICY_CNP_CONFORMANCE=$(E2E_CNP) \
	  $(GO) test -count=1 -timeout 100m -v ./realcluster/ >bin/e2e.log 2>&1 || rc=$$?; \
	grep -E '^(PASS|FAIL|SKIP) (\[sig-network\]|CNP)|^[0-9]+ passed, .*SCTP|^(fault |--- (PASS|FAIL|SKIP)|FAIL|ok )|SKIPPED' bin/e2e.log; \
	awk '/^PASS (\[sig-network\]|CNP)/ || /^--- PASS: / {p++} /^FAIL (\[sig-network\]|CNP)/ || /^--- FAIL: / {f++} /^SKIP (\[sig-network\]|CNP)/ || /^--- SKIP: / {s++} \
	  END {printf "e2e: %d passed, %d failed, %d skipped (upstream Netpol specs, network-policy-api conformance tests and realcluster tests; log bin/e2e.log)\n", p, f, s}' bin/e2e.log; \
	exit $$rc

test-unit:
	$(GO) test -count=1 -short $(PKGS)

test-integration: deps apiserver
	NFQPOLICY_REQUIRE_APISERVER=1 KUBE_APISERVER=$$(NFQPOLICY_CACHE=$(APISERVER_CACHE) sh tools/kube-apiserver/build.sh) \
	  $(GO) test -count=1 -timeout 30m -run 'Integration|FullStack' $(PKGS)

.PHONY: faults fuzz

# The fault matrix (issue 14): each row prints one `fault NAME: ...` line.
# The API-server row (integration/) needs kube-apiserver, built as for
# `make test`.
# The full -v output goes to bin/faults.log; the matrix lines and the
# verdicts are printed.
faults: deps build apiserver
	@mkdir -p bin; rc=0; NFQPOLICY_REQUIRE_APISERVER=1 KUBE_APISERVER=$$(NFQPOLICY_CACHE=$(APISERVER_CACHE) sh tools/kube-apiserver/build.sh) \
	  $(GO) test -count=1 -timeout 20m -run Fault -v ./e2e ./integration >bin/faults.log 2>&1 || rc=$$?; \
	grep -E '^(fault |--- |FAIL|ok )|faults_test.go|faults_kernel_test.go' bin/faults.log; exit $$rc

# Go native fuzzing of every parser a user or a peer feeds, FUZZTIME each
# (one target per `go test -fuzz` run); a crash fails the target and
# leaves its input in the package's testdata/fuzz, which `make test` then
# replays as a regression seed.
FUZZTIME ?= 30s
# Minimizing one new input may otherwise take 60 s, the whole budget of a
# slow target (scenario: 7 inputs run in 30 s).
FUZZMINIMIZE ?= 5s
FUZZ_TARGETS := filter:FuzzDecode cluster:FuzzDecode scenario:FuzzParse \
	cmd/nfqpolicy:FuzzAuditReport debugapi:FuzzRequest dataplane/iptables:FuzzParseSave \
	conntrack:FuzzParseEntry capture:FuzzScanFile capture:FuzzParseMatch flowlog:FuzzParse
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; fn=$${t##*:}; \
	  echo "--- fuzz ./$$pkg $$fn ($(FUZZTIME))"; \
	  $(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./$$pkg; done

bench: build
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./bench | tee bench/last-bench.txt
	$(GO) run ./bench/cmd/report bench/last-bench.txt
	@echo "--- nfqpolicy test over the public corpus (target: <= 3 s)"
	@/usr/bin/time -f "nfqpolicy test public corpus: %e s wall, %M KiB max RSS" ./$(BIN) test testdata/conformance/public | tail -1

bench-dataplane: deps build
	$(GO) run ./bench/dataplane -nfqpolicy $(BIN)

# Issue 11 item 5: how long a real node (realcluster/) holds a SYN with
# kube-proxy's rules for 1,000 Services, nfqpolicy enforcing against the
# accept-all reader and no queue (TestRealClusterSynHold; docs/performance.md).
bench-realnode: deps build kubernetes image
	NFQPOLICY_CACHE=$(APISERVER_CACHE) NFQPOLICY_REQUIRE_CLUSTER=1 NFQPOLICY_SYNHOLD=1 \
	  $(GO) test -count=1 -timeout 30m -run 'TestRealClusterSynHold$$' -v ./realcluster/

# The scale harness (bench/scale, docs/scale.md): a real kube-apiserver,
# agents in network namespaces, the 1k/100, 5k/500 and 10k/2,000
# pods/policies ladder at 20 and 100 changes/s; one `scale ...` line per
# step. A subset: make bench-scale SCALE_ARGS='-ladder 1000/100 -churn 20'.
bench-scale: deps build apiserver
	NFQPOLICY_REQUIRE_APISERVER=1 KUBE_APISERVER=$$(NFQPOLICY_CACHE=$(APISERVER_CACHE) sh tools/kube-apiserver/build.sh) \
	  $(GO) test -count=1 -v -timeout 40m -run '^TestScaleLadder$$' ./bench/scale -args -nfqpolicy $(CURDIR)/$(BIN) $(SCALE_ARGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) run $(STATICCHECK) $(PKGS)

demo: deps build
	$(GO) run ./e2e/cmd/demo --agent $(BIN)

# A real two-node Kubernetes cluster (realcluster/) with nfqpolicy deployed
# from deploy/ by kubectl apply -k; it keeps running under a background
# supervisor until `make cluster-down`. The last two lines printed are the
# exports to paste.
cluster: deps
	@NFQPOLICY_CACHE=$(APISERVER_CACHE) sh tools/kubernetes/build.sh kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl containerd cni pause-image agnhost-image >/dev/null
	@$(MAKE) --no-print-directory image
	@$(GO) build -o bin/kcluster ./realcluster/cmd/kcluster
	@NFQPOLICY_CACHE=$(APISERVER_CACHE) ./bin/kcluster up --image-tar $(IMAGE_TAR) --image $(IMAGE)

cluster-down:
	@$(GO) build -o bin/kcluster ./realcluster/cmd/kcluster
	@NFQPOLICY_CACHE=$(APISERVER_CACHE) ./bin/kcluster down

clean:
	rm -rf bin
