{{/* Names. Objects are "<base>-<component>", base being the release name (or fullnameOverride). */}}
{{- define "remora.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "remora.base" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "remora.server" -}}{{ include "remora.base" . }}-remora{{- end -}}
{{- define "remora.headless" -}}{{ include "remora.base" . }}-remora-headless{{- end -}}
{{- define "remora.registryName" -}}
{{- default (printf "%s-models" (include "remora.base" .)) .Values.registry.existingConfigMap -}}
{{- end -}}
{{- define "remora.injectionName" -}}{{ include "remora.base" . }}-injection{{- end -}}
{{- define "remora.webhookName" -}}{{ include "remora.base" . }}-webhook{{- end -}}
{{- define "remora.webhookTLSSecret" -}}{{ include "remora.base" . }}-webhook-tls{{- end -}}
{{- define "remora.envoyName" -}}{{ include "remora.base" . }}-envoy{{- end -}}
{{- define "remora.apiKeySecret" -}}
{{- default (printf "%s-api-key" (include "remora.base" .)) .Values.apiKey.existingSecret -}}
{{- end -}}

{{- define "remora.injectionEnabled" -}}{{ if has .Values.mode (list "injection" "both") }}true{{ end }}{{- end -}}
{{- define "remora.sharedEnabled" -}}{{ if has .Values.mode (list "shared" "both") }}true{{ end }}{{- end -}}

{{- define "remora.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "remora.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include "remora.selectorLabels" (list . "server") */}}
{{- define "remora.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "remora.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The Remora image; the CUDA build when the container gets GPUs. */}}
{{- define "remora.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if and (gt (int .Values.sidecar.gpu) 0) (not (hasSuffix .Values.image.cudaSuffix $tag)) -}}
{{- $tag = printf "%s%s" $tag .Values.image.cudaSuffix -}}
{{- end -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{/* The webhook runs the CPU image: it never touches a model. */}}
{{- define "remora.webhookImage" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Container resources with the GPU limit added. */}}
{{- define "remora.sidecarResources" -}}
{{- $res := deepCopy (default dict .Values.sidecar.resources) -}}
{{- if gt (int .Values.sidecar.gpu) 0 -}}
{{- $limits := default dict (get $res "limits") -}}
{{- $_ := set $limits "nvidia.com/gpu" (int .Values.sidecar.gpu) -}}
{{- $_ := set $res "limits" $limits -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/* Environment of the Remora container (shared mode; the webhook builds its own from injection.yaml). */}}
{{- define "remora.sidecarEnv" -}}
- name: REMORA_CONFIG
  value: /etc/remora/models.yaml
- name: REMORA_MODEL_ROOTS
  value: /models
{{- if .Values.sidecar.memoryBudget }}
- name: REMORA_MEMORY_BUDGET
  value: {{ .Values.sidecar.memoryBudget | quote }}
{{- end }}
{{- if .Values.apiKey.enabled }}
- name: REMORA_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "remora.apiKeySecret" . }}
      key: {{ .Values.apiKey.secretKey }}
{{- end }}
{{- with .Values.sidecar.env }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod and container security: uid/gid 10001, nothing written outside /tmp and /models. */}}
{{- define "remora.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "remora.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Checks that span several values (the schema checks each value alone). */}}
{{- define "remora.validate" -}}
{{- if and .Values.autoscaling.keda.enabled .Values.autoscaling.hpa.enabled -}}
{{- fail "autoscaling.keda.enabled and autoscaling.hpa.enabled are exclusive: KEDA creates its own HPA" -}}
{{- end -}}
{{- if and (or .Values.autoscaling.keda.enabled .Values.autoscaling.hpa.enabled) (not (include "remora.sharedEnabled" .)) -}}
{{- fail "autoscaling applies to the shared pool: set mode to shared or both" -}}
{{- end -}}
{{- if and .Values.autoscaling.keda.enabled (eq (int .Values.autoscaling.minReplicas) 0) (empty .Values.autoscaling.keda.extraTriggers) -}}
{{- fail "autoscaling.minReplicas 0 (scale to zero) needs a wake-up trigger in autoscaling.keda.extraTriggers: Remora's own metrics disappear with its last pod" -}}
{{- end -}}
{{- if and .Values.autoscaling.hpa.enabled (lt (int .Values.autoscaling.minReplicas) 1) -}}
{{- fail "an HPA cannot scale to zero: autoscaling.minReplicas must be >= 1 without KEDA" -}}
{{- end -}}
{{- if and .Values.apiKey.enabled (not .Values.apiKey.existingSecret) (not .Values.apiKey.value) -}}
{{- fail "apiKey.enabled needs apiKey.existingSecret or apiKey.value" -}}
{{- end -}}
{{- if and (eq .Values.models.source "init") (not .Values.models.init.image) -}}
{{- fail "models.source init needs models.init.image" -}}
{{- end -}}
{{- if and (eq .Values.proxy.kind "gateway-api") (include "remora.sharedEnabled" .) (empty .Values.proxy.gatewayApi.parentRefs) -}}
{{- fail "proxy.kind gateway-api needs proxy.gatewayApi.parentRefs" -}}
{{- end -}}
{{- if .Values.shared.perPodModelsVolume.enabled -}}
{{- if ne .Values.shared.kind "StatefulSet" -}}
{{- fail "shared.perPodModelsVolume needs shared.kind StatefulSet" -}}
{{- end -}}
{{- if not (has .Values.models.source (list "init" "emptyDir")) -}}
{{- fail "shared.perPodModelsVolume replaces the /models volume: use models.source init (fills it) or emptyDir (hub downloads)" -}}
{{- end -}}
{{- end -}}
{{- end -}}
