# --- the Remora release ---------------------------------------------------------------------------

variable "release_name" {
  type        = string
  description = "Helm release name of the Remora chart; prefixes the names of what it creates (<release>-remora, <release>-injection, ...)."
  default     = "remora"

  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]*[a-z0-9])?$", var.release_name)) && length(var.release_name) <= 53
    error_message = "release_name is a DNS-1035 label of at most 53 characters (Helm's limit)."
  }
}

variable "namespace" {
  type        = string
  description = "Namespace of the Remora release (the webhook, the shared pool, the proxy)."
  default     = "remora"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.namespace)) && length(var.namespace) <= 63
    error_message = "namespace is a DNS-1123 label."
  }
}

variable "create_namespace" {
  type        = bool
  description = "Create the release namespaces (Remora's, KEDA's, the monitoring one) when they do not exist."
  default     = true
}

variable "chart_repository" {
  type        = string
  description = "Helm repository (https:// or oci://) to install the chart `remora` from. null: the chart in this repository (helm/remora), at the version checked out."
  default     = null

  validation {
    condition     = var.chart_repository == null ? true : can(regex("^(https|oci)://", var.chart_repository))
    error_message = "chart_repository is an https:// or oci:// URL, or null."
  }
}

variable "chart_version" {
  type        = string
  description = "Chart version to install from chart_repository (required with it; ignored for the local chart)."
  default     = null

  validation {
    condition     = var.chart_version == null ? true : can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+(-[0-9A-Za-z.-]+)?$", var.chart_version))
    error_message = "chart_version is an exact semantic version such as 0.1.0."
  }

  validation {
    condition     = var.chart_repository == null || var.chart_version != null
    error_message = "chart_version is required with chart_repository: a release from a repository is pinned."
  }
}

variable "mode" {
  type        = string
  description = "injection: a webhook adds the sidecar to pods labelled remora.dev/inject=true; shared: Remora as its own autoscaled pool behind a model-hashing proxy; both."
  default     = "injection"

  validation {
    condition     = contains(["injection", "shared", "both"], var.mode)
    error_message = "mode is injection, shared or both."
  }
}

variable "proxy" {
  type        = string
  description = "Model-hashing proxy in front of the shared pool: envoy (deployed by the chart), gateway-api (an HTTPRoute on your Gateway; give proxy.gatewayApi.parentRefs in values) or none."
  default     = "envoy"

  validation {
    condition     = contains(["envoy", "gateway-api", "none"], var.proxy)
    error_message = "proxy is envoy, gateway-api or none."
  }
}

variable "image_repository" {
  type        = string
  description = "Image of the Remora container (the chart appends -cuda to the tag when gpu > 0)."
  default     = "ghcr.io/remora-project/remora"

  validation {
    condition     = can(regex("^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)+$", var.image_repository))
    error_message = "image_repository is an image name without tag, e.g. ghcr.io/remora-project/remora."
  }
}

variable "image_tag" {
  type        = string
  description = "Image tag. Empty: the chart's appVersion."
  default     = ""

  validation {
    condition     = var.image_tag == "" || can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag))
    error_message = "image_tag is a valid image tag (or empty)."
  }
}

variable "gpu" {
  type        = number
  description = "NVIDIA GPUs per Remora container (nvidia.com/gpu limits); > 0 also selects the CUDA image."
  default     = 0

  validation {
    condition     = var.gpu >= 0 && var.gpu <= 8 && floor(var.gpu) == var.gpu
    error_message = "gpu is a whole number from 0 to 8."
  }
}

variable "autoscaling" {
  type        = string
  description = "How the shared pool scales: keda (on Remora's own metrics through Prometheus), hpa (CPU, when KEDA is absent) or none. Ignored in injection mode (the sidecars scale with their databases)."
  default     = "keda"

  validation {
    condition     = contains(["keda", "hpa", "none"], var.autoscaling)
    error_message = "autoscaling is keda, hpa or none."
  }
}

variable "min_replicas" {
  type        = number
  description = "Fewest replicas of the shared pool. 0 (scale to zero) needs autoscaling = keda and a keda_wake_triggers entry."
  default     = 1

  validation {
    condition     = var.min_replicas >= 0 && floor(var.min_replicas) == var.min_replicas
    error_message = "min_replicas is a whole number >= 0."
  }

  validation {
    condition     = var.min_replicas <= var.max_replicas
    error_message = "min_replicas must not exceed max_replicas."
  }

  validation {
    # Remora's own metrics disappear with its last pod: something else must wake the pool.
    condition     = var.min_replicas > 0 || (var.mode != "injection" && var.autoscaling == "keda" && length(var.keda_wake_triggers) > 0)
    error_message = "min_replicas = 0 (scale to zero) needs mode shared or both, autoscaling = keda and at least one keda_wake_triggers entry."
  }
}

