package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// The monitoring files the Helm chart ships, and their documentation.
var (
	dashboardFile = filepath.Join("helm", "outbox-relay", "files", "outbox-relay-dashboard.json")
	alertsFile    = filepath.Join("helm", "outbox-relay", "files", "outbox-relay-alerts.yaml")
	monitoringDoc = "README.md" // the metric table lives in the README
)

func readRepoFile(t *testing.T, rel string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(e2e.RepoRoot(), rel))
	require.NoError(t, err)
	return string(data)
}

// metricName matches the names of metrics the relay exports: its own, and
// those of the Go and process collectors.
var metricName = regexp.MustCompile(`\b(?:outbox_relay|process|go)_[a-zA-Z0-9_]*[a-zA-Z0-9]`)

// dashboardExprs returns every PromQL query of the dashboard: the panels'
// targets and the template variables' queries, keyed by where they are.
func dashboardExprs(t *testing.T, text string) map[string]string {
	t.Helper()
	var dash any
	require.NoError(t, json.Unmarshal([]byte(text), &dash), "%s is not valid JSON", dashboardFile)
	exprs := map[string]string{}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, child := range v {
				if s, ok := child.(string); ok && (k == "expr" || k == "definition" || (k == "query" && strings.Contains(path, "templating"))) {
					exprs[path+"."+k] = s
					continue
				}
				walk(path+"."+k, child)
			}
		case []any:
			for i, child := range v {
				walk(fmt.Sprintf("%s[%d]", path, i), child)
			}
		}
	}
	walk("", dash)
	return exprs
}

// alertRule is one rule of the alerts file, as far as the tests need it.
type alertRule struct {
	name        string
	expr        string
	labels      map[string]string
	annotations map[string]string
}

// parseAlertRules reads the rule file's alerting rules with a small parser
// for the subset of YAML the file uses (block scalars for expr, quoted
// one-line strings elsewhere), so the test needs no YAML library; promtool
// (monitoring/check.sh) validates the file as Prometheus reads it.
func parseAlertRules(t *testing.T, text string) []alertRule {
	t.Helper()
	var rules []alertRule
	var cur *alertRule
	section := ""
	lines := strings.Split(text, "\n")
	indentOf := func(s string) int { return len(s) - len(strings.TrimLeft(s, " ")) }
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if name, ok := strings.CutPrefix(trimmed, "- alert:"); ok {
			rules = append(rules, alertRule{name: strings.TrimSpace(name), labels: map[string]string{}, annotations: map[string]string{}})
			cur, section = &rules[len(rules)-1], ""
			continue
		}
		if strings.HasPrefix(trimmed, "- record:") {
			t.Fatalf("%s: recording rules are not expected (line %d)", alertsFile, i+1)
		}
		if cur == nil {
			continue
		}
		key, value, ok := strings.Cut(trimmed, ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		switch {
		case key == "expr" && (value == "|" || value == "|-" || value == ">"):
			indent := indentOf(line)
			var body []string
			for i+1 < len(lines) && (strings.TrimSpace(lines[i+1]) == "" || indentOf(lines[i+1]) > indent) {
				i++
				body = append(body, strings.TrimSpace(lines[i]))
			}
			cur.expr = strings.TrimSpace(strings.Join(body, "\n"))
		case key == "expr":
			cur.expr = unquoteYAML(value)
		case key == "labels" || key == "annotations":
			section = key
		case key == "for" || key == "keep_firing_for":
			section = ""
		case section == "labels":
			cur.labels[key] = unquoteYAML(value)
		case section == "annotations":
			cur.annotations[key] = unquoteYAML(value)
		}
	}
	return rules
}

func unquoteYAML(s string) string {
	if len(s) >= 2 && (s[0] == '"' && s[len(s)-1] == '"' || s[0] == '\'' && s[len(s)-1] == '\'') {
		s = s[1 : len(s)-1]
		return strings.ReplaceAll(s, `\"`, `"`)
	}
	return s
}

// exposition is one scrape of /metrics: the samples, and the type of each
// metric family.
type exposition struct {
	samples map[string]float64 // "name{labels}" -> value, as e2e.ParseMetrics
	types   map[string]string  // family name -> counter, gauge, histogram...
	names   map[string]bool    // sample names without labels
}

