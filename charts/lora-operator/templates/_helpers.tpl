{{/* Names, labels and the derived settings every template shares. */}}

{{- define "lora-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lora-operator.fullname" -}}
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

{{- define "lora-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lora-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lora-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lora-operator.labels" -}}
helm.sh/chart: {{ include "lora-operator.chart" . }}
{{ include "lora-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lora-operator
{{- end }}

{{- define "lora-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lora-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "lora-operator.trainerServiceAccountName" -}}
{{- if .Values.trainer.serviceAccount.create }}
{{- default (printf "%s-trainer" (include "lora-operator.fullname" .)) .Values.trainer.serviceAccount.name }}
{{- else }}
{{- .Values.trainer.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Peering (kopf leader election) is on with several replicas or when asked for. */}}
{{- define "lora-operator.peering" -}}
{{- if .Values.peering.enabled }}true{{ end }}
{{- end }}

{{/* Leader election: asked for, or implied by more than one replica. */}}
{{- define "lora-operator.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{- define "lora-operator.leaseName" -}}
{{- include "lora-operator.fullname" . }}
{{- end }}

{{/* Namespaces with a Role: the watched ones in namespaced mode. The system namespaces are
refused: the operator's Role writes Secrets and ServiceAccounts where it is bound. */}}
{{- define "lora-operator.watchNamespaces" -}}
{{- if .Values.watch.allNamespaces }}{{ list | toJson }}{{ else }}
{{- range .Values.watch.namespaces }}
{{- if has . (list "kube-system" "kube-public" "kube-node-lease") }}
{{- fail (printf "watch.namespaces: %s is a system namespace; the operator's Role there would let it write Secrets and ServiceAccounts. Run LoRAJobs in a namespace of their own" .) }}
{{- end }}
{{- end }}
{{- .Values.watch.namespaces | toJson }}{{ end }}
{{- end }}

{{- define "lora-operator.minio.fullname" -}}
{{- printf "%s-minio" (include "lora-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lora-operator.minio.secretName" -}}
{{- default (include "lora-operator.minio.fullname" .) .Values.minio.auth.existingSecret }}
{{- end }}

{{- define "lora-operator.minio.endpoint" -}}
{{- printf "http://%s.%s.svc:9000" (include "lora-operator.minio.fullname" .) .Release.Namespace }}
{{- end }}

{{/* Container hardening shared by every pod of the chart. */}}
{{- define "lora-operator.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "lora-operator.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Rules for what the operator does inside a watched namespace: exactly
lora_operator.controller.api_calls.API_CALLS plus kopf's own calls (tests/chart/test_rbac.py
compares them). Each rule's reason: docs/operating.md, "RBAC".
*/}}
{{- define "lora-operator.namespacedRules" -}}
- apiGroups: ["finetune.lora-operator.io"]
  resources: ["lorajobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["finetune.lora-operator.io"]
  resources: ["lorajobs/status"]
  verbs: ["patch"]
- apiGroups: ["finetune.lora-operator.io"]
  resources: ["lorajobs/finalizers"]
  verbs: ["update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "get", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "get", "patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "get", "list", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- /* Secrets: get only, the S3 credentials Secret a job names (policy opt-in label, progress
  reads). No Secret is ever written: serving lists the job's own Secret by name in the serving
  ServiceAccount. ServiceAccounts: <job>-trainer (create/get) and the serving <job>-serving
  (also patch/delete). */}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["serving.kserve.io"]
  resources: ["inferenceservices", "servingruntimes", "llminferenceservices"]
  verbs: ["create", "get", "patch", "delete"]
{{- if include "lora-operator.peering" . }}
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end }}

{{/* Namespaces that get the trainer ServiceAccount (JSON list). */}}
{{- define "lora-operator.trainerNamespaces" -}}
{{- if .Values.watch.allNamespaces }}{{ .Values.trainer.serviceAccount.namespaces | toJson }}
{{- else }}{{ concat .Values.watch.namespaces .Values.trainer.serviceAccount.namespaces | uniq | toJson }}
{{- end }}
{{- end }}
