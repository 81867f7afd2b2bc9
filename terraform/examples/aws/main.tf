# Remora on EKS: a cluster with an on-demand CPU node group and a spot GPU node group that scales
# to zero, the cluster autoscaler and NVIDIA's device plugin, then Remora's shared pool on the GPU
# nodes with KEDA and kube-prometheus-stack (the remora module).
#
# Scale to zero, end to end: outside wake_schedule KEDA takes the pool to 0 replicas; the idle GPU
# node is removed by the cluster autoscaler after gpu_scale_down_after; when the window opens
# (or another wake trigger fires) KEDA asks for a replica, the pending pod's nvidia.com/gpu request
# makes the autoscaler add a spot GPU node, and the pod starts there.

module "eks_gpu" {
  source = "../../modules/eks-gpu"

  cluster_name        = var.cluster_name
  kubernetes_version  = var.kubernetes_version
  existing_vpc        = var.existing_vpc
  public_access_cidrs = var.public_access_cidrs
  gpu_instance_types  = var.gpu_instance_types
  gpu_capacity_type   = var.gpu_capacity_type
  gpu_node_count      = { min = 0, max = var.gpu_max_nodes }
  tags                = var.tags
}

resource "helm_release" "cluster_autoscaler" {
  name       = "cluster-autoscaler"
  repository = "https://kubernetes.github.io/autoscaler"
  chart      = "cluster-autoscaler"
  version    = var.cluster_autoscaler_chart_version
  namespace  = module.eks_gpu.cluster_autoscaler_service_account.namespace

  values = [yamlencode({
    cloudProvider = "aws"
    awsRegion     = var.region
    autoDiscovery = { clusterName = module.eks_gpu.cluster_name }
    image         = { tag = var.cluster_autoscaler_image_tag }
    # The service account EKS Pod Identity binds to the autoscaler's IAM role.
    rbac         = { serviceAccount = { create = true, name = module.eks_gpu.cluster_autoscaler_service_account.name } }
    nodeSelector = module.eks_gpu.system_node_selector
    extraArgs = {
      "scale-down-unneeded-time"    = var.gpu_scale_down_after
      "balance-similar-node-groups" = true
      "skip-nodes-with-system-pods" = false
      "expander"                    = "least-waste"
    }
  })]
}

resource "helm_release" "nvidia_device_plugin" {
  count            = var.install_nvidia_device_plugin ? 1 : 0
  name             = "nvidia-device-plugin"
  repository       = "https://nvidia.github.io/k8s-device-plugin"
  chart            = "nvidia-device-plugin"
  version          = var.nvidia_device_plugin_chart_version
  namespace        = "nvidia-device-plugin"
  create_namespace = true

  # Runs on the tainted GPU nodes; the chart's default affinity picks nodes labelled
  # nvidia.com/gpu.present=true, which the GPU node group sets.
  values = [yamlencode({
    tolerations = concat(module.eks_gpu.gpu_tolerations, [{ key = "CriticalAddonsOnly", operator = "Exists" }])
  })]
}

locals {
  wake_trigger = {
    type = "cron"
    metadata = {
      timezone        = var.wake_schedule.timezone
      start           = var.wake_schedule.start
      end             = var.wake_schedule.end
      desiredReplicas = "1"
    }
  }

  # Chart values for the GPU pool; every key exists in helm/remora/values.yaml
  # (tests/deploy/test_terraform.py checks it).
  remora_values = {
    sidecar = {
      # Models come from the hub on first use into the pod's /models volume.
      env = [{ name = "REMORA_HF_DOWNLOAD", value = "1" }]
    }
    registry = {
      config = merge(
        {
          default_model = var.registry_models[0].id
          models        = var.registry_models
        },
        var.default_reranker == "" ? {} : { default_reranker = var.default_reranker },
      )
    }
    models = {
      source    = "emptyDir"
      sizeLimit = "20Gi"
    }
    shared = {
      nodeSelector = module.eks_gpu.gpu_node_selector
      tolerations  = module.eks_gpu.gpu_tolerations
    }
  }
}

module "remora" {
  source = "../../modules/remora"

  mode               = "shared"
  gpu                = 1
  min_replicas       = var.scale_to_zero ? 0 : 1
  max_replicas       = var.gpu_max_nodes
  keda_wake_triggers = var.scale_to_zero ? [local.wake_trigger] : []
  values             = concat([yamlencode(local.remora_values)], var.remora_values)

  # GPU pods can be scheduled only once the autoscaler and the device plugin run.
  depends_on = [helm_release.cluster_autoscaler, helm_release.nvidia_device_plugin]
}