func scrape(t *testing.T, r *e2e.Relay) exposition {
	t.Helper()
	code, body := r.Get("/metrics")
	require.Equal(t, http.StatusOK, code, "GET /metrics")
	return parseExposition(body)
}

// parseExposition reads the Prometheus text format.
func parseExposition(body string) exposition {
	x := exposition{samples: e2e.ParseMetrics(body), types: map[string]string{}, names: map[string]bool{}}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			x.types[f[2]] = f[3]
		}
	}
	for key := range x.samples {
		name, _, _ := strings.Cut(key, "{")
		x.names[name] = true
	}
	return x
}

// family returns the family a sample name belongs to and its type:
// histogram series end in _bucket, _sum or _count.
func (x exposition) family(name string) (string, string) {
	if typ, ok := x.types[name]; ok {
		return name, typ
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if typ := x.types[base]; typ == "histogram" || typ == "summary" {
				return base, typ
			}
		}
	}
	return "", ""
}

// hasLabel reports whether a sample of name carries label="value".
func (x exposition) hasLabel(name, label, value string) bool {
	want := fmt.Sprintf(`%s=%q`, label, value)
	for key := range x.samples {
		n, labels, ok := strings.Cut(key, "{")
		if ok && n == name && slices.Contains(splitLabels(strings.TrimSuffix(labels, "}")), want) {
			return true
		}
	}
	return false
}

var labelPair = regexp.MustCompile(`[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"`)

func splitLabels(s string) []string { return labelPair.FindAllString(s, -1) }

var (
	// selector matches name{matchers}; matcher one label matcher in it.
	selector = regexp.MustCompile(`\b((?:outbox_relay|process|go)_[a-zA-Z0-9_]*)\{([^}]*)\}`)
	matcher  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
	// counterFunc matches functions that need a counter (or a histogram's
	// series); gaugeFunc those that need a gauge.
	counterFunc = regexp.MustCompile(`\b(rate|irate|increase|resets)\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)`)
	gaugeFunc   = regexp.MustCompile(`\b(deriv|delta|idelta|predict_linear)\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)`)
)

// checkExpr reports every problem of one query against a scrape: a metric
// the relay does not export, a label value no sample has, or a function
// applied to a metric of the wrong type.
func checkExpr(x exposition, where, expr string) []string {
	var problems []string
	for _, name := range metricName.FindAllString(expr, -1) {
		if x.names[name] {
			continue
		}
		if typ := x.types[name]; typ == "histogram" {
			problems = append(problems, fmt.Sprintf("%s: %s is a histogram; query %s_bucket, _sum or _count", where, name, name))
			continue
		}
		problems = append(problems, fmt.Sprintf("%s: %s is not exported by the relay", where, name))
	}
	for _, m := range selector.FindAllStringSubmatch(expr, -1) {
		name := m[1]
		for _, lm := range matcher.FindAllStringSubmatch(m[2], -1) {
			label, op, value := lm[1], lm[2], lm[3]
			if label == "job" || label == "instance" || strings.Contains(value, "$") {
				continue
			}
			var values []string
			switch {
			case op == "=":
				values = []string{value}
			case op == "=~" && regexp.MustCompile(`^[a-zA-Z0-9_+.|]+$`).MatchString(value):
				values = strings.Split(value, "|")
			}
			for _, v := range values {
				if !x.hasLabel(name, label, v) {
					problems = append(problems, fmt.Sprintf("%s: no sample %s{%s=%q}", where, name, label, v))
				}
			}
		}
	}
	for _, m := range counterFunc.FindAllStringSubmatch(expr, -1) {
		if typ := familyType(x, m[2]); typ != "counter" && typ != "histogram" {
			problems = append(problems, fmt.Sprintf("%s: %s() of %s, a %s", where, m[1], m[2], typ))
		}
	}
	for _, m := range gaugeFunc.FindAllStringSubmatch(expr, -1) {
		if typ := familyType(x, m[2]); typ != "gauge" {
			problems = append(problems, fmt.Sprintf("%s: %s() of %s, a %s", where, m[1], m[2], typ))
		}
	}
	return problems
}

