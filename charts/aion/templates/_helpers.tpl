{{/* Names, labels and the pieces every aion workload shares. */}}

{{- define "aion.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's base name; components append "-<component>". */}}
{{- define "aion.fullname" -}}
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

{{/* A component's resource name. Args: dict "root" $ "component" "gateway". */}}
{{- define "aion.componentName" -}}
{{- printf "%s-%s" (include "aion.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select a component's pods. Args: dict "root" $ "component" "gateway". */}}
{{- define "aion.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aion.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every label of a component's objects. Args: dict "root" $ "component" "gateway". */}}
{{- define "aion.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "aion.selectorLabels" . }}
app.kubernetes.io/part-of: aion
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{/* An image reference. Args: dict "root" $ "image" .Values.<component>.image. */}}
{{- define "aion.image" -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s" .image.repository (toString $tag) -}}
{{- end -}}

{{/* host:port of a component's Service. Args: dict "root" $ "component" "router" "port" 50052. */}}
{{- define "aion.target" -}}
{{- printf "%s.%s.svc:%v" (include "aion.componentName" .) .root.Release.Namespace .port -}}
{{- end -}}

{{/* The gateway's auth Secret: yours, or the one the chart creates. */}}
{{- define "aion.gatewayAuthSecret" -}}
{{- .Values.gateway.auth.existingSecret | default (printf "%s-auth" (include "aion.componentName" (dict "root" . "component" "gateway"))) -}}
{{- end -}}

{{/* The Secret holding the agent service's Postgres DSN. */}}
{{- define "aion.agentPostgresSecret" -}}
{{- .Values.agent.postgres.existingSecret | default (printf "%s-postgres" (include "aion.componentName" (dict "root" . "component" "agent"))) -}}
{{- end -}}

{{/* The Secret holding the provider's API key: yours, the chart's, or empty when there is no key. */}}
{{- define "aion.providerSecret" -}}
{{- with .Values.provider.apiKey -}}
{{- if .existingSecret -}}
{{- .existingSecret -}}
{{- else if .value -}}
{{- printf "%s-provider" (include "aion.componentName" (dict "root" $ "component" "agent")) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The routing policy file: router.policy, with the provider from .Values.provider. */}}
{{- define "aion.routerPolicy" -}}
{{- $policy := deepCopy .Values.router.policy -}}
{{- with .Values.provider -}}
{{- if .baseUrl -}}
{{- $_ := set $policy "provider" (dict "name" .name "base_url" .baseUrl "model" .model "usd_per_1k_tokens" .usdPer1kTokens) -}}
{{- end -}}
{{- end -}}
{{- toYaml $policy -}}
{{- end -}}

{{/* The Secrets of the knowledge service's Postgres DSN and MinIO keys: yours or the chart's. */}}
{{- define "aion.knowledgePostgresSecret" -}}
{{- .Values.knowledge.postgres.existingSecret | default (printf "%s-postgres" (include "aion.componentName" (dict "root" . "component" "knowledge"))) -}}
{{- end -}}
{{- define "aion.knowledgeMinioSecret" -}}
{{- .Values.knowledge.minio.existingSecret | default (printf "%s-minio" (include "aion.componentName" (dict "root" . "component" "knowledge"))) -}}
{{- end -}}

{{/* The executor the knowledge service embeds with: knowledge.executorTarget, else the embedding Agent's. */}}
{{- define "aion.knowledgeExecutorTarget" -}}
{{- if .Values.knowledge.executorTarget -}}
{{- .Values.knowledge.executorTarget -}}
{{- else if .Values.knowledge.embeddingAgent.enabled -}}
{{- printf "%s.%s.svc:50055" (include "aion.executorName" (include "aion.embeddingAgentName" .)) .Release.Namespace -}}
{{- else -}}
{{- fail "knowledge.executorTarget is required when knowledge.embeddingAgent.enabled is false: the knowledge service embeds through an executor" -}}
{{- end -}}
{{- end -}}

{{/* The knowledge index's claim: yours or the chart's. */}}
{{- define "aion.knowledgeClaim" -}}
{{- .Values.knowledge.persistence.existingClaim | default (printf "%s-index" (include "aion.componentName" (dict "root" . "component" "knowledge"))) -}}
{{- end -}}

{{/* The embedding Agent's name. */}}
{{- define "aion.embeddingAgentName" -}}
{{- .Values.knowledge.embeddingAgent.name | default (printf "%s-embeddings" (include "aion.fullname" .)) -}}
{{- end -}}

{{/*
Env every service reads: where it listens, metrics, logs, traces and shutdown.
Args: dict "root" $ "prefix" "AION_GATEWAY" "port" 50051.
*/}}
{{- define "aion.commonEnv" -}}
- name: {{ .prefix }}_HOST
  value: "0.0.0.0"
- name: {{ .prefix }}_PORT
  value: {{ .port | quote }}
- name: {{ .prefix }}_METRICS_PORT
  value: {{ .root.Values.metrics.port | quote }}
- name: {{ .prefix }}_LOG_LEVEL
  value: {{ .root.Values.logLevel | quote }}
- name: {{ .prefix }}_GRACE_S
  value: {{ .root.Values.shutdown.graceSeconds | quote }}
- name: {{ .prefix }}_DRAIN_DELAY_S
  value: {{ .root.Values.shutdown.drainDelaySeconds | quote }}
{{- with .root.Values.otel.endpoint }}
- name: {{ $.prefix }}_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* Prometheus scrape annotations for a pod template. */}}
{{- define "aion.scrapeAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end -}}

{{/* gRPC health probes on a port (the standard grpc.health.v1 service). Args: the port. */}}
{{- define "aion.grpcProbes" -}}
readinessProbe:
  grpc:
    port: {{ . }}
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  grpc:
    port: {{ . }}
  initialDelaySeconds: 10
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}

{{/* The pod-level security context: non-root, as the images' user. */}}
{{- define "aion.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The container-level security context. */}}
{{- define "aion.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Image pull secrets, when any; empty otherwise. */}}
{{- define "aion.pullSecrets" -}}
{{- with .Values.image.pullSecrets -}}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* Scheduling constraints of a component, empty when none. Args: .Values.<component>. */}}
{{- define "aion.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The name of an Agent's executor Service, as the operator's render.executor_name makes it. */}}
{{- define "aion.executorName" -}}
{{- $name := printf "aion-executor-%s" . | replace "." "-" -}}
{{- if gt (len $name) 63 -}}
{{- fail (printf "the executor name %s is longer than 63 characters: choose a shorter Agent name" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/* The gRPC Service of a component. Args: dict "root" $ "component" "router" "values" .Values.router. */}}
{{- define "aion.grpcService" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "aion.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "aion.labels" . | nindent 4 }}
  {{- with (.values.service | default dict).annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ (.values.service | default dict).type | default "ClusterIP" }}
  selector:
    {{- include "aion.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ .values.port }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    {{- with .values.httpPort }}
    - name: http
      port: {{ . }}
      targetPort: http
      protocol: TCP
      appProtocol: http
    {{- end }}
{{- end -}}

{{/* Kafka security (agent.kafka: TLS, SASL) as a component's env. Args: dict "root" $ "prefix" "AION_AGENT". */}}
{{- define "aion.kafkaEnv" -}}
{{- $k := .root.Values.agent.kafka -}}
- name: {{ .prefix }}_KAFKA_SECURITY_PROTOCOL
  value: {{ $k.securityProtocol | quote }}
{{- if hasPrefix "SASL_" $k.securityProtocol }}
- name: {{ .prefix }}_KAFKA_SASL_MECHANISM
  value: {{ $k.sasl.mechanism | quote }}
- name: {{ .prefix }}_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $k.sasl.existingSecret }}
      key: {{ $k.sasl.usernameKey }}
- name: {{ .prefix }}_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $k.sasl.existingSecret }}
      key: {{ $k.sasl.passwordKey }}
{{- end }}
{{- if and (hasSuffix "SSL" $k.securityProtocol) $k.tls.existingSecret }}
- name: {{ .prefix }}_KAFKA_SSL_CAFILE
  value: {{ printf "/etc/aion/kafka-tls/%s" $k.tls.caKey | quote }}
{{- if $k.tls.clientCertificate }}
- name: {{ .prefix }}_KAFKA_SSL_CERTFILE
  value: {{ printf "/etc/aion/kafka-tls/%s" $k.tls.certKey | quote }}
- name: {{ .prefix }}_KAFKA_SSL_KEYFILE
  value: {{ printf "/etc/aion/kafka-tls/%s" $k.tls.keyKey | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The volume mount of agent.kafka.tls.existingSecret, when TLS reads one. Args: $. */}}
{{- define "aion.kafkaVolumeMount" -}}
{{- $k := .Values.agent.kafka -}}
{{- if and (hasSuffix "SSL" $k.securityProtocol) $k.tls.existingSecret }}
- name: kafka-tls
  mountPath: /etc/aion/kafka-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* The volume of agent.kafka.tls.existingSecret, when TLS reads one. Args: $. */}}
{{- define "aion.kafkaVolume" -}}
{{- $k := .Values.agent.kafka -}}
{{- if and (hasSuffix "SSL" $k.securityProtocol) $k.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ $k.tls.existingSecret }}
{{- end }}
{{- end -}}
