{{/*
Names, labels and the building blocks every workload shares. Workload settings are `defaults`
merged with the workload's own entry by "regatta.merge", which (unlike sprig's mergeOverwrite)
lets an entry override a default with false, 0 or an empty string.
*/}}

{{- define "regatta.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "regatta.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "regatta.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: name, instance and the component. (dict "root" $ "component" "items") */}}
{{- define "regatta.selectorLabels" -}}
app.kubernetes.io/name: {{ include "regatta.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every label of an object. (dict "root" $ "component" "items") */}}
{{- define "regatta.labels" -}}
helm.sh/chart: {{ include "regatta.chart" .root }}
{{ include "regatta.selectorLabels" . }}
app.kubernetes.io/part-of: regatta
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Deep merge of two maps, the second winning; lists replace. (list $base $override) */}}
{{- define "regatta.merge" -}}
{{- $out := deepCopy (index . 0) -}}
{{- range $key, $value := index . 1 -}}
{{- $current := get $out $key -}}
{{- if and (kindIs "map" $value) (kindIs "map" $current) -}}
{{- $_ := set $out $key (include "regatta.merge" (list $current $value) | fromYaml) -}}
{{- else -}}
{{- $_ := set $out $key $value -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* A workload's settings: `defaults` merged with its entry. (dict "root" $ "values" $entry) */}}
{{- define "regatta.workload" -}}
{{- include "regatta.merge" (list .root.Values.defaults .values) -}}
{{- end -}}

{{/* The image reference of a workload. (dict "root" $ "image" $w.image) */}}
{{- define "regatta.image" -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Whether pods must leave their UIDs to the platform (OpenShift's restricted SCC). */}}
{{- define "regatta.openshift" -}}
{{- if or .Values.openshift (.Capabilities.APIVersions.Has "security.openshift.io/v1") -}}true{{- end -}}
{{- end -}}

{{/* A security context without fixed IDs on OpenShift. (dict "root" $ "context" $ctx) */}}
{{- define "regatta.securityContext" -}}
{{- if include "regatta.openshift" .root -}}
{{- toYaml (omit .context "runAsUser" "runAsGroup" "fsGroup") -}}
{{- else -}}
{{- toYaml .context -}}
{{- end -}}
{{- end -}}

{{/* The built-in Postgres and Redis: restricted, a read-only root, their own fixed UID. */}}
{{- define "regatta.dataPodSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "regatta.dataSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "regatta.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "regatta.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Pull secrets: the global ones then the workload's. (dict "root" $ "w" $w) */}}
{{- define "regatta.imagePullSecrets" -}}
{{- $secrets := concat .root.Values.imagePullSecrets .w.imagePullSecrets | uniq -}}
{{- if $secrets -}}
imagePullSecrets:
{{- range $secrets }}
  - name: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Names of the generated Secrets and of the built-in database and Redis. */}}
{{- define "regatta.postgresql.name" -}}{{ include "regatta.fullname" . }}-postgresql{{- end -}}
{{- define "regatta.redis.name" -}}{{ include "regatta.fullname" . }}-redis{{- end -}}
{{- define "regatta.cnpg.name" -}}{{ include "regatta.fullname" . }}-pg{{- end -}}
{{- define "regatta.apiKeys.secretName" -}}
{{- .Values.apiKeys.existingSecret | default (printf "%s-api-keys" (include "regatta.fullname" .)) -}}
{{- end -}}
{{- define "regatta.notifications.secretName" -}}
{{- .Values.notifications.webhookSigningSecret.existingSecret | default (printf "%s-notifications" (include "regatta.fullname" .)) -}}
{{- end -}}
{{- define "regatta.postgresql.secretName" -}}
{{- .Values.database.builtin.existingSecret | default (include "regatta.postgresql.name" .) -}}
{{- end -}}
{{- define "regatta.redis.secretName" -}}
{{- .Values.redis.builtin.existingSecret | default (include "regatta.redis.name" .) -}}
{{- end -}}

{{/*
A generated secret value, base64: the one already in the cluster when there is one (so upgrades
keep it), otherwise a new random one. (dict "root" $ "name" "..." "key" "..." "length" 32)
*/}}
{{- define "regatta.generatedSecret" -}}
{{- /* Drawn once per render: the Secret and every checksum of it see the same value. */ -}}
{{- if not (hasKey .root "regattaGenerated") -}}
{{- $_ := set .root "regattaGenerated" dict -}}
{{- end -}}
{{- $cache := get .root "regattaGenerated" -}}
{{- $id := printf "%s/%s" .name .key -}}
{{- if not (hasKey $cache $id) -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .name -}}
{{- if and $existing $existing.data (hasKey $existing.data .key) -}}
{{- $_ := set $cache $id (index $existing.data .key) -}}
{{- else -}}
{{- $_ := set $cache $id (randAlphaNum (int .length) | b64enc) -}}
{{- end -}}
{{- end -}}
{{- get $cache $id -}}
{{- end -}}

{{/*
The Secrets the chart generates, as (list name key length) triples: one place for secrets.yaml
and the checksums that roll pods when one of them changes. Empty with every existingSecret set.
*/}}
{{- define "regatta.generatedSecrets" -}}
{{- $out := list -}}
{{- if not .Values.apiKeys.existingSecret -}}
{{- $out = append $out (list "api-keys" (include "regatta.apiKeys.secretName" .) .Values.apiKeys.secretKey 40) -}}
{{- end -}}
{{- if and (eq .Values.database.mode "builtin") (not .Values.database.builtin.existingSecret) -}}
{{- $out = append $out (list "postgresql" (include "regatta.postgresql.secretName" .) .Values.database.builtin.passwordKey 32) -}}
{{- end -}}
{{- if and (eq .Values.redis.mode "builtin") (not .Values.redis.builtin.existingSecret) -}}
{{- $out = append $out (list "redis" (include "regatta.redis.secretName" .) .Values.redis.builtin.passwordKey 32) -}}
{{- end -}}
{{- if and .Values.services.notifications.enabled (not .Values.notifications.webhookSigningSecret.existingSecret) -}}
{{- $out = append $out (list "notifications" (include "regatta.notifications.secretName" .) .Values.notifications.webhookSigningSecret.secretKey 48) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/*
Checksum of the generated Secrets a pod reads (all of them: every service process mounts the
API keys and connects to the database and Redis). (dict "root" $ "only" (list "redis") or no
"only" for every one.) Empty when the chart generates none of them.
*/}}
{{- define "regatta.generatedSecretsChecksum" -}}
{{- $root := .root -}}
{{- $parts := list -}}
{{- range include "regatta.generatedSecrets" $root | fromJsonArray -}}
{{- if or (not $.only) (has (index . 0) $.only) -}}
{{- $value := include "regatta.generatedSecret" (dict "root" $root "name" (index . 1) "key" (index . 2) "length" (index . 3)) -}}
{{- $parts = append $parts (printf "%s/%s=%s" (index . 1) (index . 2) $value) -}}
{{- end -}}
{{- end -}}
{{- if $parts -}}
{{- join "\n" $parts | sha256sum -}}
{{- end -}}
{{- end -}}

{{/*
Checksum of the settings a service process reads (config, where its credentials come from, the
notifications and tracing settings), and of nothing else: sizing the built-in Postgres or Redis
rolls no API pod.
*/}}
{{- define "regatta.configChecksum" -}}
{{- $v := .Values -}}
{{- $database := dict "mode" $v.database.mode "name" $v.database.name "user" $v.database.user "external" $v.database.external "secret" (pick $v.database.builtin "existingSecret" "passwordKey") -}}
{{- $redis := dict "mode" $v.redis.mode "external" $v.redis.external "builtin" (pick $v.redis.builtin "existingSecret" "passwordKey" "database") -}}
{{- toJson (dict "config" $v.config "apiKeys" $v.apiKeys "notifications" $v.notifications "database" $database "redis" $redis "tracing" $v.tracing) | sha256sum -}}
{{- end -}}

{{/*
OpenTelemetry: the collector's endpoint, this workload's service name and its pod and namespace
as resource attributes (downward API). Nothing when no endpoint is set: tracing stays off.
(dict "root" $ "service" "items")
*/}}
{{- define "regatta.otelEnv" -}}
{{- $t := .root.Values.tracing -}}
{{- if $t.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $t.otlpEndpoint | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
- name: OTEL_K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: OTEL_K8S_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_K8S_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- $attributes := list "k8s.pod.name=$(OTEL_K8S_POD_NAME)" "k8s.namespace.name=$(OTEL_K8S_NAMESPACE)" "k8s.node.name=$(OTEL_K8S_NODE_NAME)" }}
{{- range $key, $value := $t.resourceAttributes }}
{{- $attributes = append $attributes (printf "%s=%s" $key $value) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attributes | quote }}
{{- with $t.sampler }}
- name: OTEL_TRACES_SAMPLER
  value: {{ . | quote }}
{{- end }}
{{- with $t.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* DATABASE_URL (and the variables it is built from), never a password in plain text. */}}
{{- define "regatta.databaseEnv" -}}
{{- $db := .Values.database -}}
{{- if eq $db.mode "builtin" }}
- name: DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "regatta.postgresql.secretName" . }}
      key: {{ $db.builtin.passwordKey }}
- name: DATABASE_URL
  value: {{ printf "postgresql+asyncpg://%s:$(DATABASE_PASSWORD)@%s:5432/%s" $db.user (include "regatta.postgresql.name" .) $db.name | quote }}
{{- else if eq $db.mode "cloudnativepg" }}
- name: DATABASE_USER
  valueFrom:
    secretKeyRef:
      name: {{ include "regatta.cnpg.name" . }}-app
      key: username
- name: DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "regatta.cnpg.name" . }}-app
      key: password
- name: DATABASE_URL
  value: {{ printf "postgresql+asyncpg://$(DATABASE_USER):$(DATABASE_PASSWORD)@%s-rw:5432/%s" (include "regatta.cnpg.name" .) $db.name | quote }}
{{- else if $db.external.urlKey }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $db.external.existingSecret }}
      key: {{ $db.external.urlKey }}
{{- else }}
- name: DATABASE_USER
  valueFrom:
    secretKeyRef:
      name: {{ $db.external.existingSecret }}
      key: {{ $db.external.usernameKey }}
- name: DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $db.external.existingSecret }}
      key: {{ $db.external.passwordKey }}