variable "max_replicas" {
  type        = number
  description = "Most replicas of the shared pool."
  default     = 8

  validation {
    condition     = var.max_replicas >= 1 && floor(var.max_replicas) == var.max_replicas
    error_message = "max_replicas is a whole number >= 1."
  }
}

variable "keda_wake_triggers" {
  type        = list(any)
  description = "Extra KEDA triggers (autoscaling.keda.extraTriggers) that have a value while no Remora pod runs, e.g. a cron window or the database's request rate; required for min_replicas = 0."
  default     = []

  validation {
    condition     = alltrue([for t in var.keda_wake_triggers : can(t.type) && can(t.metadata)])
    error_message = "each keda_wake_triggers entry is a KEDA trigger with type and metadata."
  }
}

variable "monitoring" {
  type        = bool
  description = "Render the ServiceMonitor / PodMonitor, the PrometheusRule alerts and the Grafana dashboard (needs the Prometheus Operator CRDs, e.g. from kube-prometheus-stack)."
  default     = true
}

variable "values" {
  type        = list(string)
  description = "Extra values documents (YAML) for the Remora chart, applied after the ones this module derives from its variables, so they win."
  default     = []

  validation {
    condition     = alltrue([for v in var.values : can(yamldecode(v))])
    error_message = "every entry of values is a YAML document."
  }
}

variable "timeout_seconds" {
  type        = number
  description = "How long each Helm release may take to become ready."
  default     = 600

  validation {
    condition     = var.timeout_seconds >= 60 && var.timeout_seconds <= 3600
    error_message = "timeout_seconds is between 60 and 3600."
  }
}

variable "atomic" {
  type        = bool
  description = "Roll a release back when its install or upgrade fails."
  default     = true
}

# --- KEDA -----------------------------------------------------------------------------------------

variable "install_keda" {
  type        = bool
  description = "Install KEDA (kedacore/keda). false: KEDA is already in the cluster, or autoscaling is not keda."
  default     = true
}

variable "keda_chart_version" {
  type        = string
  description = "Version of the kedacore/keda chart."
  default     = "2.19.0"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", var.keda_chart_version))
    error_message = "keda_chart_version is an exact version such as 2.19.0."
  }
}

variable "keda_namespace" {
  type        = string
  description = "Namespace KEDA is installed into."
  default     = "keda"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.keda_namespace)) && length(var.keda_namespace) <= 63
    error_message = "keda_namespace is a DNS-1123 label."
  }
}

variable "keda_values" {
  type        = list(string)
  description = "Values documents (YAML) for the KEDA chart."
  default     = []

  validation {
    condition     = alltrue([for v in var.keda_values : can(yamldecode(v))])
    error_message = "every entry of keda_values is a YAML document."
  }
}

# --- kube-prometheus-stack ------------------------------------------------------------------------

variable "install_kube_prometheus_stack" {
  type        = bool
  description = "Install kube-prometheus-stack (Prometheus Operator, Prometheus, Alertmanager, Grafana) from prometheus-community. false: bring your own Prometheus and set prometheus_address."
  default     = true
}

variable "kube_prometheus_stack_chart_version" {
  type        = string
  description = "Version of the prometheus-community/kube-prometheus-stack chart."
  default     = "88.3.0"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", var.kube_prometheus_stack_chart_version))
    error_message = "kube_prometheus_stack_chart_version is an exact version such as 88.3.0."
  }
}

variable "kube_prometheus_stack_release_name" {
  type        = string
  description = "Release name of kube-prometheus-stack; its Prometheus selects monitors and rules labelled release=<this name>, which the module adds to Remora's."
  default     = "kube-prometheus-stack"

  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]*[a-z0-9])?$", var.kube_prometheus_stack_release_name)) && length(var.kube_prometheus_stack_release_name) <= 53
    error_message = "kube_prometheus_stack_release_name is a DNS-1035 label of at most 53 characters."
  }
}

variable "monitoring_namespace" {
  type        = string
  description = "Namespace of kube-prometheus-stack, and of Remora's dashboard ConfigMap (Grafana's sidecar watches its own namespace)."
  default     = "monitoring"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.monitoring_namespace)) && length(var.monitoring_namespace) <= 63
    error_message = "monitoring_namespace is a DNS-1123 label."
  }
}

variable "kube_prometheus_stack_values" {
  type        = list(string)
  description = "Values documents (YAML) for kube-prometheus-stack, applied after the module's (Grafana folders from annotations)."
  default     = []

  validation {
    condition     = alltrue([for v in var.kube_prometheus_stack_values : can(yamldecode(v))])
    error_message = "every entry of kube_prometheus_stack_values is a YAML document."
  }
}

variable "prometheus_address" {
  type        = string
  description = "Prometheus that KEDA queries for Remora's metrics. null: the Prometheus Operator's prometheus-operated Service in monitoring_namespace."
  default     = null

  validation {
    condition     = var.prometheus_address == null ? true : can(regex("^https?://[^/]+", var.prometheus_address))
    error_message = "prometheus_address is an http(s):// URL, or null."
  }
}
