{{/*
Named templates for your own chart. Each takes this chart's values (with the chart as a
dependency aliased redisProbe: .Values.redisProbe; in this chart: .Values).
*/}}

{{/* The image reference: repository:tag, or repository@digest when a digest is set. */}}
{{- define "redis-probe.image" -}}
{{- if .image.digest -}}
{{ .image.repository }}@{{ .image.digest }}
{{- else -}}
{{ .image.repository }}:{{ .image.tag }}
{{- end -}}
{{- end }}

{{/*
The native sidecar (a restartable init container, Kubernetes 1.29+): one entry of the pod's
initContainers list.
*/}}
{{- define "redis-probe.sidecar" -}}
- name: redis-probe
  image: {{ include "redis-probe.image" . }}
  imagePullPolicy: {{ .image.pullPolicy }}
  restartPolicy: Always
  ports:
    - name: probe
      containerPort: {{ .port }}
      protocol: TCP
  envFrom:
    - configMapRef:
        name: {{ required "redisProbe.redis.configMap: name the ConfigMap your app reads REDIS_ADDRESS from" .redis.configMap }}
  env:
    - name: PROBE_LISTEN
      value: "[::]:{{ .port }}"
    {{- if .redis.secret.name }}
    - name: REDIS_PASSWORD_FILE
      value: /var/run/secrets/redis/{{ .redis.secret.key }}
    {{- end }}
    {{- range $name, $value := .env }}
    - name: {{ $name }}
      value: {{ $value | quote }}
    {{- end }}
  {{- if .redis.secret.name }}
  volumeMounts:
    - name: redis-probe-auth
      mountPath: /var/run/secrets/redis
      readOnly: true
  {{- end }}
  startupProbe:
    httpGet:
      path: /livez
      port: probe
    {{- toYaml .startupProbe | nindent 4 }}
  livenessProbe:
    httpGet:
      path: /livez
      port: probe
    {{- toYaml .livenessProbe | nindent 4 }}
  resources:
    {{- toYaml .resources | nindent 4 }}
  securityContext:
    {{- toYaml .securityContext | nindent 4 }}
{{- end }}

{{/* The pod's volumes for the sidecar (the AUTH token Secret): entries of its volumes list. */}}
{{- define "redis-probe.volumes" -}}
{{- if .redis.secret.name -}}
- name: redis-probe-auth
  secret:
    secretName: {{ .redis.secret.name }}
    items:
      - key: {{ .redis.secret.key }}
        path: {{ .redis.secret.key }}
{{- end }}
{{- end }}

{{/* The app container's readinessProbe: the sidecar's /readyz. */}}
{{- define "redis-probe.readinessProbe" -}}
httpGet:
  path: /readyz
  port: {{ .port }}
{{ toYaml .readinessProbe }}
{{- end }}

{{/* The pod label the PodMonitor selects. */}}
{{- define "redis-probe.podLabels" -}}
redis-probe.io/injected: "true"
{{- end }}

{{/* Labels of this chart's own objects. */}}
{{- define "redis-probe.labels" -}}
app.kubernetes.io/name: redis-probe
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.monitoring.release }}
release: {{ . }}
{{- end }}
{{- with .Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}
