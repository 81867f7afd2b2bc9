variable "region" {
  type        = string
  description = "AWS region of the cluster, e.g. eu-west-1. Pick one where your GPU instance types have spot capacity."

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region is an AWS region name such as eu-west-1."
  }
}

variable "cluster_name" {
  type        = string
  description = "Name of the EKS cluster (and prefix of its IAM roles)."
  default     = "remora"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.cluster_name))
    error_message = "cluster_name: 3 to 32 characters, lower-case letters, digits and '-', starting with a letter."
  }
}

variable "kubernetes_version" {
  type        = string
  description = "Kubernetes minor version of the cluster; keep cluster_autoscaler_image_tag on the same minor."
  default     = "1.35"

  validation {
    condition     = can(regex("^1\\.[0-9]{2}$", var.kubernetes_version))
    error_message = "kubernetes_version is a minor version such as \"1.35\"."
  }
}

variable "existing_vpc" {
  type = object({
    vpc_id             = string
    private_subnet_ids = list(string)
  })
  description = "Run in this VPC's private subnets (NAT to the internet, two zones or more) instead of creating a VPC. null: create one."
  default     = null

  validation {
    condition     = var.existing_vpc == null ? true : length(var.existing_vpc.private_subnet_ids) >= 2
    error_message = "existing_vpc needs at least two private subnets."
  }
}

variable "public_access_cidrs" {
  type        = list(string)
  description = "Networks allowed to reach the Kubernetes API endpoint (terraform and kubectl run from one of them)."
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.public_access_cidrs) > 0 && alltrue([for c in var.public_access_cidrs : can(cidrhost(c, 0))])
    error_message = "public_access_cidrs is a non-empty list of IPv4 CIDR blocks."
  }
}

variable "gpu_instance_types" {
  type        = list(string)
  description = "GPU instance types of the spot node group, alike in GPU count (one each by default)."
  default     = ["g6.xlarge", "g5.xlarge", "g4dn.xlarge"]

  validation {
    condition     = length(var.gpu_instance_types) > 0 && alltrue([for t in var.gpu_instance_types : can(regex("^(g|p)[0-9][a-z0-9-]*\\.[a-z0-9]+$", t))])
    error_message = "gpu_instance_types is a non-empty list of g* or p* instance types."
  }
}

variable "gpu_capacity_type" {
  type        = string
  description = "SPOT or ON_DEMAND GPU nodes."
  default     = "SPOT"

  validation {
    condition     = contains(["SPOT", "ON_DEMAND"], var.gpu_capacity_type)
    error_message = "gpu_capacity_type is SPOT or ON_DEMAND."
  }
}

variable "gpu_max_nodes" {
  type        = number
  description = "Most GPU nodes (and Remora replicas: one GPU each)."
  default     = 4

  validation {
    condition     = var.gpu_max_nodes >= 1 && var.gpu_max_nodes <= 100 && floor(var.gpu_max_nodes) == var.gpu_max_nodes
    error_message = "gpu_max_nodes is a whole number from 1 to 100."
  }
}

variable "scale_to_zero" {
  type        = bool
  description = "Let the Remora pool (and so the GPU node group) go to zero outside wake_schedule. false: keep one replica (one GPU node) running."
  default     = true
}

variable "wake_schedule" {
  type = object({
    timezone = string
    start    = string
    end      = string
  })
  description = "With scale_to_zero, the window (KEDA cron trigger, IANA time zone and cron expressions) in which at least one replica runs; Remora's own metrics scale it further inside the window."
  default     = { timezone = "UTC", start = "0 7 * * 1-5", end = "0 19 * * 1-5" }

  validation {
    condition = alltrue([
      for c in [var.wake_schedule.start, var.wake_schedule.end] : length(split(" ", trimspace(c))) == 5
    ]) && can(regex("^[A-Za-z_]+(/[A-Za-z_+-]+)*$", var.wake_schedule.timezone))
    error_message = "wake_schedule: start and end are 5-field cron expressions, timezone an IANA name such as Europe/Paris."
  }
}