- name: DATABASE_URL
  value: {{ printf "postgresql+asyncpg://$(DATABASE_USER):$(DATABASE_PASSWORD)@%s:%d/%s" $db.external.host (int $db.external.port) $db.external.database | quote }}
{{- end }}
{{- end -}}

{{- define "regatta.redisEnv" -}}
{{- if eq .Values.redis.mode "builtin" }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "regatta.redis.secretName" . }}
      key: {{ .Values.redis.builtin.passwordKey }}
- name: REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/%d" (include "regatta.redis.name" .) (int .Values.redis.builtin.database) | quote }}
{{- else }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.urlKey }}
{{- end }}
{{- end -}}

{{/* The environment every service process gets (APIs, worker, migrations). */}}
{{- define "regatta.serviceEnv" -}}
{{- $c := .Values.config -}}
- name: ENVIRONMENT
  value: {{ $c.environment | quote }}
- name: LOG_LEVEL
  value: {{ $c.logLevel | quote }}
- name: HOST
  value: "0.0.0.0"
- name: PORT
  value: "8000"
- name: RUN_MIGRATIONS_ON_START
  value: "false"
- name: KEEPALIVE_SECONDS
  value: {{ $c.keepaliveSeconds | int | quote }}
- name: GRACEFUL_SHUTDOWN_SECONDS
  value: {{ $c.gracefulShutdownSeconds | int | quote }}