func familyType(x exposition, name string) string {
	_, typ := x.family(name)
	if typ == "" {
		return "metric of unknown type"
	}
	return typ
}

// TestMonitoringExprCheckCatchesMistakes checks the checker of the test
// below on a small exposition.
func TestMonitoringExprCheckCatchesMistakes(t *testing.T) {
	t.Parallel()
	x := parseExposition(`# HELP outbox_relay_leader Leader.
# TYPE outbox_relay_leader gauge
outbox_relay_leader 1
# TYPE outbox_relay_sink_published_total counter
outbox_relay_sink_published_total 5
# TYPE outbox_relay_cdc_slot_wal_status gauge
outbox_relay_cdc_slot_wal_status{status="lost"} 0
outbox_relay_cdc_slot_wal_status{status="reserved"} 1
# TYPE outbox_relay_pump_commit_to_ack_seconds histogram
outbox_relay_pump_commit_to_ack_seconds_bucket{le="1"} 2
outbox_relay_pump_commit_to_ack_seconds_bucket{le="+Inf"} 2
outbox_relay_pump_commit_to_ack_seconds_sum 0.5
outbox_relay_pump_commit_to_ack_seconds_count 2
`)
	for expr, want := range map[string]string{
		`outbox_relay_leader == 1`:                                                           "",
		`rate(outbox_relay_sink_published_total{job=~"$job"}[5m])`:                           "",
		`histogram_quantile(0.99, rate(outbox_relay_pump_commit_to_ack_seconds_bucket[5m]))`: "",
		`rate(outbox_relay_pump_commit_to_ack_seconds_sum[5m])`:                              "",
		`outbox_relay_cdc_slot_wal_status{status=~"reserved|lost"} == 1`:                     "",
		`deriv(outbox_relay_leader[5m])`:                                                     "",
		`outbox_relay_sink_publishd_total > 0`:                                               "outbox_relay_sink_publishd_total is not exported",
		`histogram_quantile(0.99, outbox_relay_pump_commit_to_ack_seconds)`:                  "is a histogram",
		`outbox_relay_cdc_slot_wal_status{status="gone"} == 1`:                               `no sample outbox_relay_cdc_slot_wal_status{status="gone"}`,
		`outbox_relay_cdc_slot_wal_status{job="x", status=~"lost|unreserved"} == 1`:          `no sample outbox_relay_cdc_slot_wal_status{status="unreserved"}`,
		`increase(outbox_relay_leader[5m]) > 0`:                                              "increase() of outbox_relay_leader, a gauge",
		`deriv(outbox_relay_sink_published_total[5m])`:                                       "deriv() of outbox_relay_sink_published_total, a counter",
	} {
		problems := strings.Join(checkExpr(x, "test", expr), "\n")
		if want == "" {
			assert.Empty(t, problems, expr)
		} else {
			assert.Contains(t, problems, want, expr)
		}
	}
}