variable "registry_models" {
  type = list(object({
    id       = string
    hf       = string
    revision = optional(string, "main")
    preload  = optional(bool, false)
    pinned   = optional(bool, false)
  }))
  description = "The model registry: Hugging Face repositories the sidecars download on first use into their /models volume (REMORA_HF_DOWNLOAD=1). The first entry is the default model."
  default = [
    { id = "minilm", hf = "sentence-transformers/all-MiniLM-L6-v2", preload = true, pinned = true },
    { id = "reranker", hf = "cross-encoder/ms-marco-MiniLM-L6-v2" },
  ]

  validation {
    condition = length(var.registry_models) > 0 && alltrue([
      for m in var.registry_models : can(regex("^[A-Za-z0-9][A-Za-z0-9._-]*$", m.id)) && can(regex("^[^/\\s]+/[^/\\s]+$", m.hf))
    ]) && length(distinct([for m in var.registry_models : m.id])) == length(var.registry_models)
    error_message = "registry_models: unique ids of letters, digits, '.', '_' and '-', and hf as owner/name."
  }
}

variable "default_reranker" {
  type        = string
  description = "Registry id of the default reranker (TEI's /rerank, /v1/score without a model); empty for none."
  default     = "reranker"

  validation {
    condition     = var.default_reranker == "" || can(regex("^[A-Za-z0-9][A-Za-z0-9._-]*$", var.default_reranker))
    error_message = "default_reranker is a registry id or empty."
  }
}

variable "remora_values" {
  type        = list(string)
  description = "Extra values documents (YAML) for the Remora chart, applied last."
  default     = []

  validation {
    condition     = alltrue([for v in var.remora_values : can(yamldecode(v))])
    error_message = "every entry of remora_values is a YAML document."
  }
}

variable "install_nvidia_device_plugin" {
  type        = bool
  description = "Install NVIDIA's device plugin, which advertises nvidia.com/gpu on the GPU nodes (needed with the AL2023 NVIDIA AMI; Bottlerocket's NVIDIA variant has it built in)."
  default     = true
}

variable "nvidia_device_plugin_chart_version" {
  type        = string
  description = "Version of NVIDIA's nvidia-device-plugin chart."
  default     = "0.18.0"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", var.nvidia_device_plugin_chart_version))
    error_message = "nvidia_device_plugin_chart_version is an exact version such as 0.18.0."
  }
}

variable "cluster_autoscaler_chart_version" {
  type        = string
  description = "Version of the kubernetes/autoscaler cluster-autoscaler chart."
  default     = "9.59.0"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", var.cluster_autoscaler_chart_version))
    error_message = "cluster_autoscaler_chart_version is an exact version such as 9.59.0."
  }
}

variable "cluster_autoscaler_image_tag" {
  type        = string
  description = "Cluster autoscaler image tag; its minor version must match kubernetes_version."
  default     = "v1.35.0"

  validation {
    condition     = can(regex("^v1\\.[0-9]{2}\\.[0-9]+$", var.cluster_autoscaler_image_tag))
    error_message = "cluster_autoscaler_image_tag is a release tag such as v1.35.0."
  }
}

variable "gpu_scale_down_after" {
  type        = string
  description = "How long a GPU node must sit idle before the cluster autoscaler removes it."
  default     = "10m"

  validation {
    condition     = can(regex("^[0-9]+(s|m|h)$", var.gpu_scale_down_after))
    error_message = "gpu_scale_down_after is a duration such as 10m."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags on every AWS resource (the provider's default_tags)."
  default     = { project = "remora" }

  validation {
    condition     = alltrue([for k, v in var.tags : length(k) <= 128 && length(v) <= 256])
    error_message = "tags: keys up to 128 characters, values up to 256."
  }
}
