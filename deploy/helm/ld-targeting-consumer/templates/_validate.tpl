{{/*
Every rule the chart enforces, in one place: rendering stops with one message per broken rule.
values.schema.json checks types and ranges first; these are the rules between values.

The timeout rules are the service's own (consumer/settings.py, violations(), same wording):
the service would refuse to start, and every member would crash-loop after the rollout.
*/}}
{{- define "ldc.validate" -}}
{{- $errors := list }}
{{- $c := .Values.config }}
{{- $int := dict }}
{{- range $name := list "CONSUMER_SHUTDOWN_TIMEOUT_MS" "CONSUMER_REVOKE_TIMEOUT_MS" "LD_REQUEST_TIMEOUT_MS" "LD_UNKNOWN_OUTCOME_SETTLE_MS" "KAFKA_COMMIT_TIMEOUT_MS" "KAFKA_REBALANCE_TIMEOUT_MS" "KAFKA_SESSION_TIMEOUT_MS" "KAFKA_HEARTBEAT_INTERVAL_MS" "LD_OUTAGE_WINDOW_MS" "LD_RETRY_MAX_ELAPSED_MS" }}
{{- $_ := set $int $name (int64 (index $c $name)) }}
{{- end }}

{{- if not $c.KAFKA_BOOTSTRAP_SERVERS }}
{{- $errors = append $errors "config.KAFKA_BOOTSTRAP_SERVERS is required (host:port of the brokers, comma-separated)" }}
{{- end }}

{{- /* Secrets: only from Secrets, never in the ConfigMap. */}}
{{- range $name := list "LD_API_TOKEN" "LD_API_TOKEN_FILE" "KAFKA_SASL_USERNAME" "KAFKA_SASL_PASSWORD" "KAFKA_SSL_CAFILE" "KAFKA_SSL_CERTFILE" "KAFKA_SSL_KEYFILE" "KAFKA_SSL_KEY_PASSWORD" }}
{{- if hasKey $c $name }}
{{- $errors = append $errors (printf "config.%s: set by the chart from a Secret, never in the ConfigMap (use ldApiToken for the API token, kafka.sasl and kafka.tls for Kafka's credentials and certificates)" $name) }}
{{- end }}
{{- end }}
{{- range $env := .Values.extraEnv }}
{{- if and (has $env.name (list "LD_API_TOKEN" "KAFKA_SASL_PASSWORD" "KAFKA_SSL_KEY_PASSWORD")) (hasKey $env "value") }}
{{- $errors = append $errors (printf "extraEnv %s has a plain value: a secret must come from a Secret (valueFrom.secretKeyRef), or use ldApiToken / kafka.sasl / kafka.tls" $env.name) }}
{{- end }}
{{- end }}
{{- $token := .Values.ldApiToken }}
{{- if and $token.existingSecret $token.value }}
{{- $errors = append $errors "ldApiToken: give existingSecret or value, not both" }}
{{- else if and $token.value (not $token.allowPlainValue) }}
{{- $errors = append $errors "ldApiToken.value: the API token in plain text in the values is refused (values end up in repositories and in the release's history); create a Secret and set ldApiToken.existingSecret, or set ldApiToken.allowPlainValue=true for a throwaway cluster" }}
{{- else if not (or $token.existingSecret $token.value) }}
{{- $errors = append $errors "ldApiToken.existingSecret is required: the name of a Secret holding the LaunchDarkly API token (kubectl create secret generic ld-api-token --from-literal=token=...)" }}
{{- end }}

{{- /* Kafka security: the credentials the protocol needs, and no credentials it would ignore. */}}
{{- $sasl := eq (include "ldc.kafkaSasl" .) "true" }}
{{- $tls := eq (include "ldc.kafkaTls" .) "true" }}
{{- if and $sasl (not .Values.kafka.sasl.existingSecret) }}
{{- $errors = append $errors (printf "kafka.sasl.existingSecret is required with KAFKA_SECURITY_PROTOCOL=%s (a Secret with the SASL username and password)" $c.KAFKA_SECURITY_PROTOCOL) }}
{{- end }}
{{- if and .Values.kafka.sasl.existingSecret (not $sasl) }}
{{- $errors = append $errors (printf "kafka.sasl.existingSecret is set but KAFKA_SECURITY_PROTOCOL=%s does not use SASL (SASL_PLAINTEXT or SASL_SSL)" $c.KAFKA_SECURITY_PROTOCOL) }}
{{- end }}
{{- if and .Values.kafka.tls.existingSecret (not $tls) }}
{{- $errors = append $errors (printf "kafka.tls.existingSecret is set but KAFKA_SECURITY_PROTOCOL=%s does not use TLS (SSL or SASL_SSL)" $c.KAFKA_SECURITY_PROTOCOL) }}
{{- end }}
{{- if ne (empty .Values.kafka.tls.certKey) (empty .Values.kafka.tls.keyKey) }}
{{- $errors = append $errors "kafka.tls.certKey and kafka.tls.keyKey go together (a client certificate and its key)" }}
{{- end }}

