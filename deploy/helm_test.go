package deploy

// The Helm charts, rendered by the real helm binary and read back into the
// Kubernetes API types: every object must decode strictly (no unknown or
// misspelt field, no duplicate key), and the pods must keep the promises of
// the chart: probes, a locked-down security context, secrets only as files
// or secret references, a grace period longer than the relay's shutdown,
// leader election with several relays, monitoring objects that select what
// they should and carry the repository's alerts and dashboard unchanged.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	kjson "sigs.k8s.io/json"
	sigsyaml "sigs.k8s.io/yaml"
)

const (
	helmVersion = "v3.22.0"
	namespace   = "deploy-test"
	// Secrets the test values put inline; they must never appear outside
	// a Secret.
	inlinePostgresPassword = "pg-inline-secret-value"
	inlineNATSPassword     = "nats-inline-secret-value"
)

// --- helm ---------------------------------------------------------------------

// helmBin returns the helm binary: $HELM, or the one `make tools` installs.
func helmBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("HELM")
	if bin == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatal(err)
		}
		bin = filepath.Join(home, ".cache", "outbox-relay", "tools", "bin", "helm-"+helmVersion)
	}
	if _, err := os.Stat(bin); err != nil {
		tools := "$HOME/.cache/outbox-relay/tools/bin"
		t.Fatalf("helm %s is needed at %s (or set HELM=/path/to/helm): %v\nInstall it (about 3 minutes, from the Go module proxy) with:\n  make %s/helm-%s\nor:\n  mkdir -p %s/.tmp-helm && (cd /tmp && GOBIN=%s/.tmp-helm go install helm.sh/helm/v3/cmd/helm@%s) && mv %s/.tmp-helm/helm %s/helm-%s",
			helmVersion, bin, err, tools, helmVersion, tools, tools, helmVersion, tools, tools, helmVersion)
	}
	return bin
}

var helmVersionOnce sync.Once

// runHelm runs helm with its own empty configuration, no cluster and no
// network: every HTTP(S) request goes to a closed port.
func runHelm(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	bin := helmBin(t)
	home := filepath.Join(scratch, "helm-home")
	env := []string{}
	for _, e := range os.Environ() {
		name, _, _ := strings.Cut(e, "=")
		if strings.HasPrefix(name, "HELM_") || name == "KUBECONFIG" || strings.HasSuffix(strings.ToUpper(name), "_PROXY") {
			continue
		}
		env = append(env, e)
	}
	env = append(env,
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
		"KUBECONFIG="+filepath.Join(home, "no-kubeconfig"),
		"HTTP_PROXY=http://127.0.0.1:9", "HTTPS_PROXY=http://127.0.0.1:9", "NO_PROXY=",
	)
	helmVersionOnce.Do(func() {
		cmd := exec.Command(bin, "version", "--template", "{{.Version}}")
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil || !strings.HasPrefix(string(out), "v3.") {
			t.Errorf("%s version: %q %v, want helm v3", bin, out, err)
		}
		// A go-installed helm reports its minor version only (v3.22).
		if !strings.HasPrefix(helmVersion, string(out)) {
			t.Logf("helm is %s; the Makefile pins %s", out, helmVersion)
		}
	})
	var o, e bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// sidecarChart returns the example chart, copied with the outbox-relay
// chart so that its file:// dependency resolves, after `helm dependency
// build` (offline).
var (
	sidecarOnce sync.Once
	sidecarDir  string
	sidecarErr  error
)

func sidecarChart(t *testing.T) string {
	t.Helper()
	sidecarOnce.Do(func() {
		sidecarErr = fmt.Errorf("an earlier test failed while preparing the example")
		dst := filepath.Join(scratch, "helm")
		err := filepath.WalkDir(repoPath("helm"), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(repoPath("helm"), p)
			if d.IsDir() {
				// A charts/ directory left by a local dependency build may be stale.
				if d.Name() == "charts" && filepath.Dir(filepath.Dir(rel)) == "examples" {
					return filepath.SkipDir
				}
				return nil
			}
			if !d.Type().IsRegular() {
				return nil
			}
			return copyFile(p, filepath.Join(dst, rel), 0o644)
		})
		if err != nil {
			sidecarErr = err
			return
		}
		chart := filepath.Join(dst, "examples", "sidecar-app")
		if _, stderr, err := runHelm(t, "dependency", "build", "--skip-refresh", chart); err != nil {
			sidecarErr = fmt.Errorf("helm dependency build --skip-refresh %s (offline): %w\n%s", chart, err, stderr)
			return
		}
		sidecarDir, sidecarErr = chart, nil
	})
	if sidecarErr != nil {
		t.Fatal(sidecarErr)
	}
	return sidecarDir
}

// --- Decoding -------------------------------------------------------------------

// Minimal prometheus-operator types: only the fields the chart renders, so
// that a misspelt or misplaced field fails the strict decoding.
type relabelConfig struct {
	SourceLabels []string `json:"sourceLabels,omitempty"`
	Separator    *string  `json:"separator,omitempty"`
	TargetLabel  string   `json:"targetLabel,omitempty"`
	Regex        string   `json:"regex,omitempty"`
	Modulus      uint64   `json:"modulus,omitempty"`
	Replacement  *string  `json:"replacement,omitempty"`
	Action       string   `json:"action,omitempty"`
}

type namespaceSelector struct {
	Any        bool     `json:"any,omitempty"`
	MatchNames []string `json:"matchNames,omitempty"`
}

type scrapeEndpoint struct {
	Port              string          `json:"port"`
	Path              string          `json:"path"`
	Interval          string          `json:"interval,omitempty"`
	ScrapeTimeout     string          `json:"scrapeTimeout,omitempty"`
	Relabelings       []relabelConfig `json:"relabelings,omitempty"`
	MetricRelabelings []relabelConfig `json:"metricRelabelings,omitempty"`
}

type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		JobLabel          string               `json:"jobLabel,omitempty"`
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector namespaceSelector    `json:"namespaceSelector"`
		Endpoints         []scrapeEndpoint     `json:"endpoints"`
	} `json:"spec"`
}

type podMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		JobLabel            string               `json:"jobLabel,omitempty"`
		Selector            metav1.LabelSelector `json:"selector"`
		NamespaceSelector   namespaceSelector    `json:"namespaceSelector"`
		PodMetricsEndpoints []scrapeEndpoint     `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

// ruleGroup and rule follow prometheus-operator's monitoring.coreos.com/v1
// RuleGroup and Rule.
type ruleGroup struct {
	Name                    string            `json:"name"`
	Interval                string            `json:"interval,omitempty"`
	QueryOffset             string            `json:"query_offset,omitempty"`
	Limit                   *int              `json:"limit,omitempty"`
	Labels                  map[string]string `json:"labels,omitempty"`
	PartialResponseStrategy string            `json:"partial_response_strategy,omitempty"`
	Rules                   []struct {
		Record        string             `json:"record,omitempty"`
		Alert         string             `json:"alert,omitempty"`
		Expr          intstr.IntOrString `json:"expr"`
		For           string             `json:"for,omitempty"`
		KeepFiringFor string             `json:"keep_firing_for,omitempty"`
		Labels        map[string]string  `json:"labels,omitempty"`
		Annotations   map[string]string  `json:"annotations,omitempty"`
	} `json:"rules"`
}

type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Groups []ruleGroup `json:"groups"`
	} `json:"spec"`
}

// rendered is the output of helm template, decoded.
type rendered struct {
	kinds           []string
	raw             map[string]string // "Kind/name" -> JSON, for leak checks
	deployments     []appsv1.Deployment
	services        []corev1.Service
	secrets         []corev1.Secret
	configMaps      []corev1.ConfigMap
	pdbs            []policyv1.PodDisruptionBudget
	serviceMonitors []serviceMonitor
	podMonitors     []podMonitor
	rules           []prometheusRule
	ruleGroupsJSON  []json.RawMessage // spec.groups of each PrometheusRule, as rendered
}

// strictDecode decodes js into v as the API server would: case-sensitive,
// no unknown fields, no duplicate fields.
func strictDecode(js []byte, v any) error {
	strictErrs, err := kjson.UnmarshalStrict(js, v)
	if err != nil {
		return err
	}
	if len(strictErrs) > 0 {
		var msgs []string
		for _, e := range strictErrs {
			msgs = append(msgs, e.Error())
		}
		return fmt.Errorf("%s", strings.Join(msgs, "; "))
	}
	return nil
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

func decodeManifests(t *testing.T, out string) *rendered {
	t.Helper()
	r := &rendered{raw: map[string]string{}}
	for _, doc := range docSeparator.Split(out, -1) {
		source := ""
		if m := regexp.MustCompile(`(?m)^# Source: (.*)$`).FindStringSubmatch(doc); m != nil {
			source = m[1]
		}
		js, err := sigsyaml.YAMLToJSONStrict([]byte(doc))
		if err != nil {
			t.Errorf("%s: not valid YAML (or a duplicate key): %v", source, err)
			continue
		}
		if string(js) == "null" {
			continue // comments only
		}
		var tm metav1.TypeMeta
		if err := json.Unmarshal(js, &tm); err != nil {
			t.Errorf("%s: %v", source, err)
			continue
		}
		var target any
		switch tm.APIVersion + " " + tm.Kind {
		case "apps/v1 Deployment":
			target = &appsv1.Deployment{}
		case "v1 Service":
			target = &corev1.Service{}
		case "v1 Secret":
			target = &corev1.Secret{}
		case "v1 ConfigMap":
			target = &corev1.ConfigMap{}
		case "policy/v1 PodDisruptionBudget":
			target = &policyv1.PodDisruptionBudget{}
		case "monitoring.coreos.com/v1 ServiceMonitor":
			target = &serviceMonitor{}
		case "monitoring.coreos.com/v1 PodMonitor":
			target = &podMonitor{}
		case "monitoring.coreos.com/v1 PrometheusRule":
			target = &prometheusRule{}
		default:
			t.Errorf("%s: unexpected object %s %s", source, tm.APIVersion, tm.Kind)
			continue
		}
		if err := strictDecode(js, target); err != nil {
			t.Errorf("%s: %s does not decode strictly into the API type: %v", source, tm.Kind, err)
			continue
		}
		var meta metav1.ObjectMeta
		switch o := target.(type) {
		case *appsv1.Deployment:
			r.deployments, meta = append(r.deployments, *o), o.ObjectMeta
		case *corev1.Service:
			r.services, meta = append(r.services, *o), o.ObjectMeta
		case *corev1.Secret:
			r.secrets, meta = append(r.secrets, *o), o.ObjectMeta
		case *corev1.ConfigMap:
			r.configMaps, meta = append(r.configMaps, *o), o.ObjectMeta
		case *policyv1.PodDisruptionBudget:
			r.pdbs, meta = append(r.pdbs, *o), o.ObjectMeta
		case *serviceMonitor:
			r.serviceMonitors, meta = append(r.serviceMonitors, *o), o.ObjectMeta
		case *podMonitor:
			r.podMonitors, meta = append(r.podMonitors, *o), o.ObjectMeta
		case *prometheusRule:
			r.rules, meta = append(r.rules, *o), o.ObjectMeta
			var generic struct {
				Spec struct {
					Groups json.RawMessage `json:"groups"`
				} `json:"spec"`
			}
			_ = json.Unmarshal(js, &generic) // decoded strictly above
			r.ruleGroupsJSON = append(r.ruleGroupsJSON, generic.Spec.Groups)
		}
		checkMeta(t, tm.Kind, meta)
		r.kinds = append(r.kinds, tm.Kind)
		r.raw[tm.Kind+"/"+meta.Name] = string(js)
	}
	slices.Sort(r.kinds)
	return r
}

func checkMeta(t *testing.T, kind string, m metav1.ObjectMeta) {
	t.Helper()
	for _, msg := range validation.IsDNS1123Subdomain(m.Name) {
		t.Errorf("%s %q: name: %s", kind, m.Name, msg)
	}
	if m.Namespace == "" {
		t.Errorf("%s %s: no namespace", kind, m.Name)
	}
	checkLabels(t, kind+" "+m.Name, m.Labels)
	if m.Labels["app.kubernetes.io/managed-by"] != "Helm" || m.Labels["app.kubernetes.io/instance"] == "" {
		t.Errorf("%s %s: labels %v lack app.kubernetes.io/instance or managed-by", kind, m.Name, m.Labels)
	}
}

func checkLabels(t *testing.T, what string, l map[string]string) {
	t.Helper()
	for k, v := range l {
		for _, msg := range validation.IsQualifiedName(k) {
			t.Errorf("%s: label key %q: %s", what, k, msg)
		}
		for _, msg := range validation.IsValidLabelValue(v) {
			t.Errorf("%s: label %s=%q: %s", what, k, v, msg)
		}
	}
}

// --- The relay's flags ----------------------------------------------------------

var (
	flagsOnce sync.Once
	flagNames map[string]bool
	// flagDefaults maps each flag to the default its help text states.
	flagDefaults map[string]string
)

// relayFlags returns the flags of `relay run`, read from its --help.
func relayFlags(t *testing.T) map[string]bool {
	t.Helper()
	flagsOnce.Do(func() {
		cmd := exec.Command(relayBinary(t), "run", "--help")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("relay run --help: %v", err)
		}
		names := map[string]bool{}
		for _, m := range regexp.MustCompile(`(?m)^  -([a-z][a-z0-9-]*)`).FindAllStringSubmatch(stderr.String(), -1) {
			names[m[1]] = true
		}
		if len(names) < 10 {
			t.Fatalf("found only %d flags in relay run --help:\n%s", len(names), stderr.String())
		}
		flagNames, flagDefaults = names, helpDefaults(stderr.String())
	})
	if flagNames == nil {
		t.Fatal("the relay's flags could not be read")
	}
	return flagNames
}

