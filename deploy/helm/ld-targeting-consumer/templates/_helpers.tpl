{{/* Names and labels, as in most well-kept charts. */}}
{{- define "ldc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ldc.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ldc.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ldc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ldc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ldc.labels" -}}
helm.sh/chart: {{ include "ldc.chart" . }}
{{ include "ldc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: consumer
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "ldc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ldc.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The `job` label of the scraped series; the alert rules select on it. */}}
{{- define "ldc.jobName" -}}
{{- default (include "ldc.fullname" .) .Values.monitoring.jobName }}
{{- end }}

{{/*
One setting of `config` as an integer. Values files give numbers as floats (16777216 would
print as 1.6777216e+07), `--set` as integers: int64 makes both comparable.
*/}}
{{- define "ldc.int" -}}
{{- int64 (index .root.Values.config .name) }}
{{- end }}

{{/* One setting of `config` as the string the environment gets (numbers without exponent). */}}
{{- define "ldc.configValue" -}}
{{- if kindIs "string" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/*
Seconds the service's stop may take: CONSUMER_SHUTDOWN_TIMEOUT_MS (rounded up) plus the 5 s
it gives itself past that for the last commit and closing (consumer/app.py, STOP_GRACE).
*/}}
{{- define "ldc.stopSeconds" -}}
{{- add (div (add (include "ldc.int" (dict "root" . "name" "CONSUMER_SHUTDOWN_TIMEOUT_MS")) 999) 1000) 5 }}
{{- end }}

{{- define "ldc.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add (include "ldc.stopSeconds" .) .Values.terminationGraceMarginSeconds }}
{{- else }}
{{- int64 .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* The Secret holding the API token: the user's, or the chart's (plain value, opted in). */}}
{{- define "ldc.tokenSecretName" -}}
{{- default (printf "%s-ld-api-token" (include "ldc.fullname" .)) .Values.ldApiToken.existingSecret }}
{{- end }}

{{- define "ldc.tokenSecretKey" -}}
{{- if .Values.ldApiToken.existingSecret }}{{ .Values.ldApiToken.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{- define "ldc.tokenDir" -}}
/var/run/secrets/ld-targeting-consumer/ld-api-token
{{- end }}

{{- define "ldc.kafkaTlsDir" -}}
/etc/ld-targeting-consumer/kafka-tls
{{- end }}

{{/* "true" when the security protocol uses SASL / TLS (as strings: include returns text). */}}
{{- define "ldc.kafkaSasl" -}}
{{- hasPrefix "SASL_" .Values.config.KAFKA_SECURITY_PROTOCOL }}
{{- end }}

{{- define "ldc.kafkaTls" -}}
{{- has .Values.config.KAFKA_SECURITY_PROTOCOL (list "SSL" "SASL_SSL") }}
{{- end }}

{{/* KEDA's name of the SASL mechanism (pkg/scalers/kafka_scaler.go). */}}
{{- define "ldc.kedaSasl" -}}
{{- get (dict "PLAIN" "plaintext" "SCRAM-SHA-256" "scram_sha256" "SCRAM-SHA-512" "scram_sha512") .Values.config.KAFKA_SASL_MECHANISM }}
{{- end }}

{{/* A TriggerAuthentication is needed when KEDA must present credentials or trust a CA. */}}
{{- define "ldc.kedaNeedsAuth" -}}
{{- or (eq (include "ldc.kafkaSasl" .) "true") (and (eq (include "ldc.kafkaTls" .) "true") (ne .Values.kafka.tls.existingSecret "")) }}
{{- end }}
