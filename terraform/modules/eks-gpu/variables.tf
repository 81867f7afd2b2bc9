variable "cluster_name" {
  type        = string
  description = "Name of the EKS cluster; also the prefix of its IAM roles and the Name tag of a created VPC."

  validation {
    # IAM role names are <= 64 characters and carry a suffix such as "-cluster-autoscaler".
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.cluster_name))
    error_message = "cluster_name: 3 to 32 characters, lower-case letters, digits and '-', starting with a letter."
  }
}

variable "kubernetes_version" {
  type        = string
  description = "Kubernetes minor version of the control plane and the managed node groups, e.g. \"1.35\"."
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
  description = "Use this VPC and its private subnets (at least two, in different availability zones, with a route to the internet through NAT) instead of creating one. null: create a VPC."
  default     = null

  validation {
    condition = var.existing_vpc == null ? true : (
      startswith(var.existing_vpc.vpc_id, "vpc-") &&
      length(var.existing_vpc.private_subnet_ids) >= 2 &&
      alltrue([for s in var.existing_vpc.private_subnet_ids : startswith(s, "subnet-")])
    )
    error_message = "existing_vpc needs a vpc-... id and at least two subnet-... ids (EKS needs two availability zones)."
  }
}

variable "vpc_cidr" {
  type        = string
  description = "CIDR block of the VPC this module creates (ignored with existing_vpc); split into one public and one private subnet per availability zone."
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "vpc_cidr is an IPv4 CIDR block of /20 or larger, e.g. 10.40.0.0/16."
  }
}

variable "availability_zones" {
  type        = list(string)
  description = "Availability zones of the created subnets. Empty: the first az_count zones of the region."
  default     = []

  validation {
    condition     = length(var.availability_zones) == 0 || (length(var.availability_zones) >= 2 && length(var.availability_zones) <= 4)
    error_message = "availability_zones: leave empty, or name 2 to 4 zones."
  }
}

variable "az_count" {
  type        = number
  description = "How many availability zones the created VPC spans when availability_zones is empty."
  default     = 3

  validation {
    condition     = var.az_count >= 2 && var.az_count <= 4 && floor(var.az_count) == var.az_count
    error_message = "az_count is a whole number from 2 to 4."
  }
}

variable "single_nat_gateway" {
  type        = bool
  description = "One NAT gateway for all private subnets (cheaper) instead of one per availability zone (no cross-zone dependency)."
  default     = true
}

variable "endpoint_public_access" {
  type        = bool
  description = "Whether the Kubernetes API endpoint is reachable from the internet (restricted by public_access_cidrs). The private endpoint is always on."
  default     = true
}

variable "public_access_cidrs" {
  type        = list(string)
  description = "CIDR blocks allowed to reach the public API endpoint. Narrow it to your network."
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.public_access_cidrs) > 0 && alltrue([for c in var.public_access_cidrs : can(cidrhost(c, 0))])
    error_message = "public_access_cidrs is a non-empty list of IPv4 CIDR blocks."
  }
}

variable "cluster_log_types" {
  type        = list(string)
  description = "Control-plane log types sent to CloudWatch."
  default     = ["api", "audit", "authenticator"]

  validation {
    condition     = alltrue([for t in var.cluster_log_types : contains(["api", "audit", "authenticator", "controllerManager", "scheduler"], t)])
    error_message = "cluster_log_types: any of api, audit, authenticator, controllerManager, scheduler."
  }
}