// helpDefaults reads the default of each flag from the flag package's
// help: the last "(default X)" of its text, X unquoted, and cut at a colon or
// semicolon that explains it ("(default 0: never ...)"); "none" is empty.
func helpDefaults(help string) map[string]string {
	defaults := map[string]string{}
	blocks := regexp.MustCompile(`(?m)^  -`).Split(help, -1)
	defaultRE := regexp.MustCompile(`\(default ("(?:[^"\\]|\\.)*"|[^)]*)\)`)
	for _, b := range blocks[1:] {
		name, _, _ := strings.Cut(b, " ")
		name, _, _ = strings.Cut(name, "\n")
		all := defaultRE.FindAllStringSubmatch(b, -1)
		if len(all) == 0 {
			defaults[name] = ""
			continue
		}
		v := all[len(all)-1][1]
		if unquoted, err := strconv.Unquote(v); err == nil {
			defaults[name] = unquoted
			continue
		}
		v, _, _ = strings.Cut(v, ":")
		v, _, _ = strings.Cut(v, ";")
		if v = strings.TrimSpace(v); v == "none" {
			v = ""
		}
		defaults[name] = v
	}
	return defaults
}

// flagOf maps RELAY_NATS_URL or RELAY_NATS_PASSWORD_FILE to nats-url or
// nats-password.
func flagOf(env string, flags map[string]bool) (string, bool) {
	name := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(env, "RELAY_"), "_", "-"))
	if flags[name] {
		return name, true
	}
	if base, ok := strings.CutSuffix(name, "-file"); ok && flags[base] {
		return base, true
	}
	return name, false
}

// --- Pod invariants -------------------------------------------------------------

var secretName = regexp.MustCompile(`(?i)(PASSWORD|TOKEN|SEED|SECRET)`)

// checkRelayPod checks the relay container of a pod and the pod around it.
func checkRelayPod(t *testing.T, what string, pod corev1.PodTemplateSpec, sidecar bool, replicas int32) {
	t.Helper()
	spec := pod.Spec
	var relay *corev1.Container
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		for _, msg := range validation.IsDNS1123Label(v.Name) {
			t.Errorf("%s: volume %q: %s", what, v.Name, msg)
		}
		volumes[v.Name] = v
	}
	for i := range spec.Containers {
		c := &spec.Containers[i]
		for _, msg := range validation.IsDNS1123Label(c.Name) {
			t.Errorf("%s: container %q: %s", what, c.Name, msg)
		}
		for _, p := range c.Ports {
			for _, msg := range validation.IsValidPortName(p.Name) {
				t.Errorf("%s: container %s: port %q: %s", what, c.Name, p.Name, msg)
			}
		}
		for _, m := range c.VolumeMounts {
			if _, ok := volumes[m.Name]; !ok {
				t.Errorf("%s: container %s mounts volume %q, which the pod lacks", what, c.Name, m.Name)
			}
		}
		if c.Name == "outbox-relay" {
			relay = c
		}
	}
	if relay == nil {
		t.Fatalf("%s: no container named outbox-relay among %d", what, len(spec.Containers))
	}
	c := *relay
	if c.Image == "" || len(c.Args) == 0 || c.Args[0] != "run" {
		t.Errorf("%s: image %q args %q, want an image and args starting with run", what, c.Image, c.Args)
	}

	// Environment: known flags, secrets only as files or references.
	flags := relayFlags(t)
	env := map[string]string{}
	for _, e := range c.Env {
		for _, msg := range validation.IsEnvVarName(e.Name) {
			t.Errorf("%s: env %q: %s", what, e.Name, msg)
		}
		if _, dup := env[e.Name]; dup {
			t.Errorf("%s: env %s set twice", what, e.Name)
		}
		env[e.Name] = e.Value
		if strings.HasPrefix(e.Name, "RELAY_") {
			if _, ok := flagOf(e.Name, flags); !ok {
				t.Errorf("%s: env %s matches no flag of the relay: it would be ignored", what, e.Name)
			}
		}
		if e.ValueFrom != nil {
			if e.ValueFrom.SecretKeyRef == nil && e.ValueFrom.ConfigMapKeyRef == nil && e.ValueFrom.FieldRef == nil && e.ValueFrom.ResourceFieldRef == nil {
				t.Errorf("%s: env %s: unexpected valueFrom %+v", what, e.Name, e.ValueFrom)
			}
			continue
		}
		if secretName.MatchString(e.Name) && !strings.HasSuffix(e.Name, "_FILE") && e.Value != "" {
			t.Errorf("%s: env %s holds a secret inline; it must come from a Secret (secretKeyRef or a mounted file)", what, e.Name)
		}
	}
	for _, name := range []string{"RELAY_POSTGRES_URL", "RELAY_NATS_URL", "RELAY_SHUTDOWN_TIMEOUT", "RELAY_HTTP_ADDR", "RELAY_LEADER_ELECTION"} {
		if env[name] == "" {
			t.Errorf("%s: env %s is not set", what, name)
		}
	}
	if strings.Contains(env["RELAY_POSTGRES_URL"], "@") && regexp.MustCompile(`://[^/@]*:[^/@]*@`).MatchString(env["RELAY_POSTGRES_URL"]) {
		t.Errorf("%s: RELAY_POSTGRES_URL %q holds a password", what, env["RELAY_POSTGRES_URL"])
	}

	// Every secret file the relay is told about is mounted from a Secret.
	for _, name := range []string{"RELAY_POSTGRES_PASSWORD_FILE", "RELAY_NATS_PASSWORD_FILE", "RELAY_NATS_TOKEN_FILE", "RELAY_NATS_CREDS", "RELAY_NATS_NKEY_FILE"} {
		file, ok := env[name]
		if !ok {
			continue
		}
		if !secretFileMounted(c, volumes, file) {
			t.Errorf("%s: %s=%s is not a file mounted from a Secret", what, name, file)
		}
	}

	// Leader election: on whenever more than one relay may run.
	election, err := strconv.ParseBool(env["RELAY_LEADER_ELECTION"])
	if err != nil {
		t.Errorf("%s: RELAY_LEADER_ELECTION=%q: %v", what, env["RELAY_LEADER_ELECTION"], err)
	}
	if !election && (sidecar || replicas > 1) {
		t.Errorf("%s: leader election is off with %d replicas (sidecar %t)", what, replicas, sidecar)
	}

	// Shutdown fits in the grace period.
	shutdown, err := time.ParseDuration(env["RELAY_SHUTDOWN_TIMEOUT"])
	if err != nil {
		t.Errorf("%s: RELAY_SHUTDOWN_TIMEOUT=%q: %v", what, env["RELAY_SHUTDOWN_TIMEOUT"], err)
	}
	if spec.TerminationGracePeriodSeconds == nil {
		t.Errorf("%s: no terminationGracePeriodSeconds (the default 30s is not tied to the relay's shutdown timeout)", what)
	} else if grace := time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second; grace <= shutdown {
		t.Errorf("%s: terminationGracePeriodSeconds %s is not longer than the relay's shutdown timeout %s", what, grace, shutdown)
	}

	// Probes on the metrics port.
	_, portText, _ := strings.Cut(env["RELAY_HTTP_ADDR"], ":")
	httpPort, _ := strconv.Atoi(portText)
	portName := ""
	for _, p := range c.Ports {
		if p.ContainerPort == int32(httpPort) {
			portName = p.Name
		}
	}
	if portName == "" {
		t.Errorf("%s: no container port for RELAY_HTTP_ADDR=%s", what, env["RELAY_HTTP_ADDR"])
	}
	checkProbe := func(kind string, p *corev1.Probe, path string) {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s: no %s probe with httpGet", what, kind)
			return
		}
		if p.HTTPGet.Path != path || p.HTTPGet.Port.String() != portName {
			t.Errorf("%s: %s probe GET %s on port %s, want %s on %s", what, kind, p.HTTPGet.Path, p.HTTPGet.Port.String(), path, portName)
		}
		if p.TimeoutSeconds < 1 || p.PeriodSeconds < 1 || p.FailureThreshold < 1 {
			t.Errorf("%s: %s probe timings %+v", what, kind, p)
		}
	}
	checkProbe("liveness", c.LivenessProbe, "/healthz")
	if sidecar {
		if c.ReadinessProbe != nil {
			t.Errorf("%s: the sidecar has a readiness probe: the relay standing by would make the app unready", what)
		}
	} else {
		checkProbe("readiness", c.ReadinessProbe, "/readyz")
	}

	// Security context: container settings, or the pod's where Kubernetes
	// takes them from there.
	sc := c.SecurityContext
	psc := spec.SecurityContext
	if sc == nil {
		t.Fatalf("%s: the relay container has no securityContext", what)
	}
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	nonRoot := sc.RunAsNonRoot
	if nonRoot == nil {
		nonRoot = psc.RunAsNonRoot
	}
	if nonRoot == nil || !*nonRoot {
		t.Errorf("%s: runAsNonRoot is not true", what)
	}
	uid := sc.RunAsUser
	if uid == nil {
		uid = psc.RunAsUser
	}
	if uid == nil || *uid != nonRootUID {
		t.Errorf("%s: runAsUser %v, want %d (the image's USER)", what, uid, nonRootUID)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s: readOnlyRootFilesystem is not true", what)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation is not false", what)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("%s: privileged", what)
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
		t.Errorf("%s: capabilities %+v, want drop ALL and add none", what, sc.Capabilities)
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil {
		seccomp = psc.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: seccompProfile %+v, want RuntimeDefault", what, seccomp)
	}
}