- name: CORS_ORIGINS
  value: {{ join "," $c.corsOrigins | quote }}
- name: CORS_ALLOW_CREDENTIALS
  value: {{ $c.corsAllowCredentials | quote }}
- name: REDIS_KEY_PREFIX
  value: {{ $c.redisKeyPrefix | quote }}
- name: CACHE_TTL_SECONDS
  value: {{ $c.cacheTtlSeconds | int | quote }}
- name: DB_POOL_SIZE
  value: {{ $c.dbPoolSize | int | quote }}
- name: DB_MAX_OVERFLOW
  value: {{ $c.dbMaxOverflow | int | quote }}
- name: DB_POOL_TIMEOUT_SECONDS
  value: {{ $c.dbPoolTimeoutSeconds | quote }}
- name: DB_STATEMENT_TIMEOUT_MS
  value: {{ $c.dbStatementTimeoutMs | int | quote }}
- name: MAX_BODY_BYTES
  value: {{ $c.maxBodyBytes | int | quote }}
- name: MIGRATE_WAIT_SECONDS
  value: {{ $c.migrateWaitSeconds | int | quote }}
- name: RATE_LIMIT_ENABLED
  value: {{ $c.rateLimit.enabled | quote }}
- name: RATE_LIMIT_WINDOW_SECONDS
  value: {{ $c.rateLimit.windowSeconds | int | quote }}
