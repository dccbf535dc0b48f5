{{/* Name of the workload and its config: <release>-<mode> unless the release says it already. */}}
{{- define "tailgate.fullname" -}}
{{- if contains .Values.mode .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Values.mode | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tailgate.selectorLabels" -}}
app.kubernetes.io/name: tailgate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ .Values.mode }}
{{- end -}}

{{- define "tailgate.labels" -}}
{{ include "tailgate.selectorLabels" . }}
app.kubernetes.io/part-of: tailgate
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The config the mode runs: .Values.config, else the article's file for the mode. */}}
{{- define "tailgate.config" -}}
{{- if .Values.config -}}
{{ toYaml .Values.config }}
{{- else -}}
{{ .Files.Get (printf "files/%s.yaml" .Values.mode) }}
{{- end -}}
{{- end -}}

{{- define "tailgate.validate" -}}
{{- if not (has .Values.mode (list "agent" "gateway")) -}}
{{- fail (printf "mode must be agent or gateway, not %q" .Values.mode) -}}
{{- end -}}
{{- end -}}