// secretFileMounted tells whether file is in a volume mounted into c that
// comes from a Secret (a secret volume, or a projected one whose items give
// the file).
func secretFileMounted(c corev1.Container, volumes map[string]corev1.Volume, file string) bool {
	for _, m := range c.VolumeMounts {
		rel, ok := strings.CutPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/")
		if !ok {
			continue
		}
		v := volumes[m.Name]
		switch {
		case v.Secret != nil:
			if len(v.Secret.Items) == 0 {
				return true
			}
			for _, it := range v.Secret.Items {
				if it.Path == rel {
					return true
				}
			}
		case v.Projected != nil:
			for _, s := range v.Projected.Sources {
				if s.Secret == nil {
					continue
				}
				for _, it := range s.Secret.Items {
					if it.Path == rel {
						return true
					}
				}
			}
		}
	}
	return false
}

// checkNoInlineSecrets fails when a secret value shows in anything but a
// Secret, in clear or base64.
func checkNoInlineSecrets(t *testing.T, r *rendered, secrets ...string) {
	t.Helper()
	for key, js := range r.raw {
		if strings.HasPrefix(key, "Secret/") {
			continue
		}
		for _, s := range secrets {
			if strings.Contains(js, s) || strings.Contains(js, base64.StdEncoding.EncodeToString([]byte(s))) {
				t.Errorf("%s holds the secret value %q", key, s)
			}
		}
	}
}

// checkSecretReferences checks that every item a projected volume takes
// from a Secret the chart renders exists in it.
func checkSecretReferences(t *testing.T, r *rendered) {
	t.Helper()
	made := map[string]corev1.Secret{}
	for _, s := range r.secrets {
		made[s.Name] = s
	}
	for _, d := range r.deployments {
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Projected == nil {
				continue
			}
			for _, src := range v.Projected.Sources {
				if src.Secret == nil {
					continue
				}
				s, ok := made[src.Secret.Name]
				if !ok {
					continue // made outside the chart (existingSecret)
				}
				for _, it := range src.Secret.Items {
					if _, ok := s.Data[it.Key]; !ok {
						t.Errorf("Deployment %s mounts key %q of Secret %s, which lacks it", d.Name, it.Key, s.Name)
					}
				}
			}
		}
	}
}

func selects(t *testing.T, sel *metav1.LabelSelector, l map[string]string) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Errorf("selector %+v: %v", sel, err)
		return false
	}
	return !s.Empty() && s.Matches(labels.Set(l))
}

// checkWiring checks that the objects find each other: Deployment selector
// and pods, Service and pods, monitors and their targets, PDB and pods.
func checkWiring(t *testing.T, r *rendered) {
	t.Helper()
	for _, d := range r.deployments {
		if !selects(t, d.Spec.Selector, d.Spec.Template.Labels) {
			t.Errorf("Deployment %s: selector %v does not select its pods %v", d.Name, d.Spec.Selector, d.Spec.Template.Labels)
		}
	}
	podPorts := func(d appsv1.Deployment) map[string]bool {
		names := map[string]bool{}
		for _, c := range d.Spec.Template.Spec.Containers {
			for _, p := range c.Ports {
				names[p.Name] = true
			}
		}
		return names
	}
	for _, s := range r.services {
		var target *appsv1.Deployment
		for i, d := range r.deployments {
			if len(s.Spec.Selector) > 0 && labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
				target = &r.deployments[i]
			}
		}
		if target == nil {
			t.Errorf("Service %s selects no pods of the chart", s.Name)
			continue
		}
		for _, p := range s.Spec.Ports {
			if p.TargetPort.Type == intstr.String && !podPorts(*target)[p.TargetPort.StrVal] {
				t.Errorf("Service %s: targetPort %s is no port of Deployment %s", s.Name, p.TargetPort.StrVal, target.Name)
			}
		}
	}
	for _, sm := range r.serviceMonitors {
		var svc *corev1.Service
		for i, s := range r.services {
			if selects(t, &sm.Spec.Selector, s.Labels) {
				svc = &r.services[i]
			}
		}
		if svc == nil {
			t.Errorf("ServiceMonitor %s selects no Service of the chart", sm.Name)
			continue
		}
		if !svc.Spec.PublishNotReadyAddresses {
			t.Errorf("Service %s does not publish not-ready addresses: standbys or a starting relay would not be scraped", svc.Name)
		}
		if !slices.Contains(sm.Spec.NamespaceSelector.MatchNames, svc.Namespace) {
			t.Errorf("ServiceMonitor %s: namespaceSelector %v misses %s", sm.Name, sm.Spec.NamespaceSelector, svc.Namespace)
		}
		for _, e := range sm.Spec.Endpoints {
			if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == e.Port }) || e.Path != "/metrics" {
				t.Errorf("ServiceMonitor %s: endpoint %s%s is not a metrics port of Service %s", sm.Name, e.Port, e.Path, svc.Name)
			}
		}
		if job := svc.Labels[sm.Spec.JobLabel]; !strings.Contains(job, "outbox-relay") {
			t.Errorf("ServiceMonitor %s: job label %q is %q on the Service; the alerts select jobs containing outbox-relay", sm.Name, sm.Spec.JobLabel, job)
		}
	}
	for _, pm := range r.podMonitors {
		var target *appsv1.Deployment
		for i, d := range r.deployments {
			if selects(t, &pm.Spec.Selector, d.Spec.Template.Labels) {
				target = &r.deployments[i]
			}
		}
		if target == nil {
			t.Errorf("PodMonitor %s selects no pods of the chart", pm.Name)
			continue
		}
		for _, e := range pm.Spec.PodMetricsEndpoints {
			if !podPorts(*target)[e.Port] || e.Path != "/metrics" {
				t.Errorf("PodMonitor %s: endpoint %s%s is not a port of Deployment %s", pm.Name, e.Port, e.Path, target.Name)
			}
		}
		if job := target.Spec.Template.Labels[pm.Spec.JobLabel]; !strings.Contains(job, "outbox-relay") {
			t.Errorf("PodMonitor %s: job label %q is %q on the pods; the alerts select jobs containing outbox-relay", pm.Name, pm.Spec.JobLabel, job)
		}
	}
	for _, p := range r.pdbs {
		if !slices.ContainsFunc(r.deployments, func(d appsv1.Deployment) bool { return selects(t, p.Spec.Selector, d.Spec.Template.Labels) }) {
			t.Errorf("PodDisruptionBudget %s selects no pods of the chart", p.Name)
		}
		if (p.Spec.MinAvailable == nil) == (p.Spec.MaxUnavailable == nil) {
			t.Errorf("PodDisruptionBudget %s: want exactly one of minAvailable and maxUnavailable", p.Name)
		}
	}
}