- name: RATE_LIMIT_READS
  value: {{ $c.rateLimit.reads | int | quote }}
- name: RATE_LIMIT_WRITES
  value: {{ $c.rateLimit.writes | int | quote }}
- name: TRUSTED_PROXIES
  value: {{ join "," $c.trustedProxies | quote }}
- name: API_KEYS_FILE
  value: {{ printf "/etc/regatta/api-keys/%s" .Values.apiKeys.secretKey | quote }}
{{- include "regatta.databaseEnv" . }}
{{- include "regatta.redisEnv" . }}
{{- end -}}

{{/* What the notifications API, worker and migrations add to the service environment. */}}
{{- define "regatta.notificationsEnv" -}}
{{- $n := .Values.notifications -}}
- name: WEBHOOK_SIGNING_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "regatta.notifications.secretName" . }}
      key: {{ $n.webhookSigningSecret.secretKey }}
{{- with $n.webhookAllowedNetworks }}
- name: WEBHOOK_ALLOWED_NETWORKS
  value: {{ join "," . | quote }}
{{- end }}
{{- if $n.smtp.host }}
- name: SMTP_HOST
  value: {{ $n.smtp.host | quote }}
- name: SMTP_PORT
  value: {{ $n.smtp.port | int | quote }}
- name: SMTP_TLS
  value: {{ $n.smtp.tls | quote }}
- name: SMTP_FROM
  value: {{ $n.smtp.from | quote }}
{{- with $n.smtp.existingSecret }}
- name: SMTP_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $n.smtp.usernameKey }}
- name: SMTP_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $n.smtp.passwordKey }}
{{- end }}
{{- end }}
{{- end -}}

{{/* An HTTP probe. (dict "probe" $w.probes.readiness "port" "http") */}}
{{- define "regatta.probe" -}}
httpGet:
  path: {{ .probe.path }}
  port: {{ .port }}
periodSeconds: {{ .probe.periodSeconds | int }}
timeoutSeconds: {{ .probe.timeoutSeconds | int }}
failureThreshold: {{ .probe.failureThreshold | int }}
{{- end -}}

