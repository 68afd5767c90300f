package deploy

// What can be known about the container image without a Docker engine:
//
//   - the Dockerfile passes BuildKit's own lint checks (the ones
//     `docker build --check` runs), with base images resolved by a stub, no
//     network;
//   - its stages are what the image promises: a distroless final stage, a
//     numeric non-root USER, exec-form ENTRYPOINT/CMD, no RUN in the final
//     stage, OCI labels, the binary copied from the build stage;
//   - the build stage's `go build` line, taken from the Dockerfile and run
//     here, exactly as written, in a copy of the build context filtered by
//     .dockerignore, builds a static, stripped binary stamped with the
//     version and commit;
//   - that binary runs as uid 65532 from a read-only directory with its
//     configuration in the environment only, serves its probes and stops
//     cleanly on SIGTERM.
//
// Nothing here builds or runs an image.

import (
	"bufio"
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/e2e"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
)

// The build arguments the tests build with.
const (
	testVersion = "v0.0.0-deploytest"
	testCommit  = "deadbee"
	// nonRootUID is distroless' "nonroot" user, the image's USER.
	nonRootUID = 65532
)

// --- BuildKit lint -----------------------------------------------------------

// stubResolver answers BuildKit's base-image lookups without a registry: an
// image of the requested platform with one layer and the environment the
// real images set.
type stubResolver struct{}

func (stubResolver) ResolveImageConfig(_ context.Context, ref string, opt sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	platform := ocispecs.Platform{OS: "linux", Architecture: runtime.GOARCH}
	if opt.ImageOpt != nil && opt.ImageOpt.Platform != nil {
		platform = *opt.ImageOpt.Platform
	}
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if strings.Contains(ref, "golang") {
		env = []string{
			"PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"GOLANG_VERSION=1.26.0", "GOTOOLCHAIN=local", "GOPATH=/go",
		}
	}
	config, err := json.Marshal(map[string]any{
		"architecture": platform.Architecture,
		"os":           platform.OS,
		"config":       map[string]any{"Env": env},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{
			"sha256:" + strings.Repeat("ab", 32),
		}},
	})
	return ref, "", config, err
}

// lintDockerfile runs the checks of `docker build --check` on dt.
func lintDockerfile(t *testing.T, dt []byte) []string {
	t.Helper()
	platform := ocispecs.Platform{OS: "linux", Architecture: "amd64"}
	res, err := dockerfile2llb.DockerfileLint(context.Background(), dt, dockerfile2llb.ConvertOpt{
		MetaResolver:   stubResolver{},
		TargetPlatform: &platform,
		SourceMap: &llb.SourceMap{
			Filename: "Dockerfile", Language: "Dockerfile", Data: dt,
			Definition: &llb.Definition{},
		},
	})
	if err != nil {
		t.Fatalf("BuildKit lint: %v", err)
	}
	var problems []string
	for _, w := range res.Warnings {
		line := 0
		if w.Location != nil && len(w.Location.Ranges) > 0 && w.Location.Ranges[0].Start != nil {
			line = int(w.Location.Ranges[0].Start.Line)
		}
		problems = append(problems, fmt.Sprintf("%s (line %d): %s %s", w.RuleName, line, w.Detail, w.URL))
	}
	if res.Error != nil {
		problems = append(problems, "build error: "+res.Error.Message)
	}
	return problems
}

func TestDockerfileLint(t *testing.T) {
	// The relay's, and the example service's (helm/examples/sidecar-app/values-orders.yaml).
	for _, name := range []string{"Dockerfile", "examples/orders/Dockerfile"} {
		dt, err := os.ReadFile(repoPath(name))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range lintDockerfile(t, dt) {
			t.Errorf("%s: %s", name, p)
		}
	}
}

