{{/* Names and labels shared by every object of the release. */}}

{{- define "eagle-eye-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "eagle-eye-operator.fullname" -}}
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

{{- define "eagle-eye-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eagle-eye-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "eagle-eye-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "eagle-eye-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "eagle-eye-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "eagle-eye-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Lease: as the operator names it by default (src/shard.rs), unless set. */}}
{{- define "eagle-eye-operator.leaseName" -}}
{{- $selector := trim .Values.credentialSelector }}
{{- if .Values.leaderElection.leaseName }}
{{- .Values.leaderElection.leaseName }}
{{- else if $selector }}
{{- printf "eagle-eye-operator-%s" (sha256sum $selector | trunc 8) }}
{{- else }}
{{- "eagle-eye-operator" }}
{{- end }}
{{- end }}

{{- define "eagle-eye-operator.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The rules the operator needs on credentials, Secrets and Events, wherever it watches. They
are the operator's exact API use; tests run the binary with nothing more.
*/}}
{{- define "eagle-eye-operator.watchRules" -}}
- apiGroups: ["eagle-eye-operator.io"]
  resources: ["eagleeyecredentials"]
  # patch: the finalizer of spec.revokeOnDelete, added and removed over the version read.
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["eagle-eye-operator.io"]
  resources: ["eagleeyecredentials/status"]
  # Status is written by server-side apply.
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets"]
  # get/list/watch: Secret metadata is watched, referenced Secrets read. update: the rotated
  # refresh token is written back with a resourceVersion precondition. patch/create: the
  # target Secret is server-side applied (an apply that creates needs create).
  verbs: ["get", "list", "watch", "update", "patch", "create"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.podNudge.enabled }}
- apiGroups: [""]
  resources: ["pods"]
  # The consumer nudge: list the selected pods, merge-patch one annotation on each.
  verbs: ["list", "patch"]
{{- end }}
{{- if .Values.workloadRestart.enabled }}
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  # Restart targets: get a named workload, list those a selector matches, merge-patch the
  # pod-template annotation kubectl.kubernetes.io/restartedAt.
  verbs: ["get", "list", "patch"]
{{- end }}
{{- end }}
