package nfqimage

import (
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// dockerfile is the runtime stage of deploy/Dockerfile, as the recipe sees it.
type dockerfile struct {
	from                   string
	packages               []string
	copyDst                string
	entrypoint, cmd        []string
	user                   string
	hasUser, hasEntrypoint bool
}

// parseDockerfile reads the last stage of a Dockerfile: its FROM, the
// packages of its apt-get install, the COPY --from destination, ENTRYPOINT,
// CMD and USER. Continuation lines are joined first.
func parseDockerfile(t *testing.T, text string) dockerfile {
	t.Helper()
	text = strings.ReplaceAll(text, "\\\n", " ")
	var d dockerfile
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		instr, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(instr) {
		case "FROM":
			d = dockerfile{from: strings.Fields(rest)[0]} // a new stage
		case "RUN":
			for _, cmd := range strings.Split(rest, "&&") {
				f := strings.Fields(cmd)
				if len(f) < 2 || f[0] != "apt-get" || f[1] != "install" {
					continue
				}
				for _, a := range f[2:] {
					if !strings.HasPrefix(a, "-") {
						d.packages = append(d.packages, a)
					}
				}
			}
		case "COPY":
			f := strings.Fields(rest)
			if len(f) >= 3 && strings.HasPrefix(f[0], "--from=") {
				d.copyDst = f[len(f)-1]
			}
		case "ENTRYPOINT":
			d.hasEntrypoint = true
			if err := json.Unmarshal([]byte(rest), &d.entrypoint); err != nil {
				t.Fatalf("ENTRYPOINT %s: want the JSON (exec) form: %v", rest, err)
			}
		case "CMD":
			if err := json.Unmarshal([]byte(rest), &d.cmd); err != nil {
				t.Fatalf("CMD %s: want the JSON (exec) form: %v", rest, err)
			}
		case "USER":
			d.hasUser, d.user = true, rest
		}
	}
	return d
}

// TestDockerfileInStep holds deploy/Dockerfile (the recipe for Docker users)
// and this package's recipe (make image) to the same image: base release,
// packages, binary path, entrypoint, command and user.
func TestDockerfileInStep(t *testing.T) {
	b, err := os.ReadFile("../../deploy/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	d := parseDockerfile(t, string(b))
	if d.from != "debian:"+Release+"-slim" {
		t.Errorf("Dockerfile runtime base %q, want debian:%s-slim (the release make image unpacks packages from)", d.from, Release)
	}
	if !reflect.DeepEqual(d.packages, Packages) {
		t.Errorf("Dockerfile installs %q, make image installs %q", d.packages, Packages)
	}
	if d.copyDst != Binary {
		t.Errorf("Dockerfile copies the binary to %q, make image to %q", d.copyDst, Binary)
	}
	if !d.hasEntrypoint || !reflect.DeepEqual(d.entrypoint, Entrypoint) {
		t.Errorf("Dockerfile ENTRYPOINT %q, make image %q", d.entrypoint, Entrypoint)
	}
	if !reflect.DeepEqual(d.cmd, Cmd) {
		t.Errorf("Dockerfile CMD %q, make image %q", d.cmd, Cmd)
	}
	if d.user != User || d.hasUser != (User != "") {
		t.Errorf("Dockerfile USER %q (set: %v), make image %q", d.user, d.hasUser, User)
	}
}

// The parser itself must see a difference, or the test above proves nothing.
func TestParseDockerfileSeesDrift(t *testing.T) {
	const base = `FROM golang:1.26-bookworm AS build
RUN apt-get install -y other
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ipset conntrack \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/nfqpolicy /usr/local/bin/nfqpolicy
ENTRYPOINT ["/usr/local/bin/nfqpolicy"]
CMD ["run"]
`
	d := parseDockerfile(t, base)
	want := dockerfile{from: "debian:bookworm-slim", packages: []string{"iptables", "ipset", "conntrack"},
		copyDst: "/usr/local/bin/nfqpolicy", entrypoint: []string{"/usr/local/bin/nfqpolicy"}, cmd: []string{"run"}, hasEntrypoint: true}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("parsed %+v, want %+v", d, want)
	}
	for _, tc := range []struct{ old, new string }{
		{"conntrack \\", "conntrack ca-certificates \\"},
		{`CMD ["run"]`, `CMD ["run", "--fail-open"]`},
		{`CMD ["run"]`, "CMD [\"run\"]\nUSER 1000"},
		{"/usr/local/bin/nfqpolicy\nENTRY", "/nfqpolicy\nENTRY"},
	} {
		if got := parseDockerfile(t, strings.Replace(base, tc.old, tc.new, 1)); reflect.DeepEqual(got, want) {
			t.Errorf("replacing %q by %q went unnoticed", tc.old, tc.new)
		}
	}
}

// Base stands in for the Dockerfile's base image: it must not repeat what
// the Dockerfile installs on top (that would hide a drift of Packages), and
// it must hold what a user runs with kubectl exec.
func TestBaseAndPackages(t *testing.T) {
	for _, p := range Packages {
		if slices.Contains(Base, p) {
			t.Errorf("%s is both in Base and in Packages", p)
		}
	}
	for _, p := range []string{"bash", "dash", "coreutils", "base-passwd"} {
		if !slices.Contains(Base, p) {
			t.Errorf("Base lacks %s", p)
		}
	}
}