// checkMonitoringFiles compares the PrometheusRule and the dashboard with
// the chart's files.
func checkMonitoringFiles(t *testing.T, r *rendered) {
	t.Helper()
	alerts, err := os.ReadFile(repoPath("helm", "outbox-relay", "files", "outbox-relay-alerts.yaml"))
	if err != nil {
		t.Fatalf("the alerts file: %v", err)
	}
	var file struct {
		Groups json.RawMessage `json:"groups"`
	}
	alertsJSON, err := sigsyaml.YAMLToJSONStrict(alerts)
	if err == nil {
		err = json.Unmarshal(alertsJSON, &file)
	}
	if err != nil {
		t.Fatalf("helm/outbox-relay/files/outbox-relay-alerts.yaml: %v", err)
	}
	var typed []ruleGroup
	if err := strictDecode(file.Groups, &typed); err != nil {
		t.Errorf("the groups of outbox-relay-alerts.yaml are not valid PrometheusRule groups: %v", err)
	}
	var want any
	_ = json.Unmarshal(file.Groups, &want)
	if len(r.ruleGroupsJSON) != 1 {
		t.Fatalf("%d PrometheusRules, want 1", len(r.ruleGroupsJSON))
	}
	var got any
	_ = json.Unmarshal(r.ruleGroupsJSON[0], &got)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the PrometheusRule's groups differ from files/outbox-relay-alerts.yaml:\n got %s\nwant %s", r.ruleGroupsJSON[0], file.Groups)
	}

	dashboard, err := os.ReadFile(repoPath("helm", "outbox-relay", "files", "outbox-relay-dashboard.json"))
	if err != nil {
		t.Fatalf("the dashboard file: %v", err)
	}
	found := false
	for _, cm := range r.configMaps {
		if cm.Labels["grafana_dashboard"] != "1" {
			continue
		}
		found = true
		if len(cm.Data) != 1 || cm.Data["outbox-relay-dashboard.json"] != string(dashboard) {
			t.Errorf("ConfigMap %s: data is not files/outbox-relay-dashboard.json byte for byte (keys %v)", cm.Name, slices.Sorted(maps.Keys(cm.Data)))
		}
	}
	if !found {
		t.Error("no ConfigMap labelled grafana_dashboard=\"1\"")
	}
}

// --- Cases ----------------------------------------------------------------------

type chartCase struct {
	name      string
	chart     func(t *testing.T) string
	release   string
	args      []string // values for lint and template
	wantKinds []string
	check     func(t *testing.T, r *rendered)
}

func mainChart(*testing.T) string { return repoPath("helm", "outbox-relay") }

func ciValues(name string) string { return repoPath("helm", "outbox-relay", "ci", name) }

// standalone checks the one relay Deployment of the outbox-relay chart.
func standalone(replicas int32) func(t *testing.T, r *rendered) {
	return func(t *testing.T, r *rendered) {
		if len(r.deployments) != 1 {
			t.Fatalf("%d Deployments, want 1", len(r.deployments))
		}
		d := r.deployments[0]
		if d.Spec.Replicas == nil || *d.Spec.Replicas != replicas {
			t.Errorf("replicas %v, want %d", d.Spec.Replicas, replicas)
		}
		if len(d.Spec.Template.Spec.Containers) != 1 {
			t.Errorf("%d containers, want the relay alone", len(d.Spec.Template.Spec.Containers))
		}
		if a := d.Spec.Template.Spec.AutomountServiceAccountToken; a == nil || *a {
			t.Error("the service account token is mounted; the relay does not use the Kubernetes API")
		}
		checkRelayPod(t, "Deployment "+d.Name, d.Spec.Template, false, replicas)
		if len(r.services) != 1 || !r.services[0].Spec.PublishNotReadyAddresses {
			t.Error("want one Service that publishes not-ready addresses (standbys are scraped)")
		}
	}
}

