{{/* Names and labels shared by every template. */}}
{{- define "slmops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "slmops.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "slmops.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "slmops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slmops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "slmops.labels" -}}
{{ include "slmops.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "slmops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "slmops.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "slmops.image" -}}
{{- $ref := printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- if .Values.image.digest }}{{ printf "%s@%s" $ref .Values.image.digest }}{{ else }}{{ $ref }}{{ end -}}
{{- end -}}

{{- define "slmops.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "slmops.fullname" .) -}}
{{- end -}}

{{/* The job kinds, read from the CRDs the chart ships (files/crds, written by `slmops crds`):
     a JSON list of {group, plural, versions}.  A new kind needs no template edit. */}}
{{- define "slmops.kinds" -}}
{{- $kinds := list -}}
{{- range $path, $_ := .Files.Glob "files/crds/*.yaml" -}}
{{- $crd := $.Files.Get $path | fromYaml -}}
{{- $versions := list -}}
{{- range $crd.spec.versions }}{{ $versions = append $versions .name }}{{ end -}}
{{- $kinds = append $kinds (dict "group" $crd.spec.group "plural" $crd.spec.names.plural "versions" $versions) -}}
{{- end -}}
{{- toJson $kinds -}}
{{- end -}}

{{/* The operator's permissions on its own resources (mirrors slmops_operator/permissions.py). */}}
{{- define "slmops.jobRules" -}}
{{- $kinds := include "slmops.kinds" . | fromJsonArray -}}
{{- $groups := list -}}{{- $plurals := list -}}{{- $status := list -}}
{{- range $kinds -}}
{{- $groups = append $groups .group | uniq -}}
{{- $plurals = append $plurals .plural -}}
{{- $status = append $status (printf "%s/status" .plural) -}}
{{- end }}
- apiGroups: {{ toJson $groups }}
  resources: {{ toJson (sortAlpha $plurals) }}
  verbs: [get, list, watch, patch, delete]
- apiGroups: {{ toJson $groups }}
  resources: {{ toJson (sortAlpha $status) }}
  verbs: [get, patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- if .Values.kserve.enabled }}
- apiGroups: [serving.kserve.io]
  resources: [inferenceservices]
  verbs: [get, create, patch]
{{- end }}
{{- end -}}
