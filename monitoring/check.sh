#!/usr/bin/env bash
# Checks the Prometheus alerting rules shipped in the Helm chart and runs their
# unit tests:
#
#   promtool check rules --lint=all --lint-fatal helm/outbox-relay/files/outbox-relay-alerts.yaml
#   promtool test rules monitoring/alerts_test.yaml
#   promtool check rules <every query of the Grafana dashboard>
#
# PROMTOOL names the promtool binary; by default the one `make tools` installs:
# $HOME/.cache/outbox-relay/tools/bin/promtool-v0.316.0. Run from anywhere.
#
# That every metric the rules and the dashboard use is really exported is
# checked by `go test -run Monitoring ./cmd/relay/` against a running relay.
set -euo pipefail

PROMTOOL_VERSION=v0.316.0
PROMTOOL="${PROMTOOL:-$HOME/.cache/outbox-relay/tools/bin/promtool-$PROMTOOL_VERSION}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rules="$root/helm/outbox-relay/files/outbox-relay-alerts.yaml"
tests="$root/monitoring/alerts_test.yaml"

if ! command -v "$PROMTOOL" >/dev/null 2>&1; then
	cat >&2 <<EOF
monitoring/check.sh: FAILED: promtool not found at "$PROMTOOL".
Install it with:
  make tools
or point PROMTOOL at a promtool binary (${PROMTOOL_VERSION} or close to it):
  PROMTOOL=/path/to/promtool monitoring/check.sh
EOF
	exit 1
fi

for f in "$rules" "$tests"; do
	if [[ ! -f "$f" ]]; then
		echo "monitoring/check.sh: FAILED: $f does not exist" >&2
		exit 1
	fi
done

echo "== $("$PROMTOOL" --version 2>&1 | head -n 1)"
echo "== promtool check rules ${rules#"$root"/}"
if ! "$PROMTOOL" check rules --lint=all --lint-fatal "$rules"; then
	echo "monitoring/check.sh: FAILED: promtool check rules" >&2
	exit 1
fi

echo "== promtool test rules ${tests#"$root"/}"
# Relative paths in the test file (rule_files) are resolved from its directory.
if ! "$PROMTOOL" test rules "$tests"; then
	echo "monitoring/check.sh: FAILED: promtool test rules" >&2
	exit 1
fi

echo "== promtool check rules: the dashboard's queries"
# promtool has no command to parse a lone query, so every panel query goes
# into a throwaway rule file as a recording rule, with the dashboard's
# variables replaced by values.
if ! command -v jq >/dev/null 2>&1; then
	echo "monitoring/check.sh: FAILED: jq is needed to read the dashboard's queries" >&2
	exit 1
fi
dashboard="$root/helm/outbox-relay/files/outbox-relay-dashboard.json"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
{
	echo "groups:"
	echo "  - name: dashboard"
	echo "    rules:"
	jq -r '[.panels[] | select(.targets) | .title as $t | .targets[] | {t: $t, r: .refId, e: .expr}]
		| to_entries[]
		| "      - record: dashboard:query_\(.key)\n        # \(.value.t) \(.value.r)\n        expr: \(.value.e
			| gsub("\\$__rate_interval"; "5m") | gsub("\\$job"; ".*") | gsub("\\$instance"; ".*") | tojson)"' "$dashboard"
} >"$tmp/dashboard-queries.yaml"
if ! "$PROMTOOL" check rules "$tmp/dashboard-queries.yaml"; then
	echo "monitoring/check.sh: FAILED: a dashboard query does not parse (queries in $tmp/dashboard-queries.yaml)" >&2
	trap - EXIT
	exit 1
fi

echo "monitoring/check.sh: OK"