func TestHelmChart(t *testing.T) {
	cases := []chartCase{
		{
			name:      "defaults",
			chart:     mainChart,
			args:      []string{"-f", ciValues("defaults-values.yaml")},
			wantKinds: []string{"Deployment", "Service"},
			check: func(t *testing.T, r *rendered) {
				standalone(1)(t, r)
				if len(r.deployments) == 1 {
					if env := envOf(r.deployments[0]); env["RELAY_LEADER_ELECTION"] != "true" || env["RELAY_SHUTDOWN_TIMEOUT"] != "15s" {
						t.Errorf("defaults: leader election %q, shutdown timeout %q; want true and 15s", env["RELAY_LEADER_ELECTION"], env["RELAY_SHUTDOWN_TIMEOUT"])
					}
					if g := r.deployments[0].Spec.Template.Spec.TerminationGracePeriodSeconds; g == nil || *g != 30 {
						t.Errorf("defaults: terminationGracePeriodSeconds %v, want 30", g)
					}
				}
			},
		},
		{
			name:      "monitoring on, inline secrets, TLS volume",
			chart:     mainChart,
			args:      []string{"-f", ciValues("monitoring-values.yaml")},
			wantKinds: []string{"ConfigMap", "Deployment", "PrometheusRule", "Secret", "Service", "ServiceMonitor"},
			check: func(t *testing.T, r *rendered) {
				standalone(1)(t, r)
				checkMonitoringFiles(t, r)
				checkNoInlineSecrets(t, r, inlinePostgresPassword, inlineNATSPassword)
				if len(r.secrets) == 1 {
					s := r.secrets[0]
					if string(s.Data["postgres-password"]) != inlinePostgresPassword || string(s.Data["nats-password"]) != inlineNATSPassword {
						t.Errorf("Secret %s holds keys %v, not the inline passwords", s.Name, slices.Sorted(maps.Keys(s.Data)))
					}
				}
				if len(r.deployments) == 1 && envOf(r.deployments[0])["RELAY_NATS_TLS_CA"] == "" {
					t.Error("extraEnv RELAY_NATS_TLS_CA is missing")
				}
			},
		},
		{
			name:      "existing secrets",
			chart:     mainChart,
			args:      []string{"-f", ciValues("existing-secret-values.yaml")},
			wantKinds: []string{"Deployment", "Service"},
			check: func(t *testing.T, r *rendered) {
				standalone(1)(t, r)
				if len(r.deployments) != 1 {
					return
				}
				env := envOf(r.deployments[0])
				for k, v := range map[string]string{
					"RELAY_POSTGRES_PASSWORD_FILE": "/etc/outbox-relay/secrets/postgres-password",
					"RELAY_NATS_CREDS":             "/etc/outbox-relay/secrets/nats.creds",
					"RELAY_NATS_TOKEN_FILE":        "/etc/outbox-relay/secrets/nats-token",
					"RELAY_LOG_LEVEL":              "debug", // extraEnv replaces the chart's
					"RELAY_PUBLISH_WINDOW":         "2048",
					"RELAY_SHUTDOWN_TIMEOUT":       "25s",
					"RELAY_ON_POISON":              "dead-letter",
					"RELAY_CREATE_STREAM":          "true",
				} {
					if env[k] != v {
						t.Errorf("env %s=%q, want %q", k, env[k], v)
					}
				}
				if g := r.deployments[0].Spec.Template.Spec.TerminationGracePeriodSeconds; g == nil || *g != 40 {
					t.Errorf("terminationGracePeriodSeconds %v, want 40", g)
				}
				wantSecrets := map[string]bool{"app-db-relay": true, "nats-relay": true}
				for _, v := range r.deployments[0].Spec.Template.Spec.Volumes {
					if v.Projected == nil {
						continue
					}
					for _, s := range v.Projected.Sources {
						if s.Secret != nil {
							delete(wantSecrets, s.Secret.Name)
						}
					}
				}
				if len(wantSecrets) > 0 {
					t.Errorf("the existing Secrets %v are not mounted", wantSecrets)
				}
			},
		},
		{
			name:      "every relay setting",
			chart:     mainChart,
			args:      []string{"-f", ciValues("settings-values.yaml")},
			wantKinds: []string{"Deployment", "Service"},
			check: func(t *testing.T, r *rendered) {
				standalone(1)(t, r)
				if len(r.deployments) != 1 {
					return
				}
				env := envOf(r.deployments[0])
				for k, v := range settingsEnv {
					if got, ok := env[k]; !ok || got != v {
						t.Errorf("env %s=%q (set: %t), want %q", k, got, ok, v)
					}
				}
			},
		},
		{
			name:      "three replicas",
			chart:     mainChart,
			args:      []string{"-f", ciValues("replicas-values.yaml")},
			wantKinds: []string{"Deployment", "PodDisruptionBudget", "Service"},
			check: func(t *testing.T, r *rendered) {
				standalone(3)(t, r)
				if len(r.deployments) == 1 {
					d := r.deployments[0]
					if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || d.Spec.Strategy.RollingUpdate == nil ||
						d.Spec.Strategy.RollingUpdate.MaxUnavailable.String() != "0" {
						t.Errorf("strategy %+v, want a rolling update that keeps every relay until its successor stands by", d.Spec.Strategy)
					}
				}
			},
		},
		{
			name:      "leader election off, one replica",
			chart:     mainChart,
			args:      []string{"-f", ciValues("defaults-values.yaml"), "--set", "relay.leaderElection=false"},
			wantKinds: []string{"Deployment", "Service"},
			check: func(t *testing.T, r *rendered) {
				standalone(1)(t, r)
				if len(r.deployments) == 1 && r.deployments[0].Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
					t.Errorf("strategy %s, want Recreate: without leader election two relays must never overlap", r.deployments[0].Spec.Strategy.Type)
				}
			},
		},
		{
			name:      "sidecar example",
			chart:     sidecarChart,
			release:   "shop",
			wantKinds: []string{"Deployment", "PodMonitor", "Service"},
			check:     sidecarExample(false),
		},
		{
			name:    "sidecar example, chart-made secret",
			chart:   sidecarChart,
			release: "shop",
			args: []string{
				"--set", "outbox-relay.postgres.existingSecret=", "--set", "outbox-relay.postgres.password=" + inlinePostgresPassword,
				"--set", "outbox-relay.secretFileMode=292",
			},
			wantKinds: []string{"Deployment", "PodMonitor", "Secret", "Service"},
			check:     sidecarExample(true),
		},
		{
			name:      "sidecar example, orders service",
			chart:     sidecarChart,
			release:   "orders",
			args:      []string{"-f", repoPath("helm/examples/sidecar-app/values-orders.yaml")},
			wantKinds: []string{"Deployment", "PodMonitor", "Service"},
			check: func(t *testing.T, r *rendered) {
				sidecarExample(false)(t, r)
				if len(r.deployments) != 1 {
					return
				}
				d := r.deployments[0]
				app := d.Spec.Template.Spec.Containers[0]
				if !slices.Equal(app.Args, []string{"serve"}) || app.ReadinessProbe == nil || app.ReadinessProbe.HTTPGet.Path != "/healthz" {
					t.Errorf("the app container runs %v with readiness probe %+v, want `orders serve` probed on /healthz", app.Args, app.ReadinessProbe)
				}
				var dbSecret bool
				for _, e := range app.Env {
					dbSecret = dbSecret || (e.Name == "DATABASE_URL" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil)
				}
				if !dbSecret {
					t.Errorf("DATABASE_URL does not come from a Secret: %+v", app.Env)
				}
				env := envOf(d)
				if env["RELAY_OTLP_TRACES_ENDPOINT"] == "" || env["RELAY_CREATE_PUBLICATION"] != "false" || env["RELAY_TABLE"] != "public.events" {
					t.Errorf("relay sidecar env %v, want the span export, no publication creation and the service's table", env)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			chart := tc.chart(t)
			release := tc.release
			if release == "" {
				release = "rel"
			}
			if _, stderr, err := runHelm(t, append([]string{"lint", "--strict", chart, "--namespace", namespace}, tc.args...)...); err != nil {
				t.Errorf("helm lint --strict: %v\n%s", err, stderr)
			}
			out, stderr, err := runHelm(t, append([]string{"template", release, chart, "--namespace", namespace}, tc.args...)...)
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, stderr)
			}
			r := decodeManifests(t, out)
			if !slices.Equal(r.kinds, tc.wantKinds) {
				t.Errorf("rendered %v, want %v", r.kinds, tc.wantKinds)
			}
			checkWiring(t, r)
			checkSecretReferences(t, r)
			checkNoInlineSecrets(t, r, inlinePostgresPassword, inlineNATSPassword)
			tc.check(t, r)
		})
	}
}