// TestMonitoringFilesUseOnlyExportedMetrics runs a real relay and checks
// every query of the dashboard and every alerting rule against its /metrics:
// each metric named exists (histograms through their _bucket, _sum and
// _count series), each label value selected exists, and rate() and friends
// get counters while deriv() gets gauges. It also checks that
// the README documents exactly the metrics the relay exports.
func TestMonitoringFilesUseOnlyExportedMetrics(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := f.startRelay(t)
	f.write(t, 3, "monitoring-a")
	f.write(t, 2, "monitoring-b")
	f.waitStream(t, 5, 30*time.Second)
	require.Eventually(t, func() bool { return r.Metrics()["outbox_relay_sink_published_total"] >= 5 }, 10*time.Second, 50*time.Millisecond,
		"the relay should count the 5 published events")
	x := scrape(t, r)

	dashText := readRepoFile(t, dashboardFile)
	dashExprs := dashboardExprs(t, dashText)
	require.Greater(t, len(dashExprs), 20, "the dashboard's queries should be found")
	alertsText := readRepoFile(t, alertsFile)
	rules := parseAlertRules(t, alertsText)
	require.GreaterOrEqual(t, len(rules), 10, "the alerting rules should be found")

	var problems []string
	keys := make([]string, 0, len(dashExprs))
	for k := range dashExprs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	used := map[string]bool{}
	for _, k := range keys {
		problems = append(problems, checkExpr(x, dashboardFile+" "+k, dashExprs[k])...)
		for _, n := range metricName.FindAllString(dashExprs[k], -1) {
			used[n] = true
		}
	}
	for _, rule := range rules {
		require.NotEmpty(t, rule.expr, "alert %s has no expr", rule.name)
		problems = append(problems, checkExpr(x, alertsFile+" "+rule.name, rule.expr)...)
		for _, n := range metricName.FindAllString(rule.expr, -1) {
			used[n] = true
		}
	}
	// Metric names anywhere else in the files (descriptions, legends) must
	// exist too.
	for _, file := range []struct{ name, text string }{{dashboardFile, dashText}, {alertsFile, alertsText}} {
		for _, n := range metricName.FindAllString(file.text, -1) {
			if fam, _ := x.family(n); !x.names[n] && fam != n {
				problems = append(problems, fmt.Sprintf("%s: mentions %s, which the relay does not export", file.name, n))
			}
		}
	}
	require.Empty(t, problems, "monitoring files reference what the relay does not export:\n%s", strings.Join(problems, "\n"))

	// Every relay metric is shown by a panel or watched by a rule.
	var unused []string
	for fam := range x.types {
		if !strings.HasPrefix(fam, "outbox_relay_") {
			continue
		}
		found := used[fam]
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			found = found || used[fam+suffix]
		}
		if !found {
			unused = append(unused, fam)
		}
	}
	sort.Strings(unused)
	require.Empty(t, unused, "relay metrics neither the dashboard nor the alerts use")

	// The README: its metric table lists exactly the relay's
	// families.
	doc := readRepoFile(t, monitoringDoc)
	documented := map[string]bool{}
	tableRow := regexp.MustCompile("(?m)^\\|\\s*`(outbox_relay_[a-z0-9_]+)`")
	for _, m := range tableRow.FindAllStringSubmatch(doc, -1) {
		documented[m[1]] = true
	}
	for fam, typ := range x.types {
		if strings.HasPrefix(fam, "outbox_relay_") {
			assert.True(t, documented[fam], "%s (%s) is exported but missing from the metric table of %s", fam, typ, monitoringDoc)
		}
	}
	for fam := range documented {
		assert.Contains(t, x.types, fam, "%s documents %s, which the relay does not export", monitoringDoc, fam)
	}
	for _, n := range metricName.FindAllString(doc, -1) {
		if fam, _ := x.family(n); !x.names[n] && fam != n {
			t.Errorf("%s mentions %s, which the relay does not export", monitoringDoc, n)
		}
	}
}

