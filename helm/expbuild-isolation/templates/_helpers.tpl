{{/* Names and labels shared by every template. */}}

{{- define "expbuild.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The object name prefix: the release name, plus the chart name unless the release name contains it. */}}
{{- define "expbuild.fullname" -}}
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

{{- define "expbuild.operatorName" -}}
{{- printf "%s-operator" (include "expbuild.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "expbuild.agentName" -}}
{{- printf "%s-agent" (include "expbuild.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "expbuild.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "expbuild.selectorLabels" -}}
app.kubernetes.io/name: {{ include "expbuild.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "expbuild.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "expbuild.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: expbuild-isolation
{{- end }}

{{/* True ("true") when some component installs the expbuild-* seccomp profiles on the nodes. */}}
{{- define "expbuild.profilesInstalled" -}}
{{- if or .Values.agent.enabled .Values.seccompProfiles.installer.enabled }}true{{ end }}
{{- end }}

{{- define "expbuild.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ if kindIs "string" . }}{{ . }}{{ else }}{{ .name }}{{ end }}
{{- end }}
{{- end }}
{{- end }}