// settingsEnv is the environment ci/settings-values.yaml must give the
// relay: each value of the chart as its flag's RELAY_* variable.
var settingsEnv = map[string]string{
	"RELAY_POSTGRES_URL":                "postgres://relay@pgbouncer.example:6432/app?sslmode=verify-full",
	"RELAY_LEADER_POSTGRES_URL":         "postgres://relay@postgres.example:5432/app?sslmode=verify-full",
	"RELAY_POSTGRES_PASSWORD_FILE":      "/etc/outbox-relay/secrets/postgres-password",
	"RELAY_TABLE":                       "billing.outbox, billing.refunds",
	"RELAY_TABLE_COLUMNS":               "billing.refunds: id=refund_id",
	"RELAY_MESSAGE_ID":                  "table-id",
	"RELAY_COLUMN_ID":                   "event_id",
	"RELAY_COLUMN_AGGREGATE_TYPE":       "agg_type",
	"RELAY_COLUMN_AGGREGATE_ID":         "agg_id",
	"RELAY_COLUMN_EVENT_TYPE":           "type",
	"RELAY_COLUMN_PAYLOAD":              "body",
	"RELAY_COLUMN_HEADERS":              "", // set, to nothing: the table has none
	"RELAY_COLUMN_CREATED_AT":           "occurred_at,created_at",
	"RELAY_CREATE_PUBLICATION":          "false",
	"RELAY_CREATE_SLOT":                 "false",
	"RELAY_FAILOVER_SLOT":               "true",
	"RELAY_INITIAL_SNAPSHOT":            "where:sent_at IS NULL AND type <> 'test'",
	"RELAY_MESSAGE_PREFIX":              "outbox",
	"RELAY_ACCEPT_PUBLICATION":          "0123456789abcdef",
	"RELAY_RETENTION":                   "168h",
	"RELAY_RETENTION_INTERVAL":          "10m",
	"RELAY_RECOVER_MAX_TRANSACTION_AGE": "2h",
	"RELAY_STATE_BUCKET":                "billing-relay",
	"RELAY_SHARED_STREAM":               "true",
	"RELAY_CREATE_STREAM":               "true",
	"RELAY_STREAM_SUBJECTS":             "billing.>,outbox_dead_letter.>",
	"RELAY_STREAM_REPLICAS":             "3",
	"RELAY_DUPLICATE_WINDOW":            "10m",
	"RELAY_PUBLISH_MODE":                "async",
	"RELAY_ATOMIC_TRANSACTIONS":         "true",
	"RELAY_ATOMIC_BATCH_MAX":            "500",
	"RELAY_ON_LARGE_TRANSACTION":        "split",
	"RELAY_CLOUDEVENTS":                 "true",
	"RELAY_CLOUDEVENTS_SOURCE":          "/billing/outbox",
	"RELAY_CLOUDEVENTS_TYPE":            "com.example.{aggregate_type}.{event_type}",
	"RELAY_OTLP_TRACES_ENDPOINT":        "http://otel-collector.observability:4318/v1/traces",
	"RELAY_EVENT_BUFFER_BYTES":          "33554432",
	"RELAY_LEADER_LEASE_TIMEOUT":        "10s",
	"RELAY_LEADER_POLL_INTERVAL":        "2s",
	"RELAY_STALL_TIMEOUT":               "5m",
	"RELAY_PPROF":                       "true",
	"RELAY_SUBJECT_TEMPLATE":            "billing.{aggregate_type}.{event_type}",
	"RELAY_SLOT":                        "billing_relay",
	"RELAY_PUBLICATION":                 "billing_outbox",
	"RELAY_STREAM":                      "BILLING",
	"RELAY_ON_POISON":                   "dead-letter",
	"RELAY_DEAD_LETTER_SUBJECT":         "outbox_dead_letter.billing",
	"RELAY_LOG_LEVEL":                   "debug",
	"RELAY_LOG_FORMAT":                  "console",
	"RELAY_HTTP_ADDR":                   ":9090",
	"RELAY_SHUTDOWN_TIMEOUT":            "20s",
}

func sidecarExample(chartSecret bool) func(t *testing.T, r *rendered) {
	return func(t *testing.T, r *rendered) {
		if len(r.deployments) != 1 {
			t.Fatalf("%d Deployments, want the app's alone (the relay chart runs none in sidecar mode)", len(r.deployments))
		}
		d := r.deployments[0]
		var names []string
		for _, c := range d.Spec.Template.Spec.Containers {
			names = append(names, c.Name)
		}
		if !slices.Equal(names, []string{"app", "outbox-relay"}) {
			t.Errorf("the app's pod has containers %v, want [app outbox-relay] in one pod", names)
		}
		replicas := int32(1)
		if d.Spec.Replicas != nil {
			replicas = *d.Spec.Replicas
		}
		checkRelayPod(t, "Deployment "+d.Name, d.Spec.Template, true, replicas)
		if chartSecret {
			if len(r.secrets) != 1 || string(r.secrets[0].Data["postgres-password"]) != inlinePostgresPassword {
				t.Fatalf("want the relay chart's Secret with the password")
			}
			mounted := false
			for _, v := range d.Spec.Template.Spec.Volumes {
				if v.Projected != nil {
					if v.Projected.DefaultMode == nil || *v.Projected.DefaultMode != 0o444 {
						t.Errorf("secret files mode %v, want 0444 (secretFileMode=292)", v.Projected.DefaultMode)
					}
					for _, s := range v.Projected.Sources {
						mounted = mounted || (s.Secret != nil && s.Secret.Name == r.secrets[0].Name)
					}
				}
			}
			if !mounted {
				t.Errorf("the app's pod does not mount the relay chart's Secret %s", r.secrets[0].Name)
			}
		}
	}
}

func envOf(d appsv1.Deployment) map[string]string {
	env := map[string]string{}
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name == "outbox-relay" {
			for _, e := range c.Env {
				env[e.Name] = e.Value
			}
		}
	}
	return env
}