// TestMonitoringFilesAreConsistent checks, without servers, what promtool
// does not: the dashboard's structure (datasource variable, panel ids and
// layout) and that every alert carries a severity and the annotations whose
// runbook exists in docs/monitoring.md.
func TestMonitoringFilesAreConsistent(t *testing.T) {
	t.Parallel()
	var dash struct {
		SchemaVersion int    `json:"schemaVersion"`
		UID           string `json:"uid"`
		Title         string `json:"title"`
		Templating    struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID         int    `json:"id"`
			Type       string `json:"type"`
			Title      string `json:"title"`
			Datasource *struct {
				Type string `json:"type"`
				UID  string `json:"uid"`
			} `json:"datasource"`
			GridPos struct{ H, W, X, Y int } `json:"gridPos"`
			Targets []struct {
				Expr       string `json:"expr"`
				RefID      string `json:"refId"`
				Datasource *struct {
					Type string `json:"type"`
					UID  string `json:"uid"`
				} `json:"datasource"`
			} `json:"targets"`
		} `json:"panels"`
	}
	require.NoError(t, json.Unmarshal([]byte(readRepoFile(t, dashboardFile)), &dash))
	require.GreaterOrEqual(t, dash.SchemaVersion, 36, "schemaVersion")
	require.NotEmpty(t, dash.UID)
	vars := map[string]string{}
	for _, v := range dash.Templating.List {
		vars[v.Name] = v.Type
	}
	require.Equal(t, "datasource", vars["datasource"], "a datasource variable")
	require.Equal(t, "query", vars["job"], "a job variable")
	require.Equal(t, "query", vars["instance"], "an instance variable")

	ids := map[int]string{}
	cells := map[[2]int]string{}
	for _, p := range dash.Panels {
		require.NotZero(t, p.ID, "panel %q has no id", p.Title)
		require.NotContains(t, ids, p.ID, "panel id %d is used by %q and %q", p.ID, ids[p.ID], p.Title)
		ids[p.ID] = p.Title
		require.NotEmpty(t, p.Title, "panel %d has no title", p.ID)
		for x := p.GridPos.X; x < p.GridPos.X+p.GridPos.W; x++ {
			for y := p.GridPos.Y; y < p.GridPos.Y+p.GridPos.H; y++ {
				require.NotContains(t, cells, [2]int{x, y}, "panels %q and %q overlap", cells[[2]int{x, y}], p.Title)
				cells[[2]int{x, y}] = p.Title
			}
		}
		require.LessOrEqual(t, p.GridPos.X+p.GridPos.W, 24, "panel %q is wider than the grid", p.Title)
		if p.Type == "row" {
			continue
		}
		require.NotNil(t, p.Datasource, "panel %q has no datasource", p.Title)
		require.Equal(t, "${datasource}", p.Datasource.UID, "panel %q must use the datasource variable", p.Title)
		require.NotEmpty(t, p.Targets, "panel %q has no queries", p.Title)
		for _, tg := range p.Targets {
			require.NotEmpty(t, tg.Expr, "panel %q: empty query", p.Title)
			require.NotNil(t, tg.Datasource, "panel %q: query %s has no datasource", p.Title, tg.RefID)
			require.Equal(t, "${datasource}", tg.Datasource.UID, "panel %q: query %s", p.Title, tg.RefID)
			require.Contains(t, tg.Expr, `job=~"$job"`, "panel %q: query %s ignores the job variable", p.Title, tg.RefID)
			require.Contains(t, tg.Expr, `instance=~"$instance"`, "panel %q: query %s ignores the instance variable", p.Title, tg.RefID)
		}
	}

	rules := parseAlertRules(t, readRepoFile(t, alertsFile))
	doc := readRepoFile(t, filepath.Join("docs", "monitoring.md")) // the runbooks
	want := []string{
		"OutboxRelayDown", "OutboxRelayNoLeader", "OutboxRelayStalled", "OutboxRelayLagHigh",
		"OutboxRelayRetainedWALHigh", "OutboxRelaySlotWALStatus", "OutboxRelaySlotMissing",
		"OutboxRelayPublicationProblem", "OutboxRelayPublishErrors", "OutboxRelayPoisonEvents", "OutboxRelayDisconnected",
		"OutboxRelayBlocked", "OutboxRelayEventsReordered", "OutboxRelayUnverifiedReplays", "OutboxRelayMarkNotSaved",
		"OutboxRelayWaitingForStandby", "OutboxRelayCleanupFailing", "OutboxRelayMessagesIgnored",
	}
	var names []string
	for _, r := range rules {
		if !slices.Contains(names, r.name) {
			names = append(names, r.name)
		}
		require.Contains(t, []string{"critical", "warning", "info"}, r.labels["severity"], "alert %s: severity", r.name)
		require.NotEmpty(t, r.annotations["summary"], "alert %s: summary", r.name)
		require.NotEmpty(t, r.annotations["description"], "alert %s: description", r.name)
		anchor := strings.ToLower(r.name)
		require.Equal(t, "https://github.com/outbox-relay/outbox-relay/blob/main/docs/monitoring.md#"+anchor, r.annotations["runbook_url"], "alert %s: runbook_url", r.name)
		require.Regexp(t, "(?m)^#+ "+r.name+"\\s*$", doc, "%s has no runbook heading for %s (anchor #%s)", monitoringDoc, r.name, anchor)
	}
	require.ElementsMatch(t, want, names, "alerts in %s", alertsFile)

	// Every alert is unit-tested with promtool.
	tests := readRepoFile(t, filepath.Join("monitoring", "alerts_test.yaml"))
	for _, n := range want {
		require.Contains(t, tests, "alertname: "+n+"\n", "monitoring/alerts_test.yaml has no test of %s", n)
	}
}

