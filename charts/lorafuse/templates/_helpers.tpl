{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "lorafuse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or <release> alone when it already contains the chart name.
*/}}
{{- define "lorafuse.fullname" -}}
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

{{- define "lorafuse.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lorafuse.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lorafuse.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "lorafuse.labels" -}}
helm.sh/chart: {{ include "lorafuse.chart" . }}
{{ include "lorafuse.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: lorafuse
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "lorafuse.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lorafuse.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The peering object's name: fixed by the operator (lorafuse.operator.naming.PEERING_NAME).
*/}}
{{- define "lorafuse.peeringName" -}}
lorafuse
{{- end }}

{{/*
An image reference; the tag defaults to the chart's appVersion.
Call with (dict "image" .Values.x.image "context" $).
*/}}
{{- define "lorafuse.image" -}}
{{- printf "%s:%s" .image.repository (default .context.Chart.AppVersion .image.tag) }}
{{- end }}

{{/*
The RBAC rules the operator needs, generated from lorafuse.operator.rbac into files/.
*/}}
{{- define "lorafuse.rbacRules" -}}
{{- .Files.Get "files/rbac-rules.yaml" | fromYaml | toYaml }}
{{- end }}

{{/*
Fail early on combinations that cannot work.
*/}}
{{- define "lorafuse.validate" -}}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.peering.enabled) }}
{{- fail "operator.replicas > 1 needs peering.enabled=true: without peering every replica would reconcile the same objects" }}
{{- end }}
{{- range .Values.watchNamespaces }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" .) }}
{{- fail (printf "watchNamespaces: %q is not a valid namespace name" .) }}
{{- end }}
{{- end }}
{{- end }}