// Values the chart must refuse, at lint and at install.
func TestHelmChartRefusesBadValues(t *testing.T) {
	defaults := ciValues("defaults-values.yaml")
	cases := []struct {
		name  string
		chart func(t *testing.T) string
		args  []string
		want  []string
		// Schema violations fail helm lint too; a template's fail does not
		// (lint reports it as [INFO]), only helm template and install.
		schema bool
	}{
		{
			name:  "schema",
			chart: mainChart,
			args: []string{
				"-f", defaults, "--set", "relay.logFormat=xml", "--set", "relay.onPoison=skip",
				"--set", "replicaCount=two", "--set", "postgres.url=", "--set", "bogus=1", "--set", "relay.shutdownTimeoutSeconds=15s",
			},
			want: []string{
				"values don't meet the specifications of the schema", "/relay/logFormat", "/relay/onPoison",
				"/replicaCount", "/postgres/url", "bogus", "/relay/shutdownTimeoutSeconds",
			},
			schema: true,
		},
		{
			name:  "schema: the relay's settings",
			chart: mainChart,
			args: []string{
				"-f", defaults, "--set", "relay.publishMode=fast", "--set", "relay.onLargeTransaction=drop",
				"--set", "relay.initialSnapshot=everything", "--set", "relay.retention=7d", "--set", "relay.streamReplicas=7",
				"--set", "relay.otlpTracesEndpoint=otel-collector:4317", "--set", "relay.atomicBatchMax=0",
				"--set", "relay.columns.id=", "--set", "relay.stateBucket=a.b", "--set", "relay.atomicTransactions=yes",
				"--set", "relay.columns.sentAt=sent_at",
			},
			want: []string{
				"values don't meet the specifications of the schema", "/relay/publishMode", "/relay/onLargeTransaction",
				"/relay/initialSnapshot", "/relay/retention", "/relay/streamReplicas", "/relay/otlpTracesEndpoint",
				"/relay/atomicBatchMax", "/relay/columns/id", "/relay/stateBucket", "/relay/atomicTransactions", "sentAt",
			},
			schema: true,
		},
		{
			name:  "password in the leader lock's URL",
			chart: mainChart,
			args:  []string{"-f", defaults, "--set", "postgres.leaderUrl=postgres://relay:hunter2@db:5432/app"},
			want:  []string{"postgres.leaderUrl holds a password"},
		},
		{
			name:  "credentials in the NATS URL",
			chart: mainChart,
			args:  []string{"-f", defaults, "--set", "nats.url=nats://n1:4222\\,nats://relay:s3cret@n2:4222"},
			want:  []string{"nats.url holds credentials"},
		},
		{
			name:  "credentials in the OTLP endpoint",
			chart: mainChart,
			args:  []string{"-f", defaults, "--set", "relay.otlpTracesEndpoint=https://u:p@otel:4318/v1/traces"},
			want:  []string{"relay.otlpTracesEndpoint holds credentials"},
		},
		{
			name:  "atomic transactions in fast batches",
			chart: mainChart,
			args:  []string{"-f", defaults, "--set", "relay.atomicTransactions=true", "--set", "relay.publishMode=batch"},
			want:  []string{"relay.atomicTransactions=true with relay.publishMode=batch"},
		},
		{
			name:  "a CloudEvents source without CloudEvents",
			chart: mainChart,
			args:  []string{"-f", defaults, "--set", "relay.cloudeventsSource=/shop"},
			want:  []string{"relay.cloudeventsSource is set but relay.cloudevents is false"},
		},
		{
			name:  "retention below the recovery window",
			chart: mainChart,
			args:  []string{"-f", defaults, "--set", "relay.retention=59m59.5s"},
			want:  []string{"relay.retention=59m59.5s is below relay.recoverMaxTransactionAge=1h"},
		},
		{
			name:  "retention without a created_at column",
			chart: mainChart,
			args:  []string{"-f", defaults, "--set", "relay.retention=168h", "--set", "relay.columns.createdAt="},
			want:  []string{"relay.retention is set but relay.columns.createdAt is empty"},
		},
		{
			name:  "leader poll interval not below the lease",
			chart: mainChart,
			args:  []string{"-f", defaults, "--set", "relay.leaderPollInterval=5s"},
			want:  []string{"relay.leaderPollInterval=5s must be below relay.leaderLeaseTimeout=5s"},
		},
		{
			name:   "required values missing",
			chart:  mainChart,
			want:   []string{"/postgres/url", "/nats/url"},
			schema: true,
		},
		{
			name:  "leader election off with three replicas",
			chart: mainChart,
			args:  []string{"-f", defaults, "--set", "relay.leaderElection=false", "--set", "replicaCount=3"},
			want:  []string{"relay.leaderElection=false with replicaCount=3"},
		},
		{
			name:  "password in the URL",
			chart: mainChart,
			args:  []string{"-f", defaults, "--set", "postgres.url=postgres://relay:hunter2@db:5432/app"},
			want:  []string{"postgres.url holds a password"},
		},
		{
			name:  "secret inline in extraEnv",
			chart: mainChart,
			args:  []string{"-f", defaults, "--set-json", `extraEnv=[{"name":"RELAY_NATS_TOKEN","value":"t0ken"}]`},
			want:  []string{"extraEnv RELAY_NATS_TOKEN has an inline value"},
		},
		{
			name:  "grace period shorter than the shutdown",
			chart: mainChart,
			args:  []string{"-f", defaults, "--set", "terminationGracePeriodSeconds=16"},
			want:  []string{"terminationGracePeriodSeconds=16 must be at least relay.shutdownTimeoutSeconds (15) + 5"},
		},
		{
			name:  "sidecar without leader election",
			chart: sidecarChart,
			args:  []string{"--set", "outbox-relay.relay.leaderElection=false"},
			want:  []string{"relay.leaderElection=false in sidecar mode"},
		},
		{
			name:  "sidecar template with a standalone relay chart",
			chart: sidecarChart,
			args:  []string{"--set", "outbox-relay.mode=standalone"},
			want:  []string{`mode is not "sidecar"`},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			chart := tc.chart(t)
			cmds := [][]string{{"template", "rel", chart, "--namespace", namespace}}
			if tc.schema {
				cmds = append(cmds, []string{"lint", "--strict", chart, "--namespace", namespace})
			}
			for _, cmd := range cmds {
				out, stderr, err := runHelm(t, append(cmd, tc.args...)...)
				if err == nil {
					t.Errorf("helm %s accepted the values", cmd[0])
					continue
				}
				for _, w := range tc.want {
					if !strings.Contains(out+stderr, w) {
						t.Errorf("helm %s failed without saying %q:\n%s%s", cmd[0], w, out, stderr)
					}
				}
			}
		})
	}
}

// The chart's files that other charts and tools read are where the
// templates look for them.
func TestHelmChartFiles(t *testing.T) {
	for _, f := range []string{
		"Chart.yaml", "values.yaml", "values.schema.json", "README.md",
		"templates/NOTES.txt", "templates/_helpers.tpl",
		"files/outbox-relay-alerts.yaml", "files/outbox-relay-dashboard.json",
	} {
		if _, err := os.Stat(repoPath("helm", "outbox-relay", filepath.FromSlash(f))); err != nil {
			t.Errorf("helm/outbox-relay/%s: %v", f, err)
		}
	}
	helpers, err := os.ReadFile(repoPath("helm", "outbox-relay", "templates", "_helpers.tpl"))
	if err != nil {
		t.Fatal(err)
	}
	readme, _ := os.ReadFile(repoPath("helm", "outbox-relay", "README.md"))
	for _, name := range []string{
		"outbox-relay.sidecarContainer", "outbox-relay.sidecarVolumes", "outbox-relay.sidecarPodLabels",
		"outbox-relay.sidecarPodAnnotations", "outbox-relay.terminationGracePeriodSeconds",
	} {
		if !bytes.Contains(helpers, []byte(`define "`+name+`"`)) {
			t.Errorf("_helpers.tpl does not define %s", name)
		}
		if !bytes.Contains(readme, []byte(name)) {
			t.Errorf("the chart's README does not document %s", name)
		}
	}
	// Every value of values.yaml is in the README's table.
	values, err := os.ReadFile(repoPath("helm", "outbox-relay", "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := sigsyaml.Unmarshal(values, &v); err != nil {
		t.Fatal(err)
	}
	for _, key := range leafKeys("", v) {
		if !bytes.Contains(readme, []byte("`"+key+"`")) {
			t.Errorf("the chart's README does not document the value %s", key)
		}
	}
}

// leafKeys lists the dotted keys of the values that are not maps, and of
// maps that are empty by default.
func leafKeys(prefix string, v map[string]any) []string {
	var keys []string
	for k, val := range v {
		key := path.Join(prefix, k)
		if m, ok := val.(map[string]any); ok && len(m) > 0 && !strings.HasSuffix(key, "labels") && !strings.HasSuffix(key, "annotations") &&
			key != "resources" && key != "podSecurityContext" && key != "securityContext" {
			keys = append(keys, leafKeys(key, m)...)
			continue
		}
		keys = append(keys, strings.ReplaceAll(key, "/", "."))
	}
	slices.Sort(keys)
	return keys
}