{{- /* The service's rules between timeouts (consumer/settings.py). */}}
{{- if not (lt $int.KAFKA_HEARTBEAT_INTERVAL_MS $int.KAFKA_SESSION_TIMEOUT_MS) }}
{{- $errors = append $errors (printf "config: KAFKA_HEARTBEAT_INTERVAL_MS must be lower than KAFKA_SESSION_TIMEOUT_MS (%d >= %d)" $int.KAFKA_HEARTBEAT_INTERVAL_MS $int.KAFKA_SESSION_TIMEOUT_MS) }}
{{- end }}
{{- $landed := add $int.LD_REQUEST_TIMEOUT_MS $int.LD_UNKNOWN_OUTCOME_SETTLE_MS }}
{{- if not (lt $landed $int.CONSUMER_REVOKE_TIMEOUT_MS) }}
{{- $errors = append $errors (printf "config: LD_REQUEST_TIMEOUT_MS + LD_UNKNOWN_OUTCOME_SETTLE_MS must be lower than CONSUMER_REVOKE_TIMEOUT_MS (%d >= %d)" $landed $int.CONSUMER_REVOKE_TIMEOUT_MS) }}
{{- end }}
{{- $revoke := add $int.CONSUMER_REVOKE_TIMEOUT_MS $int.KAFKA_COMMIT_TIMEOUT_MS }}
{{- if not (lt $revoke $int.KAFKA_REBALANCE_TIMEOUT_MS) }}
{{- $errors = append $errors (printf "config: CONSUMER_REVOKE_TIMEOUT_MS + KAFKA_COMMIT_TIMEOUT_MS must be lower than KAFKA_REBALANCE_TIMEOUT_MS (%d >= %d)" $revoke $int.KAFKA_REBALANCE_TIMEOUT_MS) }}
{{- end }}
{{- if not (lt $landed $int.CONSUMER_SHUTDOWN_TIMEOUT_MS) }}
{{- $errors = append $errors (printf "config: LD_REQUEST_TIMEOUT_MS + LD_UNKNOWN_OUTCOME_SETTLE_MS must be lower than CONSUMER_SHUTDOWN_TIMEOUT_MS (%d >= %d)" $landed $int.CONSUMER_SHUTDOWN_TIMEOUT_MS) }}
{{- end }}
{{- if not (lt $int.LD_OUTAGE_WINDOW_MS $int.LD_RETRY_MAX_ELAPSED_MS) }}
{{- $errors = append $errors (printf "config: LD_OUTAGE_WINDOW_MS must be lower than LD_RETRY_MAX_ELAPSED_MS (%d >= %d)" $int.LD_OUTAGE_WINDOW_MS $int.LD_RETRY_MAX_ELAPSED_MS) }}
{{- end }}

{{- /* Kubernetes must let the drain finish before its SIGKILL. */}}
{{- $stop := int64 (include "ldc.stopSeconds" .) }}
{{- $grace := int64 (include "ldc.terminationGracePeriodSeconds" .) }}
{{- if le $grace $stop }}
{{- $errors = append $errors (printf "terminationGracePeriodSeconds (%d) must be greater than CONSUMER_SHUTDOWN_TIMEOUT_MS plus the service's 5 s to commit and close (%d s): Kubernetes would kill members in the middle of their drain, with requests on the wire (leave it empty to derive it)" $grace $stop) }}
{{- end }}

{{- /* Members: never more than partitions, never more than one rebalance's worth at once. */}}
{{- $keda := .Values.autoscaling.keda }}
{{- if and $keda.enabled (eq $c.CONSUMER_AUTO_OFFSET_RESET "none") }}
{{- $errors = append $errors "autoscaling.keda.enabled with CONSUMER_AUTO_OFFSET_RESET=none: KEDA's offsetResetPolicy (the lag of a partition without a committed offset) is earliest or latest; set CONSUMER_AUTO_OFFSET_RESET to one of them" }}
{{- end }}
{{- if and $keda.enabled (gt (int64 $keda.minReplicas) (int64 $keda.maxReplicas)) }}
{{- $errors = append $errors (printf "autoscaling.keda.minReplicas (%d) must not be above maxReplicas (%d)" (int64 $keda.minReplicas) (int64 $keda.maxReplicas)) }}
{{- end }}
{{- $partitions := .Values.kafka.inputTopicPartitions }}
{{- if not (kindIs "invalid" $partitions) }}
{{- $partitions = int64 $partitions }}
{{- $most := int64 .Values.replicaCount }}
{{- $what := "replicaCount" }}
{{- if $keda.enabled }}
{{- $most = int64 $keda.maxReplicas }}
{{- $what = "autoscaling.keda.maxReplicas" }}
{{- end }}
{{- if gt $most $partitions }}
{{- $errors = append $errors (printf "%s (%d) must not exceed kafka.inputTopicPartitions (%d): a member without a partition does no work but stops the group at every rebalance" $what $most $partitions) }}
{{- else if gt (add $most .Values.rollingUpdate.maxSurge) $partitions }}
{{- $errors = append $errors (printf "%s (%d) + rollingUpdate.maxSurge (%d) must not exceed kafka.inputTopicPartitions (%d): a surge member without a partition never becomes ready and stalls the rollout" $what $most (int64 .Values.rollingUpdate.maxSurge) $partitions) }}
{{- end }}
{{- end }}

{{- if $errors }}
{{- fail (printf "\n- %s" (join "\n- " $errors)) }}
{{- end }}
{{- end }}