variable "system_instance_types" {
  type        = list(string)
  description = "Instance types of the on-demand CPU node group that runs the system workloads (CoreDNS, KEDA, Prometheus, the webhook, the proxy)."
  default     = ["m6i.large"]

  validation {
    condition     = length(var.system_instance_types) > 0 && alltrue([for t in var.system_instance_types : can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", t))])
    error_message = "system_instance_types is a non-empty list of EC2 instance types such as m6i.large."
  }
}

variable "system_node_count" {
  type = object({
    min     = number
    desired = number
    max     = number
  })
  description = "Size of the CPU system node group."
  default     = { min = 2, desired = 2, max = 4 }

  validation {
    condition     = var.system_node_count.min >= 1 && var.system_node_count.min <= var.system_node_count.desired && var.system_node_count.desired <= var.system_node_count.max
    error_message = "system_node_count needs 1 <= min <= desired <= max."
  }
}

variable "gpu_instance_types" {
  type        = list(string)
  description = "Instance types of the GPU node group. Keep them alike (same GPU count, similar CPU and memory): the cluster autoscaler sizes an empty group from them, and several types make spot capacity easier to get."
  default     = ["g6.xlarge", "g5.xlarge", "g4dn.xlarge"]

  validation {
    condition     = length(var.gpu_instance_types) > 0 && alltrue([for t in var.gpu_instance_types : can(regex("^(g|p)[0-9][a-z0-9-]*\\.[a-z0-9]+$", t))])
    error_message = "gpu_instance_types is a non-empty list of GPU instance types (g* or p* families), e.g. g6.xlarge."
  }
}

variable "gpus_per_node" {
  type        = number
  description = "NVIDIA GPUs on each instance of gpu_instance_types; tells the cluster autoscaler what an empty group would offer."
  default     = 1

  validation {
    condition     = var.gpus_per_node >= 1 && var.gpus_per_node <= 16 && floor(var.gpus_per_node) == var.gpus_per_node
    error_message = "gpus_per_node is a whole number from 1 to 16."
  }
}

variable "gpu_ami_type" {
  type        = string
  description = "EKS AMI type of the GPU nodes: AL2023_x86_64_NVIDIA (default), BOTTLEROCKET_x86_64_NVIDIA, or AL2_x86_64_GPU (Kubernetes 1.32 and older only)."
  default     = "AL2023_x86_64_NVIDIA"

  validation {
    condition     = contains(["AL2023_x86_64_NVIDIA", "BOTTLEROCKET_x86_64_NVIDIA", "AL2_x86_64_GPU"], var.gpu_ami_type)
    error_message = "gpu_ami_type is one of AL2023_x86_64_NVIDIA, BOTTLEROCKET_x86_64_NVIDIA, AL2_x86_64_GPU."
  }
}

variable "gpu_capacity_type" {
  type        = string
  description = "SPOT (default; interruptions drain the node, and the sidecar's SIGTERM handling finishes queued requests) or ON_DEMAND."
  default     = "SPOT"

  validation {
    condition     = contains(["SPOT", "ON_DEMAND"], var.gpu_capacity_type)
    error_message = "gpu_capacity_type is SPOT or ON_DEMAND."
  }
}

variable "gpu_node_count" {
  type = object({
    min = number
    max = number
  })
  description = "Bounds of the GPU node group. min = 0 scales it to zero: the cluster autoscaler removes idle GPU nodes and adds one when a pod asks for nvidia.com/gpu."
  default     = { min = 0, max = 4 }

  validation {
    condition     = var.gpu_node_count.min >= 0 && var.gpu_node_count.max >= 1 && var.gpu_node_count.min <= var.gpu_node_count.max
    error_message = "gpu_node_count needs 0 <= min <= max and max >= 1."
  }
}

variable "gpu_disk_size" {
  type        = number
  description = "Root volume of a GPU node in GiB (the CUDA image of the sidecar and its torch are several GB)."
  default     = 100

  validation {
    condition     = var.gpu_disk_size >= 50 && var.gpu_disk_size <= 2000
    error_message = "gpu_disk_size is between 50 and 2000 GiB."
  }
}

variable "cluster_autoscaler_service_account" {
  type        = object({ namespace = string, name = string })
  description = "Service account of the cluster autoscaler; an EKS Pod Identity association gives it the IAM role that resizes the node groups."
  default     = { namespace = "kube-system", name = "cluster-autoscaler" }

  validation {
    condition = alltrue([
      for v in [var.cluster_autoscaler_service_account.namespace, var.cluster_autoscaler_service_account.name] :
      can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", v)) && length(v) <= 63
    ])
    error_message = "cluster_autoscaler_service_account: namespace and name are DNS labels."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every AWS resource this module creates."
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.tags : length(k) <= 128 && length(v) <= 256 && !startswith(lower(k), "aws:")])
    error_message = "tags: keys up to 128 characters (not starting with aws:), values up to 256."
  }
}