// slotState is one reading of the slot and the WAL from PostgreSQL.
type slotState struct {
	current, restart, confirmed pglogrepl.LSN
	safeWALSize                 int64 // -1 when unlimited
	walStatus                   string
}

func (s slotState) retained() float64 { return float64(s.current - s.restart) }
func (s slotState) lag() float64      { return float64(s.current - s.confirmed) }

// readSlot reads the slot's state; safe to call from any goroutine.
func (f *fixture) readSlot() (slotState, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, f.pg.URL(f.db))
	if err != nil {
		return slotState{}, err
	}
	defer conn.Close(ctx)
	var current, restart, confirmed string
	var s slotState
	err = conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text, restart_lsn::text, confirmed_flush_lsn::text,
			COALESCE(safe_wal_size, -1), wal_status
		FROM pg_replication_slots WHERE slot_name = 'outbox_relay'`).Scan(&current, &restart, &confirmed, &s.safeWALSize, &s.walStatus)
	if err != nil {
		return slotState{}, err
	}
	for _, p := range []struct {
		text string
		lsn  *pglogrepl.LSN
	}{{current, &s.current}, {restart, &s.restart}, {confirmed, &s.confirmed}} {
		if *p.lsn, err = pglogrepl.ParseLSN(p.text); err != nil {
			return slotState{}, err
		}
	}
	return s, nil
}

func (f *fixture) slotState(t *testing.T) slotState {
	t.Helper()
	s, err := f.readSlot()
	require.NoError(t, err, "read pg_replication_slots")
	return s
}

// slotTolerance is how far a slot gauge may be from PostgreSQL's own
// reading: a little WAL (running-xacts records, checkpoints) is written
// between a poll and the test's query, and 64 KiB is far below what the
// bursts below write.
func slotTolerance(want float64) float64 { return math.Max(64<<10, 0.03*want) }

// within asserts that got is within tolerance of PostgreSQL's value read
// before or after the scrape, whichever is closer.
func within(c *assert.CollectT, what string, got, before, after float64) {
	lo, hi := math.Min(before, after), math.Max(before, after)
	tol := slotTolerance(hi)
	assert.True(c, got >= lo-tol && got <= hi+tol,
		"%s: relay says %.0f, PostgreSQL says %.0f..%.0f (tolerance %.0f)", what, got, lo, hi, tol)
}

// assertSlotGauges compares, until they agree, the relay's slot gauges with
// what pg_replication_slots says: retained WAL (current - restart_lsn), lag
// (current - confirmed_flush_lsn), the confirmed position, safe_wal_size and
// wal_status. It returns the last agreeing reading.
func assertSlotGauges(t *testing.T, f *fixture, r *e2e.Relay, phase string) (slotState, map[string]float64) {
	t.Helper()
	return checkSlotGauges(t, f, r, phase, true)
}

// checkSlotGauges is assertSlotGauges, with the check of
// outbox_relay_cdc_lag_bytes optional.
func checkSlotGauges(t *testing.T, f *fixture, r *e2e.Relay, phase string, checkLag bool) (slotState, map[string]float64) {
	t.Helper()
	var state slotState
	var metrics map[string]float64
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		before, err := f.readSlot()
		if !assert.NoError(c, err) {
			return
		}
		m := r.Metrics()
		after, err := f.readSlot()
		if !assert.NoError(c, err) || !assert.NotNil(c, m, "scrape") {
			return
		}
		within(c, phase+": outbox_relay_cdc_slot_retained_wal_bytes", m["outbox_relay_cdc_slot_retained_wal_bytes"], before.retained(), after.retained())
		if checkLag {
			within(c, phase+": outbox_relay_cdc_lag_bytes", m["outbox_relay_cdc_lag_bytes"], before.lag(), after.lag())
		}
		within(c, phase+": outbox_relay_cdc_confirmed_lsn_bytes", m["outbox_relay_cdc_confirmed_lsn_bytes"], float64(before.confirmed), float64(after.confirmed))
		if before.safeWALSize < 0 {
			assert.Equal(c, -1.0, m["outbox_relay_cdc_slot_safe_wal_size_bytes"], phase+": safe_wal_size is unlimited")
		} else {
			within(c, phase+": outbox_relay_cdc_slot_safe_wal_size_bytes", m["outbox_relay_cdc_slot_safe_wal_size_bytes"], float64(before.safeWALSize), float64(after.safeWALSize))
		}
		for _, status := range []string{"reserved", "extended", "unreserved", "lost", "missing"} {
			want := 0.0
			if status == after.walStatus {
				want = 1
			}
			assert.Equal(c, want, m[`outbox_relay_cdc_slot_wal_status{status="`+status+`"}`], "%s: wal_status %s (PostgreSQL: %s)", phase, status, after.walStatus)
		}
		state, metrics = after, m
	}, 15*time.Second, 100*time.Millisecond, "%s: the relay's slot gauges should agree with pg_replication_slots", phase)
	t.Logf("%s: retained WAL %.0f (PostgreSQL %.0f), lag %.0f (PostgreSQL %.0f), safe_wal_size %.0f (PostgreSQL %d), wal_status %s",
		phase, metrics["outbox_relay_cdc_slot_retained_wal_bytes"], state.retained(), metrics["outbox_relay_cdc_lag_bytes"], state.lag(),
		metrics["outbox_relay_cdc_slot_safe_wal_size_bytes"], state.safeWALSize, state.walStatus)
	return state, metrics
}

// TestMetricSlotGaugesMatchPostgres checks the slot and lag gauges against
// pg_replication_slots while idle, right after bursts of writes that the
// relay publishes at once, and while NATS is down so the lag cannot drain;
// and the oldest-pending and progress gauges the stall alerts use.
func TestMetricSlotGaugesMatchPostgres(t *testing.T) {
	t.Parallel()
	// A finite max_slot_wal_keep_size, so safe_wal_size is a number.
	f := newFixture(t, testenv.WithPostgresConfig("max_slot_wal_keep_size", "1GB"))
	r := f.startRelay(t, "RELAY_SLOT_POLL_INTERVAL", "500ms", "RELAY_STATUS_INTERVAL", "200ms")
	f.write(t, 10, "warmup")
	f.waitStream(t, 10, 30*time.Second)

	// Idle: everything published, nothing pending.
	_, m := assertSlotGauges(t, f, r, "idle")
	require.Equal(t, 1.0, m["outbox_relay_leader"])
	require.Equal(t, 1.0, m["outbox_relay_cdc_connected"])
	require.Equal(t, 1.0, m["outbox_relay_sink_connected"])
	require.Equal(t, 0.0, m["outbox_relay_cdc_oldest_pending_age_seconds"], "nothing is pending")
	require.InDelta(t, float64(time.Now().UnixNano())/1e9, m["outbox_relay_pump_last_progress_timestamp_seconds"], 30,
		"the last ack was moments ago")

	// A burst the relay publishes as it comes: the retained WAL grows by
	// it (restart_lsn moves only at running-xacts records), the lag
	// returns to about 0.
	before := f.slotState(t)
	for i := range 10 {
		f.write(t, 100, tagf("burst-%d", i))
	}
	burst := float64(f.currentWAL(t) - before.current)
	require.Greater(t, burst, 4*float64(64<<10), "the burst should write several times the tolerance in WAL")
	f.waitStream(t, 1010, time.Minute)
	assertSlotGauges(t, f, r, "after a published burst")

	// A burst while NATS is down: nothing can be acknowledged, so the lag
	// holds at least the burst, and the relay must say so.
	f.nats.Stop(t)
	require.Eventually(t, func() bool { return r.Metrics()["outbox_relay_sink_connected"] == 0 }, 10*time.Second, 50*time.Millisecond,
		"outbox_relay_sink_connected should drop to 0")
	stopped := f.slotState(t)
	writtenAt := time.Now()
	for i := range 10 {
		f.write(t, 100, tagf("held-%d", i))
	}
	held := float64(f.currentWAL(t) - stopped.current)
	state, m := assertSlotGauges(t, f, r, "NATS down after a burst")
	require.GreaterOrEqual(t, state.lag(), held, "PostgreSQL's lag holds the unpublished burst")
	require.GreaterOrEqual(t, m["outbox_relay_cdc_lag_bytes"], held-slotTolerance(held), "the relay's lag shows the unpublished burst")
	require.Equal(t, 1.0, m["outbox_relay_cdc_connected"], "still streaming from PostgreSQL")
	require.Equal(t, 1.0, m["outbox_relay_leader"])

	// The oldest pending event's age follows the clock.
	require.Eventually(t, func() bool {
		age := r.Metrics()["outbox_relay_cdc_oldest_pending_age_seconds"]
		return age >= 2 && age <= time.Since(writtenAt).Seconds()+1
	}, 15*time.Second, 100*time.Millisecond, "outbox_relay_cdc_oldest_pending_age_seconds should count from the first unpublished commit")
	lastProgress := r.Metrics()["outbox_relay_pump_last_progress_timestamp_seconds"]
	require.Less(t, lastProgress, float64(writtenAt.UnixNano())/1e9, "nothing was acknowledged since NATS stopped")

	// NATS back: the backlog drains and the gauges agree again.
	f.nats.Start(t)
	f.waitStream(t, 2010, time.Minute)
	require.Eventually(t, func() bool {
		m := r.Metrics()
		return m["outbox_relay_cdc_oldest_pending_age_seconds"] == 0 && m["outbox_relay_pump_last_progress_timestamp_seconds"] > lastProgress
	}, 30*time.Second, 100*time.Millisecond, "once drained nothing is pending and progress moved")
	assertSlotGauges(t, f, r, "drained")
	require.Eventually(t, func() bool { return r.Metrics()["outbox_relay_cdc_lag_bytes"] < slotTolerance(0) }, 10*time.Second, 100*time.Millisecond,
		"the lag is gone once drained")
	f.verify(t)
}

// TestMetricSlotGaugesWhileReaderIsBlocked fills the relay's event buffer
// and publish window while NATS is down, so the reader stops reading the
// replication stream, and checks the slot gauges then: they are polled from
// PostgreSQL and must stay exact, outbox_relay_cdc_lag_bytes included (the
// reader's keepalives stop while it is blocked; the poll keeps it true).
func TestMetricSlotGaugesWhileReaderIsBlocked(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := f.startRelay(t, "RELAY_SLOT_POLL_INTERVAL", "500ms", "RELAY_STATUS_INTERVAL", "200ms")
	f.write(t, 5, "before")
	f.waitStream(t, 5, 30*time.Second)

	f.nats.Stop(t)
	// More than --event-buffer (4096) plus --publish-window (1024).
	for i := range 100 {
		f.write(t, 100, tagf("held-%d", i))
	}
	// The reader is blocked once it stops counting events.
	last, same := -1.0, 0
	require.Eventually(t, func() bool {
		n := r.Metrics()["outbox_relay_cdc_events_total"]
		if n == last {
			same++
		} else {
			last, same = n, 0
		}
		return same >= 10 && n < 10005
	}, 60*time.Second, 200*time.Millisecond, "the reader should stop reading with its buffer full (read %.0f of 10005)", last)

	state, m := checkSlotGauges(t, f, r, "reader blocked", false)
	require.Greater(t, state.lag(), float64(1<<20), "PostgreSQL's lag holds the unread events")
	require.Equal(t, 1.0, m["outbox_relay_cdc_connected"], "still streaming from PostgreSQL")
	require.Greater(t, m["outbox_relay_cdc_oldest_pending_age_seconds"], 0.0, "events are pending")

	assertSlotGauges(t, f, r, "reader blocked, lag")

	f.nats.Start(t)
	f.waitStream(t, 10005, 2*time.Minute)
	assertSlotGauges(t, f, r, "drained")
	f.verify(t)
}
