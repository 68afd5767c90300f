{{/*
Helpers of the outbox-relay chart.

The names below take the chart's context (.Values, .Release, .Chart). Names
are derived from "outbox-relay" rather than .Chart.Name, so a parent chart
that includes the sidecar templates computes the same names (Secrets, labels)
as the subchart that renders the Secret.

Public templates, for charts that put the relay into their own pods (see
README.md, "Sidecar"). Call each with the outbox-relay subchart's context,
(index .Subcharts "outbox-relay"):

  outbox-relay.sidecarContainer     one item of a pod's containers list
  outbox-relay.sidecarVolumes       items of the pod's volumes list (may be empty)
  outbox-relay.sidecarPodLabels     labels the pod needs (PodMonitor selection)
  outbox-relay.sidecarPodAnnotations annotations that roll the pods on a secret change
  outbox-relay.terminationGracePeriodSeconds  the grace period the relay needs
*/}}

{{- define "outbox-relay.name" -}}
{{- default "outbox-relay" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "outbox-relay.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "outbox-relay" .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The Prometheus job name of the scraped relays. The chart's alerts select
jobs whose name contains "outbox-relay" (OutboxRelayDown), so it always does.
*/}}
{{- define "outbox-relay.jobName" -}}
{{- $full := include "outbox-relay.fullname" . }}
{{- if contains "outbox-relay" $full }}
{{- $full }}
{{- else }}
{{- printf "%s-outbox-relay" $full | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "outbox-relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "outbox-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "outbox-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "outbox-relay.labels" -}}
helm.sh/chart: {{ include "outbox-relay.chart" . }}
{{ include "outbox-relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: relay
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "outbox-relay.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (toString (default .Chart.AppVersion .Values.image.tag)) }}
{{- end }}
{{- end }}

{{/* Where the secret files are mounted in the relay container. */}}
{{- define "outbox-relay.secretDir" -}}
/etc/outbox-relay/secrets
{{- end }}

{{/* Whether the chart creates a Secret: "true" or "". */}}
{{- define "outbox-relay.createSecret" -}}
{{- $v := .Values }}
{{- if and (not $v.postgres.existingSecret) $v.postgres.password }}true{{ end }}
{{- if and (not $v.nats.existingSecret) (or $v.nats.password $v.nats.token $v.nats.creds $v.nats.nkeySeed) }}true{{ end }}
{{- end }}

{{/*
The NATS credentials in use, as a list of [file name, key in the chart's
Secret or in nats.existingSecret, environment variable].
*/}}
{{- define "outbox-relay.natsCredentials" -}}
{{- $v := .Values.nats }}
{{- $all := list
  (list "nats-password" "passwordKey" "password" "RELAY_NATS_PASSWORD_FILE")
  (list "nats-token" "tokenKey" "token" "RELAY_NATS_TOKEN_FILE")
  (list "nats.creds" "credsKey" "creds" "RELAY_NATS_CREDS")
  (list "nats-nkey-seed" "nkeySeedKey" "nkeySeed" "RELAY_NATS_NKEY_FILE") }}
{{- $used := list }}
{{- range $all }}
{{- $file := index . 0 }}{{ $keyField := index . 1 }}{{ $valueField := index . 2 }}{{ $envName := index . 3 }}
{{- if $v.existingSecret }}
{{- if index $v $keyField }}
{{- $used = append $used (list $file (index $v $keyField) $envName) }}
{{- end }}
{{- else if index $v $valueField }}
{{- $used = append $used (list $file $file $envName) }}
{{- end }}
{{- end }}
{{- toJson $used }}
{{- end }}

{{/* Items of a projected volume's sources: the secrets the relay reads. */}}
{{- define "outbox-relay.secretSources" -}}
{{- $v := .Values }}
{{- $sources := list }}
{{- if $v.postgres.existingSecret }}
{{- $sources = append $sources (dict "secret" (dict "name" $v.postgres.existingSecret "items" (list (dict "key" $v.postgres.passwordKey "path" "postgres-password")))) }}
{{- else if $v.postgres.password }}
{{- $sources = append $sources (dict "secret" (dict "name" (include "outbox-relay.fullname" .) "items" (list (dict "key" "postgres-password" "path" "postgres-password")))) }}
{{- end }}
{{- $items := list }}
{{- range (include "outbox-relay.natsCredentials" . | fromJsonArray) }}
{{- $items = append $items (dict "key" (index . 1) "path" (index . 0)) }}
{{- end }}
{{- if $items }}
{{- $sources = append $sources (dict "secret" (dict "name" (default (include "outbox-relay.fullname" .) $v.nats.existingSecret) "items" $items)) }}
{{- end }}
{{- if $sources }}
{{- toYaml $sources }}
{{- end }}
{{- end }}

{{/* Environment of the relay container. */}}
{{- define "outbox-relay.env" -}}
{{- $v := .Values }}
{{- $dir := include "outbox-relay.secretDir" . }}
{{- $env := list }}
{{- $env = append $env (dict "name" "RELAY_POSTGRES_URL" "value" $v.postgres.url) }}
{{- if or $v.postgres.existingSecret $v.postgres.password }}
{{- $env = append $env (dict "name" "RELAY_POSTGRES_PASSWORD_FILE" "value" (printf "%s/postgres-password" $dir)) }}
{{- end }}
{{- $env = append $env (dict "name" "RELAY_NATS_URL" "value" $v.nats.url) }}
{{- if $v.nats.user }}
{{- $env = append $env (dict "name" "RELAY_NATS_USER" "value" $v.nats.user) }}
{{- end }}
{{- range (include "outbox-relay.natsCredentials" . | fromJsonArray) }}
{{- $env = append $env (dict "name" (index . 2) "value" (printf "%s/%s" $dir (index . 0))) }}
{{- end }}
{{- $r := $v.relay }}
{{- $env = append $env (dict "name" "RELAY_TABLE" "value" $r.table) }}
{{- $env = append $env (dict "name" "RELAY_SLOT" "value" $r.slot) }}
{{- $env = append $env (dict "name" "RELAY_PUBLICATION" "value" $r.publication) }}
{{- $env = append $env (dict "name" "RELAY_STREAM" "value" $r.stream) }}
{{- $env = append $env (dict "name" "RELAY_SUBJECT_TEMPLATE" "value" $r.subjectTemplate) }}
{{- $env = append $env (dict "name" "RELAY_CREATE_STREAM" "value" (toString $r.createStream)) }}
{{- $env = append $env (dict "name" "RELAY_ON_POISON" "value" $r.onPoison) }}
{{- if $r.deadLetterSubject }}
{{- $env = append $env (dict "name" "RELAY_DEAD_LETTER_SUBJECT" "value" $r.deadLetterSubject) }}
{{- end }}
{{- $env = append $env (dict "name" "RELAY_LEADER_ELECTION" "value" (toString $r.leaderElection)) }}
{{- $env = append $env (dict "name" "RELAY_LEADER_LEASE_TIMEOUT" "value" $r.leaderLeaseTimeout) }}
{{- $env = append $env (dict "name" "RELAY_SHUTDOWN_TIMEOUT" "value" (printf "%ds" (int $r.shutdownTimeoutSeconds))) }}
{{- $env = append $env (dict "name" "RELAY_LOG_LEVEL" "value" $r.logLevel) }}
{{- $env = append $env (dict "name" "RELAY_LOG_FORMAT" "value" $r.logFormat) }}
{{- $env = append $env (dict "name" "RELAY_HTTP_ADDR" "value" (printf ":%d" (int $r.httpPort))) }}
{{- with $v.postgres.leaderUrl }}
{{- $env = append $env (dict "name" "RELAY_LEADER_POSTGRES_URL" "value" .) }}
{{- end }}
{{- $c := $r.columns }}
{{- $env = append $env (dict "name" "RELAY_COLUMN_ID" "value" $c.id) }}
{{- $env = append $env (dict "name" "RELAY_COLUMN_AGGREGATE_TYPE" "value" $c.aggregateType) }}
{{- $env = append $env (dict "name" "RELAY_COLUMN_AGGREGATE_ID" "value" $c.aggregateId) }}
{{- $env = append $env (dict "name" "RELAY_COLUMN_EVENT_TYPE" "value" $c.eventType) }}
{{- $env = append $env (dict "name" "RELAY_COLUMN_PAYLOAD" "value" $c.payload) }}
{{- /* Empty is a value of its own here: the table has no such column. */}}
{{- $env = append $env (dict "name" "RELAY_COLUMN_HEADERS" "value" (toString $c.headers)) }}
{{- $env = append $env (dict "name" "RELAY_COLUMN_CREATED_AT" "value" (toString $c.createdAt)) }}
{{- $env = append $env (dict "name" "RELAY_CREATE_PUBLICATION" "value" (toString $r.createPublication)) }}
{{- $env = append $env (dict "name" "RELAY_CREATE_SLOT" "value" (toString $r.createSlot)) }}
{{- $env = append $env (dict "name" "RELAY_FAILOVER_SLOT" "value" (toString $r.failoverSlot)) }}
{{- $env = append $env (dict "name" "RELAY_INITIAL_SNAPSHOT" "value" $r.initialSnapshot) }}
{{- $env = append $env (dict "name" "RELAY_RETENTION" "value" $r.retention) }}
{{- $env = append $env (dict "name" "RELAY_RETENTION_INTERVAL" "value" $r.retentionInterval) }}
{{- $env = append $env (dict "name" "RELAY_RECOVER_MAX_TRANSACTION_AGE" "value" $r.recoverMaxTransactionAge) }}
{{- $env = append $env (dict "name" "RELAY_STATE_BUCKET" "value" $r.stateBucket) }}
{{- $env = append $env (dict "name" "RELAY_SHARED_STREAM" "value" (toString $r.sharedStream)) }}
{{- $env = append $env (dict "name" "RELAY_STREAM_REPLICAS" "value" (toString (int $r.streamReplicas))) }}
{{- $env = append $env (dict "name" "RELAY_DUPLICATE_WINDOW" "value" $r.duplicateWindow) }}
{{- $env = append $env (dict "name" "RELAY_PUBLISH_MODE" "value" $r.publishMode) }}
{{- $env = append $env (dict "name" "RELAY_ATOMIC_TRANSACTIONS" "value" (toString $r.atomicTransactions)) }}
{{- $env = append $env (dict "name" "RELAY_ATOMIC_BATCH_MAX" "value" (toString (int $r.atomicBatchMax))) }}
{{- $env = append $env (dict "name" "RELAY_ON_LARGE_TRANSACTION" "value" $r.onLargeTransaction) }}
{{- $env = append $env (dict "name" "RELAY_CLOUDEVENTS" "value" (toString $r.cloudevents)) }}
{{- $env = append $env (dict "name" "RELAY_CLOUDEVENTS_TYPE" "value" $r.cloudeventsType) }}
{{- $env = append $env (dict "name" "RELAY_EVENT_BUFFER_BYTES" "value" (toString (int64 $r.eventBufferBytes))) }}
{{- $env = append $env (dict "name" "RELAY_LEADER_POLL_INTERVAL" "value" $r.leaderPollInterval) }}
{{- $env = append $env (dict "name" "RELAY_STALL_TIMEOUT" "value" $r.stallTimeout) }}
{{- $env = append $env (dict "name" "RELAY_PPROF" "value" (toString $r.pprof)) }}
{{- /* Empty: the relay's own default (none, or derived). */}}
{{- range $name, $value := dict
  "RELAY_MESSAGE_PREFIX" $r.messagePrefix
  "RELAY_TABLE_COLUMNS" $r.tableColumns
  "RELAY_MESSAGE_ID" $r.messageId
  "RELAY_ACCEPT_PUBLICATION" $r.acceptPublication
  "RELAY_STREAM_SUBJECTS" $r.streamSubjects
  "RELAY_CLOUDEVENTS_SOURCE" $r.cloudeventsSource
  "RELAY_OTLP_TRACES_ENDPOINT" $r.otlpTracesEndpoint }}
{{- if $value }}
{{- $env = append $env (dict "name" $name "value" $value) }}
{{- end }}
{{- end }}
{{- $extra := $v.extraEnv | default list }}
{{- $extraNames := list }}
{{- range $extra }}
{{- $extraNames = append $extraNames .name }}
{{- end }}
{{- $out := list }}
{{- range $env }}
{{- if not (has .name $extraNames) }}
{{- $out = append $out . }}
{{- end }}
{{- end }}
{{- toYaml (concat $out $extra) }}
{{- end }}

{{/* Volume mounts of the relay container (may be empty). */}}
{{- define "outbox-relay.volumeMounts" -}}
{{- $mounts := list }}
{{- if include "outbox-relay.secretSources" . }}
{{- $mounts = append $mounts (dict "name" "outbox-relay-secrets" "mountPath" (include "outbox-relay.secretDir" .) "readOnly" true) }}
{{- end }}
{{- $mounts = concat $mounts (.Values.extraVolumeMounts | default list) }}
{{- if $mounts }}
{{- toYaml $mounts }}
{{- end }}
{{- end }}

{{/* Volumes the relay container needs (may be empty). */}}
{{- define "outbox-relay.volumes" -}}
{{- $volumes := list }}
{{- $sources := include "outbox-relay.secretSources" . }}
{{- if $sources }}
{{- $volumes = append $volumes (dict "name" "outbox-relay-secrets" "projected" (dict "defaultMode" (int .Values.secretFileMode) "sources" (fromYamlArray $sources))) }}
{{- end }}
{{- $volumes = concat $volumes (.Values.extraVolumes | default list) }}
{{- if $volumes }}
{{- toYaml $volumes }}
{{- end }}
{{- end }}

{{/*
Fails the render with a clear message on values the schema cannot judge.
Called with (dict "ctx" <chart context> "sidecar" <bool>).
*/}}
{{- define "outbox-relay.validate" -}}
{{- $v := .ctx.Values }}
{{- $pg := required "postgres.url is required, e.g. postgres://relay@db:5432/app?sslmode=verify-full (without the password)" $v.postgres.url }}
{{- $nats := required "nats.url is required, e.g. nats://nats:4222" $v.nats.url }}
{{- if regexMatch "^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#@]*:[^/?#@]*@" $pg }}
{{- fail "postgres.url holds a password: remove it from the URL and use postgres.existingSecret (or postgres.password), which reach the relay as a mounted file" }}
{{- end }}
{{- if regexMatch "(^|[?&[:space:]])password=" $pg }}
{{- fail "postgres.url holds a password= parameter: remove it and use postgres.existingSecret (or postgres.password), which reach the relay as a mounted file" }}
{{- end }}
{{- with $v.postgres.leaderUrl }}
{{- if or (regexMatch "^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#@]*:[^/?#@]*@" .) (regexMatch "(^|[?&[:space:]])password=" .) }}
{{- fail "postgres.leaderUrl holds a password: remove it; the relay uses the password of postgres.existingSecret (or postgres.password) for both URLs" }}
{{- end }}
{{- end }}
{{- range (splitList "," $nats) }}
{{- if regexMatch "^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#@]*@" (trim .) }}
{{- fail "nats.url holds credentials (user:password@ or token@): remove them and use nats.user with nats.existingSecret (or nats.password / nats.token), which reach the relay as mounted files" }}
{{- end }}
{{- end }}
{{- if regexMatch "^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#@]*@" $v.relay.otlpTracesEndpoint }}
{{- fail "relay.otlpTracesEndpoint holds credentials (user:password@): the relay sends none, and the URL is in the pod spec; point it at a collector that needs none" }}
{{- end }}
{{- if and $v.postgres.existingSecret $v.postgres.password }}
{{- fail "postgres.existingSecret and postgres.password are both set: use one" }}
{{- end }}
{{- if and $v.postgres.existingSecret (not $v.postgres.passwordKey) }}
{{- fail "postgres.existingSecret is set but postgres.passwordKey is empty" }}
{{- end }}
{{- if $v.nats.existingSecret }}
{{- if or $v.nats.password $v.nats.token $v.nats.creds $v.nats.nkeySeed }}
{{- fail "nats.existingSecret is set together with inline nats.password/token/creds/nkeySeed: use one or the other" }}
{{- end }}
{{- if not (or $v.nats.passwordKey $v.nats.tokenKey $v.nats.credsKey $v.nats.nkeySeedKey) }}
{{- fail "nats.existingSecret is set but none of nats.passwordKey, nats.tokenKey, nats.credsKey, nats.nkeySeedKey names an entry of it" }}
{{- end }}
{{- end }}
{{- if not $v.relay.leaderElection }}
{{- if .sidecar }}
{{- fail "relay.leaderElection=false in sidecar mode: the relay would run in every replica of the app (and in two pods at once during a rolling update), each taking the replication slot in turn; keep relay.leaderElection=true (one relay leads, the others stand by)" }}
{{- end }}
{{- if gt (int $v.replicaCount) 1 }}
{{- fail (printf "relay.leaderElection=false with replicaCount=%d: several relays would fight over the replication slot; keep relay.leaderElection=true (one relay leads, the others stand by) or set replicaCount=1" (int $v.replicaCount)) }}
{{- end }}
{{- end }}
{{- if lt (int $v.terminationGracePeriodSeconds) (add (int $v.relay.shutdownTimeoutSeconds) 5) }}
{{- fail (printf "terminationGracePeriodSeconds=%d must be at least relay.shutdownTimeoutSeconds (%d) + 5: Kubernetes would kill the relay while it lets publishes in flight finish" (int $v.terminationGracePeriodSeconds) (int $v.relay.shutdownTimeoutSeconds)) }}
{{- end }}
{{- $r := $v.relay }}
{{- if and $r.atomicTransactions (eq $r.publishMode "batch") }}
{{- fail "relay.atomicTransactions=true with relay.publishMode=batch: the relay refuses them together (atomic batches are published as they are); use publishMode auto or async" }}
{{- end }}
{{- if and $r.cloudeventsSource (not $r.cloudevents) }}
{{- fail "relay.cloudeventsSource is set but relay.cloudevents is false: set relay.cloudevents=true, or leave cloudeventsSource empty" }}
{{- end }}
{{- $retention := include "outbox-relay.seconds" $r.retention | float64 }}
{{- if gt $retention 0.0 }}
{{- if not $r.columns.createdAt }}
{{- fail "relay.retention is set but relay.columns.createdAt is empty: the janitor deletes rows by their creation time; map the created_at column or set relay.retention=0s" }}
{{- end }}
{{- if lt $retention (include "outbox-relay.seconds" $r.recoverMaxTransactionAge | float64) }}
{{- fail (printf "relay.retention=%s is below relay.recoverMaxTransactionAge=%s, whose rows relay recover reads after a lost slot" $r.retention $r.recoverMaxTransactionAge) }}
{{- end }}
{{- end }}
{{- if and $r.leaderElection (ge (include "outbox-relay.seconds" $r.leaderPollInterval | float64) (include "outbox-relay.seconds" $r.leaderLeaseTimeout | float64)) }}
{{- fail (printf "relay.leaderPollInterval=%s must be below relay.leaderLeaseTimeout=%s" $r.leaderPollInterval $r.leaderLeaseTimeout) }}
{{- end }}
{{- range ($v.extraEnv | default list) }}
{{- if and (hasKey . "value") (regexMatch "(?i)(PASSWORD|TOKEN|SEED|SECRET)" .name) (not (hasSuffix "_FILE" .name)) }}
{{- fail (printf "extraEnv %s has an inline value: secrets go in a Secret, referenced with valueFrom.secretKeyRef or mounted (RELAY_*_FILE)" .name) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
outbox-relay.seconds: a Go duration of the schema's form (1h30m, 500ms) in
seconds, as a float.
*/}}
{{- define "outbox-relay.seconds" -}}
{{- $units := dict "ns" 0.000000001 "us" 0.000001 "µs" 0.000001 "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 }}
{{- $total := 0.0 }}
{{- range regexFindAll "[0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h)" (toString .) -1 }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" . }}
{{- $total = addf $total (mulf (float64 $number) (get $units (trimPrefix $number .))) }}
{{- end }}
{{- $total }}
{{- end }}

{{/*
The relay container. Called with (dict "ctx" <chart context> "sidecar" <bool>).
*/}}
{{- define "outbox-relay.container" -}}
{{- include "outbox-relay.validate" . }}
{{- $ctx := .ctx }}
{{- $v := $ctx.Values }}
{{- $port := ternary "relay-metrics" "metrics" .sidecar -}}
- name: {{ ternary $v.sidecar.containerName "outbox-relay" .sidecar }}
  image: {{ include "outbox-relay.image" $ctx | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args:
    - run
    {{- range $v.relay.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    {{- include "outbox-relay.env" $ctx | nindent 4 }}
  ports:
    - name: {{ $port }}
      containerPort: {{ int $v.relay.httpPort }}
      protocol: TCP
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ $port }}
    {{- toYaml $v.livenessProbe | nindent 4 }}
  {{- if or (not .sidecar) $v.sidecar.readinessProbe }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: {{ $port }}
    {{- toYaml $v.readinessProbe | nindent 4 }}
  {{- end }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  {{- $mounts := include "outbox-relay.volumeMounts" $ctx }}
  {{- if $mounts }}
  volumeMounts:
    {{- $mounts | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
outbox-relay.sidecarContainer: the relay as one item of another chart's
pod containers list. Call it with the subchart's context:

  containers:
    - name: app
      ...
    {{- include "outbox-relay.sidecarContainer" (index .Subcharts "outbox-relay") | nindent 4 }}

The subchart must run with mode: sidecar (it then renders no Deployment of
its own). Leader election stays on: every replica of the app runs a relay,
one leads and the others stand by. The container serves /metrics, /healthz
and /readyz on port relay.httpPort, named "relay-metrics"; its liveness probe
is GET /healthz, and /readyz gates the pod only with
sidecar.readinessProbe: true.
*/}}
{{- define "outbox-relay.sidecarContainer" -}}
{{- if ne .Values.mode "sidecar" }}
{{- fail "outbox-relay.sidecarContainer is included but the outbox-relay chart's mode is not \"sidecar\": set outbox-relay.mode=sidecar, or the chart also runs a Deployment of its own" }}
{{- end }}
{{- include "outbox-relay.container" (dict "ctx" . "sidecar" true) }}
{{- end }}

{{/*
outbox-relay.sidecarVolumes: the volumes the sidecar mounts, as items of the
pod's volumes list; empty when it needs none.

  volumes:
    {{- include "outbox-relay.sidecarVolumes" (index .Subcharts "outbox-relay") | nindent 4 }}
*/}}
{{- define "outbox-relay.sidecarVolumes" -}}
{{- include "outbox-relay.volumes" . }}
{{- end }}

{{/* outbox-relay.sidecarPodLabels: labels of the pods running the sidecar. */}}
{{- define "outbox-relay.sidecarPodLabels" -}}
outbox-relay/sidecar: {{ include "outbox-relay.fullname" . }}
outbox-relay/job: {{ include "outbox-relay.jobName" . }}
{{- end }}

{{/*
outbox-relay.sidecarPodAnnotations: a checksum of the relay's secrets and
settings, so that the pods roll when they change.
*/}}
{{- define "outbox-relay.sidecarPodAnnotations" -}}
checksum/outbox-relay: {{ include "outbox-relay.configChecksum" . }}
{{- end }}

{{- define "outbox-relay.configChecksum" -}}
{{- toJson (dict "postgres" .Values.postgres "nats" .Values.nats) | sha256sum }}
{{- end }}

{{/* The pod's terminationGracePeriodSeconds the relay needs. */}}
{{- define "outbox-relay.terminationGracePeriodSeconds" -}}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