{{/*
The pod spec shared by the APIs, the worker and the operator.
(dict "root" $ "w" $w "component" "items" "tier" "api" "args" (list ...) "port" 8000
      "portName" "http" "serviceEnv" true "extraEnv" "<env list YAML>" "apiKeys" true
      "serviceAccountName" "..." "automountToken" false)
*/}}
{{- define "regatta.podTemplate" -}}
{{- $root := .root -}}
{{- $w := .w -}}
{{- $grace := int $w.terminationGracePeriodSeconds -}}
{{- $preStop := int $w.preStopSleepSeconds -}}
{{- if .serviceEnv -}}
{{- $drain := add $preStop (int $root.Values.config.gracefulShutdownSeconds) -}}
{{- if le $grace (int $drain) -}}
{{- fail (printf "%s: terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + config.gracefulShutdownSeconds (%d), or uvicorn is killed mid-drain" .component $grace (int $drain)) -}}
{{- end -}}
{{- end -}}
metadata:
  labels:
    {{- include "regatta.selectorLabels" (dict "root" $root "component" .component) | nindent 4 }}
    app.kubernetes.io/part-of: regatta
    app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
    regatta.dev/tier: {{ .tier }}
    {{- if .serviceEnv }}
    regatta.dev/database-client: "true"
    regatta.dev/redis-client: "true"
    {{- end }}
    {{- with $w.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- $annotations := dict }}
  {{- if .serviceEnv }}
  {{- $_ := set $annotations "checksum/config" (include "regatta.configChecksum" $root) }}
  {{- with include "regatta.generatedSecretsChecksum" (dict "root" $root) }}
  {{- $_ := set $annotations "checksum/secrets" . }}
  {{- end }}
  {{- end }}
  {{- $annotations = merge (deepCopy ($w.podAnnotations | default dict)) $annotations }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ .serviceAccountName }}
  automountServiceAccountToken: {{ .automountToken }}
  {{- with include "regatta.imagePullSecrets" (dict "root" $root "w" $w) }}
  {{- . | nindent 2 }}
  {{- end }}
  securityContext:
    {{- include "regatta.securityContext" (dict "root" $root "context" $w.podSecurityContext) | nindent 4 }}
  terminationGracePeriodSeconds: {{ $grace }}
  {{- with $w.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $w.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $w.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $w.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $w.topologySpread.enabled }}
  topologySpreadConstraints:
    {{- range $w.topologySpread.topologyKeys }}
    - topologyKey: {{ . }}
      maxSkew: {{ $w.topologySpread.maxSkew | int }}
      whenUnsatisfiable: {{ $w.topologySpread.whenUnsatisfiable }}
      labelSelector:
        matchLabels:
          {{- include "regatta.selectorLabels" (dict "root" $root "component" $.component) | nindent 10 }}
      matchLabelKeys:
        - pod-template-hash
    {{- end }}
  {{- end }}
  containers:
    - name: {{ .component }}
      image: {{ include "regatta.image" (dict "root" $root "image" $w.image) | quote }}
      imagePullPolicy: {{ $w.image.pullPolicy }}
      {{- with $w.args | default .args }}
      args:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        - name: {{ .portName }}
          containerPort: {{ .port }}
          protocol: TCP
      {{- if or .serviceEnv .extraEnv $w.env }}
      env:
        {{- if .serviceEnv }}
        {{- include "regatta.serviceEnv" $root | nindent 8 }}
        {{- include "regatta.otelEnv" (dict "root" $root "service" .component) | nindent 8 }}
        {{- end }}
        {{- with .extraEnv }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with $w.env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      {{- with $w.envFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      startupProbe:
        {{- include "regatta.probe" (dict "probe" $w.probes.startup "port" .portName) | nindent 8 }}
      readinessProbe:
        {{- include "regatta.probe" (dict "probe" $w.probes.readiness "port" .portName) | nindent 8 }}
      livenessProbe:
        {{- include "regatta.probe" (dict "probe" $w.probes.liveness "port" .portName) | nindent 8 }}
      lifecycle:
        preStop:
          sleep:
            seconds: {{ $preStop }}
      resources:
        {{- toYaml $w.resources | nindent 8 }}
      securityContext:
        {{- include "regatta.securityContext" (dict "root" $root "context" $w.securityContext) | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if .apiKeys }}
        - name: api-keys
          mountPath: /etc/regatta/api-keys
          readOnly: true
        {{- end }}
        {{- with $w.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        medium: Memory
        sizeLimit: {{ $w.tmpSizeLimit }}
    {{- if .apiKeys }}
    - name: api-keys
      secret:
        secretName: {{ include "regatta.apiKeys.secretName" $root }}
        items:
          - key: {{ $root.Values.apiKeys.secretKey }}
            path: {{ $root.Values.apiKeys.secretKey }}
    {{- end }}
    {{- with $w.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* Whether an API scales through KEDA on its request rate (and CPU) instead of an HPA. */}}
{{- define "regatta.requestRateScaling" -}}
{{- if and .autoscaling.enabled .autoscaling.requestRate.enabled -}}true{{- end -}}
{{- end -}}

{{/*
HPA (or, with autoscaling.requestRate on an API, a KEDA ScaledObject) and PDB of a Deployment.
(dict "root" $ "w" $w "component" "items" "api" true)
*/}}
{{- define "regatta.scaling" -}}
{{- $w := .w -}}
{{- $labels := include "regatta.labels" (dict "root" .root "component" .component) -}}
{{- $name := printf "%s-%s" (include "regatta.fullname" .root) .component -}}
{{- if and .api (include "regatta.requestRateScaling" $w) }}
{{- $rate := $w.autoscaling.requestRate }}
{{- if not $rate.prometheusAddress }}
{{- fail (printf "%s: autoscaling.requestRate needs prometheusAddress (the Prometheus KEDA queries)" .component) }}
{{- end }}
---
# CPU as the HPA would, plus the request rate the API serves (recording rule
# service_name:http_requests:rate1m): whichever asks for more replicas wins.
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ $name }}
  labels:
    {{- $labels | nindent 4 }}
spec:
  scaleTargetRef:
    name: {{ $name }}
  minReplicaCount: {{ $w.autoscaling.minReplicas | int }}
  maxReplicaCount: {{ $w.autoscaling.maxReplicas | int }}
  pollingInterval: {{ $rate.pollingInterval | int }}
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        {{- include "regatta.hpaBehavior" $w | nindent 8 }}
  triggers:
    - type: cpu
      metricType: Utilization
      metadata:
        value: {{ $w.autoscaling.targetCPUUtilizationPercentage | int | toString | quote }}
    {{- with $w.autoscaling.targetMemoryUtilizationPercentage | int }}
    - type: memory
      metricType: Utilization
      metadata:
        value: {{ . | toString | quote }}
    {{- end }}
    - type: prometheus
      metricType: AverageValue
      metadata:
        serverAddress: {{ $rate.prometheusAddress | quote }}
        query: {{ printf "sum(service_name:http_requests:rate1m{namespace=%q, service_name=%q})" .root.Release.Namespace .component | quote }}
        threshold: {{ $rate.requestsPerSecond | int | toString | quote }}
        ignoreNullValues: "true"
{{- else if $w.autoscaling.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $name }}
  labels:
    {{- $labels | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ $name }}
  minReplicas: {{ $w.autoscaling.minReplicas | int }}
  maxReplicas: {{ $w.autoscaling.maxReplicas | int }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $w.autoscaling.targetCPUUtilizationPercentage | int }}
    {{- with $w.autoscaling.targetMemoryUtilizationPercentage | int }}
    - type: Resource
      resource:
        name: memory
        target:
          type: Utilization
          averageUtilization: {{ . }}
    {{- end }}
  behavior:
    {{- include "regatta.hpaBehavior" $w | nindent 4 }}
{{- end }}
{{- $least := int $w.replicas -}}
{{- if $w.autoscaling.enabled -}}{{- $least = int $w.autoscaling.minReplicas -}}{{- end -}}
{{- if and $w.pdb.enabled (gt $least 1) }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $name }}
  labels:
    {{- $labels | nindent 4 }}
spec:
  maxUnavailable: {{ $w.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "regatta.selectorLabels" (dict "root" .root "component" .component) | nindent 6 }}
{{- end }}
{{- end -}}

{{/* How fast an autoscaler adds and removes pods: no flapping after a burst. */}}
{{- define "regatta.hpaBehavior" -}}
scaleDown:
  stabilizationWindowSeconds: {{ .autoscaling.scaleDownStabilizationWindowSeconds | int }}
  policies:
    - type: Pods
      value: 1
      periodSeconds: 60
scaleUp:
  stabilizationWindowSeconds: 0
  policies:
    - type: Percent
      value: 100
      periodSeconds: 30
{{- end -}}

{{/* Whether the Prometheus Operator's CRDs are served (or rendering is forced). */}}
{{- define "regatta.prometheusOperator" -}}
{{- if or .force (.root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") -}}true{{- end -}}
{{- end -}}