// The lint above must be able to fail: a Dockerfile with known problems
// gets each one reported.
func TestDockerfileLintCatchesProblems(t *testing.T) {
	bad := []byte("FROM golang:1.26 as Build\nENV A b\nWORKDIR /src/$UNDEFINED_VAR\nFROM scratch\nCOPY --from=Build /x /x\nCMD /x\n")
	problems := strings.Join(lintDockerfile(t, bad), "\n")
	for _, rule := range []string{"FromAsCasing", "StageNameCasing", "LegacyKeyValueFormat", "UndefinedVar", "JSONArgsRecommended"} {
		if !strings.Contains(problems, rule) {
			t.Errorf("lint of a bad Dockerfile misses %s; got:\n%s", rule, problems)
		}
	}
}

// --- Stages ----------------------------------------------------------------

type dockerfile struct {
	stages   []instructions.Stage
	metaArgs []instructions.ArgCommand
	escape   rune
}

func parseDockerfile(t *testing.T) dockerfile {
	t.Helper()
	dt, err := os.ReadFile(repoPath("Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := parser.Parse(bytes.NewReader(dt))
	if err != nil {
		t.Fatalf("parse Dockerfile: %v", err)
	}
	stages, metaArgs, err := instructions.Parse(res.AST, linter.New(&linter.Config{}))
	if err != nil {
		t.Fatalf("parse Dockerfile instructions: %v", err)
	}
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stage(s), want a build stage and a final stage", len(stages))
	}
	return dockerfile{stages: stages, metaArgs: metaArgs, escape: res.EscapeToken}
}

func commandsOf[T instructions.Command](s instructions.Stage) []T {
	var out []T
	for _, c := range s.Commands {
		if v, ok := c.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

func TestDockerfileStages(t *testing.T) {
	df := parseDockerfile(t)
	build, final := df.stages[0], df.stages[len(df.stages)-1]

	// Build stage: golang:${GO_VERSION}, GO_VERSION in step with go.mod.
	if build.BaseName != "golang:${GO_VERSION}" {
		t.Errorf("build stage FROM %q, want golang:${GO_VERSION}", build.BaseName)
	}
	goVersion := ""
	for _, a := range df.metaArgs {
		for _, kv := range a.Args {
			if kv.Key == "GO_VERSION" && kv.Value != nil {
				goVersion = *kv.Value
			}
		}
	}
	if want := goModMinor(t); goVersion != want {
		t.Errorf("ARG GO_VERSION=%q, want %q, the Go version of go.mod", goVersion, want)
	}

	// Final stage: distroless static (or scratch): no shell, no libc.
	if !regexp.MustCompile(`^(gcr\.io/distroless/static(-debian\d+)?(:[\w.-]+)?(@sha256:[0-9a-f]{64})?|scratch)$`).MatchString(final.BaseName) {
		t.Errorf("final stage FROM %q, want gcr.io/distroless/static* or scratch", final.BaseName)
	}
	if runs := commandsOf[*instructions.RunCommand](final); len(runs) > 0 {
		t.Errorf("final stage has %d RUN instruction(s); the distroless base has no shell to run them", len(runs))
	}

	// USER: numeric, non-root, the last one of the final stage.
	users := commandsOf[*instructions.UserCommand](final)
	if len(users) == 0 {
		t.Fatal("final stage has no USER: the image would run as root")
	}
	user := users[len(users)-1].User
	uid, gid, ok := strings.Cut(user, ":")
	uidN, errU := strconv.Atoi(uid)
	gidN, errG := strconv.Atoi(gid)
	if !ok || errU != nil || errG != nil || uidN == 0 || gidN == 0 {
		t.Errorf("USER %q, want numeric non-root uid:gid (Kubernetes' runAsNonRoot can only verify a numeric user)", user)
	} else if uidN != nonRootUID {
		t.Errorf("USER %q, want %d, the uid the Helm chart's securityContext sets", user, nonRootUID)
	}

	// ENTRYPOINT ["/relay"], CMD ["run"], exec form; EXPOSE 8081.
	eps := commandsOf[*instructions.EntrypointCommand](final)
	if len(eps) != 1 || eps[0].PrependShell || !slices.Equal(eps[0].CmdLine, []string{"/relay"}) {
		t.Errorf("want exactly one ENTRYPOINT [\"/relay\"] in exec form, got %+v", eps)
	}
	cmds := commandsOf[*instructions.CmdCommand](final)
	if len(cmds) != 1 || cmds[0].PrependShell || !slices.Equal(cmds[0].CmdLine, []string{"run"}) {
		t.Errorf("want exactly one CMD [\"run\"] in exec form, got %+v", cmds)
	}
	var ports []string
	for _, e := range commandsOf[*instructions.ExposeCommand](final) {
		ports = append(ports, e.Ports...)
	}
	if !slices.Equal(ports, []string{"8081"}) {
		t.Errorf("EXPOSE %v, want [8081], the relay's --http-addr default", ports)
	}

	// The binary comes from the build stage's -o path.
	copies := commandsOf[*instructions.CopyCommand](final)
	found := false
	for _, c := range copies {
		if c.From == build.Name && slices.Equal(c.SourcePaths, []string{"/out/relay"}) && c.DestPath == "/relay" {
			found = true
		}
	}
	if !found {
		t.Errorf("final stage lacks COPY --from=%s /out/relay /relay", build.Name)
	}

	// OCI labels.
	labels := map[string]string{}
	for _, l := range commandsOf[*instructions.LabelCommand](final) {
		for _, kv := range l.Labels {
			labels[kv.Key] = strings.Trim(kv.Value, `"`)
		}
	}
	for _, key := range []string{"title", "description", "source", "version", "revision"} {
		if labels["org.opencontainers.image."+key] == "" {
			t.Errorf("final stage lacks LABEL org.opencontainers.image.%s", key)
		}
	}
	if labels["org.opencontainers.image.version"] != "${VERSION}" || labels["org.opencontainers.image.revision"] != "${COMMIT}" {
		t.Errorf("OCI version/revision labels %q/%q, want ${VERSION}/${COMMIT}",
			labels["org.opencontainers.image.version"], labels["org.opencontainers.image.revision"])
	}
}

// goModMinor returns go.mod's Go version as major.minor, e.g. "1.26".
func goModMinor(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(repoPath("go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(data)
	if m == nil {
		t.Fatal("go.mod has no go directive")
	}
	return string(m[1])
}

// --- The go build line -------------------------------------------------------

// goBuild is the build stage's `go build` command with the build arguments
// expanded.
type goBuild struct {
	env  []string // NAME=value assignments before the command
	args []string // "go", "build", ...
}

// goBuildCommand finds the RUN that calls go build and expands it the way
// the shell in the golang image would, with buildArgs as the build arguments.
func goBuildCommand(t *testing.T, buildArgs map[string]string) goBuild {
	t.Helper()
	df := parseDockerfile(t)
	build := df.stages[0]
	var line string
	for _, r := range commandsOf[*instructions.RunCommand](build) {
		joined := strings.Join(r.CmdLine, " ")
		if strings.Contains(joined, "go build") {
			if !r.PrependShell {
				t.Fatalf("the go build RUN is in exec form; its variables would not be expanded")
			}
			if line != "" {
				t.Fatal("the build stage has more than one go build RUN")
			}
			line = joined
		}
	}
	if line == "" {
		t.Fatal("the build stage has no RUN with go build")
	}
	// The stage's ARGs, with the defaults the Dockerfile gives, then the
	// build arguments.
	vars := map[string]string{}
	for _, a := range commandsOf[*instructions.ArgCommand](build) {
		for _, kv := range a.Args {
			vars[kv.Key] = ""
			if kv.Value != nil {
				vars[kv.Key] = *kv.Value
			}
		}
	}
	for k, v := range buildArgs {
		if _, declared := vars[k]; !declared {
			t.Fatalf("build argument %s is not declared with ARG in the build stage", k)
		}
		vars[k] = v
	}
	var env []string
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	words, err := shell.NewLex(df.escape).ProcessWords(line, shell.EnvsFromSlice(env))
	if err != nil {
		t.Fatalf("expand %q: %v", line, err)
	}
	var cmd goBuild
	for len(words) > 0 && regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`).MatchString(words[0]) {
		cmd.env = append(cmd.env, words[0])
		words = words[1:]
	}
	cmd.args = words
	return cmd
}

func TestDockerfileBuildCommand(t *testing.T) {
	cmd := goBuildCommand(t, map[string]string{
		"VERSION": testVersion, "COMMIT": testCommit,
		"TARGETOS": "linux", "TARGETARCH": "arm64",
	})
	want := []string{
		"go", "build", "-trimpath",
		"-ldflags", "-s -w -X main.version=" + testVersion + " -X main.commit=" + testCommit,
		"-o", "/out/relay", "./cmd/relay",
	}
	if !slices.Equal(cmd.args, want) {
		t.Errorf("go build command:\n got %q\nwant %q", cmd.args, want)
	}
	env := map[string]string{}
	for _, e := range cmd.env {
		k, v, _ := strings.Cut(e, "=")
		env[k] = v
	}
	if env["CGO_ENABLED"] != "0" {
		t.Errorf("go build runs with %v, want CGO_ENABLED=0 (a static binary for distroless/static)", cmd.env)
	}
	if env["GOOS"] != "linux" || env["GOARCH"] != "arm64" {
		t.Errorf("go build runs with %v, want GOOS/GOARCH from TARGETOS/TARGETARCH (cross-compiled multi-arch images)", cmd.env)
	}
}

// --- The build context -------------------------------------------------------

// dockerContext lists the files of the build context .dockerignore lets
// through, relative to the repository root, the way the Docker CLI and
// BuildKit filter it.
func dockerContext(t *testing.T) []string {
	t.Helper()
	f, err := os.Open(repoPath(".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatalf(".dockerignore: %v", err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatalf(".dockerignore: %v", err)
	}
	var files []string
	err = filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(repoRoot, path)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel == ".git" && !pm.Exclusions() {
				return filepath.SkipDir
			}
			return nil
		}
		excluded, err := pm.MatchesOrParentMatches(rel)
		if err != nil {
			return err
		}
		if !excluded && d.Type().IsRegular() {
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk the build context: %v", err)
	}
	return files
}

func TestDockerContext(t *testing.T) {
	files := dockerContext(t)
	has := func(p string) bool { return slices.Contains(files, p) }
	for _, p := range []string{"go.mod", "go.sum", "cmd/relay/main.go", "cmd/relay/config.go"} {
		if !has(p) {
			t.Errorf(".dockerignore drops %s, which the build needs", p)
		}
	}
	for _, f := range files {
		switch {
		case strings.HasPrefix(f, ".git/"), strings.HasPrefix(f, "bin/"), strings.HasPrefix(f, "helm/"),
			strings.HasPrefix(f, "deploy/"), strings.HasPrefix(f, "docs/"), strings.HasSuffix(f, "_test.go"),
			f == "Dockerfile", f == "cmd/relay/relay":
			t.Errorf(".dockerignore lets %s into the build context", f)
		}
	}
}

// --- The binary ---------------------------------------------------------------

var (
	relayOnce sync.Once
	relayBin  string
	relayErr  error
)

// relayBinary builds the relay once per test run: the Dockerfile's go build
// line, run in a copy of the build context as the Dockerfile lays it out
// (WORKDIR /src), for this machine's platform.
func relayBinary(t *testing.T) string {
	t.Helper()
	relayOnce.Do(func() {
		// Stays set if a check below stops the test that builds.
		relayErr = errors.New("the test that built it failed first")
		cmd := goBuildCommand(t, map[string]string{
			"VERSION": testVersion, "COMMIT": testCommit,
			"TARGETOS": runtime.GOOS, "TARGETARCH": runtime.GOARCH,
		})
		src := filepath.Join(scratch, "context", "src")
		for _, f := range dockerContext(t) {
			if err := copyFile(repoPath(f), filepath.Join(src, f), 0o644); err != nil {
				relayErr = err
				return
			}
		}
		out := filepath.Join(scratch, "out", "relay")
		args := slices.Clone(cmd.args)
		i := slices.Index(args, "-o")
		if i < 0 || i+1 >= len(args) || args[0] != "go" {
			relayErr = fmt.Errorf("unexpected go build command %q", args)
			return
		}
		args[i+1] = out
		build := exec.Command(args[0], args[1:]...)
		build.Dir = src
		// As in the golang image: no GOFLAGS, the toolchain at hand.
		build.Env = append(os.Environ(), "GOFLAGS=", "GOTOOLCHAIN=local", "GOWORK=off")
		build.Env = append(build.Env, cmd.env...)
		if output, err := build.CombinedOutput(); err != nil {
			relayErr = fmt.Errorf("%s (in the build context copy %s): %w\n%s", strings.Join(args, " "), src, err, output)
			return
		}
		relayBin, relayErr = out, nil
	})
	if relayErr != nil {
		t.Fatalf("build the relay as the Dockerfile does: %v", relayErr)
	}
	return relayBin
}

func copyFile(from, to string, mode os.FileMode) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	return os.WriteFile(to, data, mode)
}

func TestImageBinaryIsStaticAndStamped(t *testing.T) {
	bin := relayBinary(t)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatalf("the relay is not an ELF binary: %v", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the relay has a PT_INTERP program header: it is dynamically linked and cannot run on distroless/static")
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("the relay needs shared libraries %v (%v)", libs, err)
	}
	if needed, _ := f.DynString(elf.DT_NEEDED); len(needed) > 0 {
		t.Errorf("the relay has DT_NEEDED entries %v", needed)
	}
	for _, s := range f.Sections {
		if s.Name == ".symtab" {
			t.Error("the relay has a symbol table: -ldflags -s was not applied")
		}
		if strings.HasPrefix(s.Name, ".debug_") || strings.HasPrefix(s.Name, ".zdebug_") {
			t.Errorf("the relay has DWARF section %s: -ldflags -w was not applied", s.Name)
		}
	}

	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatalf("read the relay's build info: %v", err)
	}
	out, err := exec.Command(bin, "version").Output()
	if want := "relay " + testVersion + " (commit " + testCommit + ")\n"; err != nil || string(out) != want {
		t.Errorf("relay version printed %q (%v), want %q", out, err, want)
	}
	if info.Path != "github.com/outbox-relay/outbox-relay/cmd/relay" {
		t.Errorf("built package %q", info.Path)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	want := map[string]string{
		"-trimpath":   "true",
		"CGO_ENABLED": "0",
		"GOOS":        runtime.GOOS,
		"GOARCH":      runtime.GOARCH,
	}
	// Go does not record -ldflags with -trimpath (go.dev/issue/52372): -s
	// and -w show in the sections above, -X in `relay version` below.
	for k, v := range want {
		if settings[k] != v {
			t.Errorf("build setting %s=%q, want %q", k, settings[k], v)
		}
	}
}

// --- Running it as the image would ---------------------------------------------

// installReadOnly copies the relay into a directory nobody can write, as
// /relay is in the image, and returns its path.
func installReadOnly(t *testing.T) string {
	t.Helper()
	bin := relayBinary(t)
	dir := filepath.Join(scratch, "readonly-"+strings.ReplaceAll(t.Name(), "/", "_"))
	path := filepath.Join(dir, "relay")
	if err := copyFile(bin, path, 0o555); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	return path
}

// secretFile writes a secret, readable by the non-root user, as a mounted
// Secret would be, and returns its path.
func secretFile(t *testing.T, value string) string {
	t.Helper()
	dir := filepath.Join(scratch, "secrets-"+strings.ReplaceAll(t.Name(), "/", "_"))
	path := filepath.Join(dir, "password")
	if err := copyFileData(path, []byte(value+"\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	return path
}

func copyFileData(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, data, mode)
}

// relayCommand runs the relay with env as its whole environment, as the
// image's non-root user when the tests run as root (as CI does).
func relayCommand(ctx context.Context, path string, env []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = filepath.Dir(path) // read-only, like / in the image
	cmd.Env = env
	if os.Geteuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nonRootUID, Gid: nonRootUID}}
	}
	return cmd
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestImageBinaryRunsAsNonRootFromReadOnlyDir(t *testing.T) {
	if err := os.Chmod(scratch, 0o755); err != nil { // let uid 65532 reach the files
		t.Fatal(err)
	}
	relay := installReadOnly(t)
	const password = "pw-deploytest-never-printed"
	passwordFile := secretFile(t, password)
	// Configuration from the environment only, as the chart gives it.
	env := []string{
		"RELAY_POSTGRES_URL=postgres://relay@" + closedPort(t) + "/app?sslmode=disable",
		"RELAY_POSTGRES_PASSWORD_FILE=" + passwordFile,
		"RELAY_NATS_URL=nats://" + closedPort(t),
		"RELAY_CONNECT_TIMEOUT=2s",
		"RELAY_QUERY_TIMEOUT=2s",
		"RELAY_NATS_CONNECT_TIMEOUT=2s",
		"RELAY_RECONNECT_MAX=1s",
		"RELAY_SHUTDOWN_TIMEOUT=5s",
	}
	if os.Geteuid() != 0 {
		t.Logf("not root: the relay runs as uid %d, not %d", os.Geteuid(), nonRootUID)
	}

	t.Run("version", func(t *testing.T) {
		out, err := relayCommand(context.Background(), relay, nil, "version").Output()
		if err != nil {
			t.Fatalf("relay version: %v", err)
		}
		if want := "relay " + testVersion + " (commit " + testCommit + ")\n"; string(out) != want {
			t.Errorf("relay version printed %q, want %q", out, want)
		}
	})

	t.Run("help", func(t *testing.T) {
		out, err := relayCommand(context.Background(), relay, nil, "--help").Output()
		if err != nil {
			t.Fatalf("relay --help: %v", err)
		}
		for _, want := range []string{"relay run", "relay check", "relay status"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("relay --help lacks the command %q:\n%s", want, out)
			}
		}
		var stderr bytes.Buffer
		cmd := relayCommand(context.Background(), relay, nil, "run", "--help")
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("relay run --help: %v\n%s", err, stderr.String())
		}
		for _, want := range []string{"Usage: relay run", "RELAY_", "-postgres-url", "-nats-url", "-shutdown-timeout"} {
			if !strings.Contains(stderr.String(), want) {
				t.Errorf("relay run --help lacks %q:\n%s", want, stderr.String())
			}
		}
	})

	t.Run("invalid configuration", func(t *testing.T) {
		var stderr bytes.Buffer
		cmd := relayCommand(context.Background(), relay, append(slices.Clone(env), "RELAY_LOG_FORMAT=xml"), "run")
		cmd.Stderr = &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 {
			t.Fatalf("relay run with RELAY_LOG_FORMAT=xml: %v, want exit status 1\n%s", err, stderr.String())
		}
		if !strings.Contains(stderr.String(), "invalid configuration") || !strings.Contains(stderr.String(), "log-format") {
			t.Errorf("relay run with RELAY_LOG_FORMAT=xml said %q, want invalid configuration ... log-format", stderr.String())
		}
	})

	t.Run("check against nothing", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		var stdout, stderr bytes.Buffer
		cmd := relayCommand(ctx, relay, env, "check")
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if ctx.Err() != nil {
			t.Fatalf("relay check did not give up on unreachable PostgreSQL and NATS within 90s\n%s%s", stdout.String(), stderr.String())
		}
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() == 0 {
			t.Fatalf("relay check against nothing: %v, want a non-zero exit\n%s%s", err, stdout.String(), stderr.String())
		}
		msg := strings.TrimSpace(stderr.String())
		if !strings.HasPrefix(msg, "relay: ") || len(msg) < len("relay: ")+10 {
			t.Errorf("relay check said %q on stderr, want a message starting with \"relay: \"", msg)
		}
		if strings.Contains(stdout.String()+stderr.String(), password) {
			t.Error("relay check printed the password read from RELAY_POSTGRES_PASSWORD_FILE")
		}
		t.Logf("relay check: exit %d: %s", exit.ExitCode(), firstLine(msg))
	})

	t.Run("run serves probes and stops on SIGTERM", func(t *testing.T) {
		addr := closedPort(t)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		var logs e2e.SyncBuffer
		cmd := relayCommand(ctx, relay, append(slices.Clone(env), "RELAY_HTTP_ADDR="+addr), "run")
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		defer func() {
			if cmd.ProcessState == nil {
				_ = cmd.Process.Kill()
				<-exited
			}
		}()

		if os.Geteuid() == 0 {
			if uid := processUID(t, cmd.Process.Pid); uid != nonRootUID {
				t.Errorf("the relay runs as uid %d, want %d", uid, nonRootUID)
			}
		}
		base := "http://" + addr
		var health string
		deadline := time.Now().Add(20 * time.Second)
		for {
			code, body, err := httpGet(base + "/healthz")
			if err == nil && code == http.StatusOK {
				health = body
				break
			}
			select {
			case err := <-exited:
				t.Fatalf("relay run exited (%v) before serving /healthz:\n%s", err, logs.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("/healthz did not answer 200 within 20s (last: %d %v):\n%s", code, err, logs.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
		var probe map[string]string
		if err := json.Unmarshal([]byte(health), &probe); err != nil || probe["role"] == "" {
			t.Errorf("/healthz body %q, want JSON with a role", health)
		}
		code, body, err := httpGet(base + "/readyz")
		if err != nil || (code != http.StatusOK && code != http.StatusServiceUnavailable) || !strings.Contains(body, `"role"`) {
			t.Errorf("/readyz: %d %q %v", code, body, err)
		}
		code, body, err = httpGet(base + "/metrics")
		if err != nil || code != http.StatusOK {
			t.Fatalf("/metrics: %d %v", code, err)
		}
		if !regexp.MustCompile(`outbox_relay_build_info\{[^}]*version="` + regexp.QuoteMeta(testVersion) + `"`).MatchString(body) {
			t.Errorf("/metrics lacks outbox_relay_build_info with version %q", testVersion)
		}

		start := time.Now()
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("relay run exited with %v after SIGTERM, want 0:\n%s", err, logs.String())
			}
			t.Logf("stopped %s after SIGTERM", time.Since(start).Round(time.Millisecond))
		case <-time.After(20 * time.Second):
			t.Fatalf("relay run still running 20s after SIGTERM (RELAY_SHUTDOWN_TIMEOUT=5s):\n%s", logs.String())
		}
		if strings.Contains(logs.String(), password) {
			t.Error("relay run logged the password read from RELAY_POSTGRES_PASSWORD_FILE")
		}
	})
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func httpGet(url string) (int, string, error) {
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// processUID reads the real uid of a running process from /proc.
func processUID(t *testing.T, pid int) int {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) >= 2 && fields[0] == "Uid:" {
			uid, _ := strconv.Atoi(fields[1])
			return uid
		}
	}
	t.Fatalf("no Uid in /proc/%d/status", pid)
	return -1
}
