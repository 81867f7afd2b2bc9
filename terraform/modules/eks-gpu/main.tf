# An EKS cluster for Remora: an on-demand CPU node group for the system workloads and a GPU node
# group (spot by default) that scales to zero. The GPU nodes are tainted nvidia.com/gpu, so only
# pods that tolerate it (the Remora pool, the NVIDIA device plugin) land there.

locals {
  gpu_labels = {
    "remora.dev/pool" = "gpu"
    # The NVIDIA device plugin chart's default node affinity selects on this label.
    "nvidia.com/gpu.present" = "true"
  }
  gpu_taint = { key = "nvidia.com/gpu", value = "true", effect = "NO_SCHEDULE" }

  # What the cluster autoscaler cannot read from an empty group's instances: the labels, the
  # taint and the GPU count a new node would have (scale-up from zero).
  gpu_node_template_tags = merge(
    { for k, v in local.gpu_labels : "k8s.io/cluster-autoscaler/node-template/label/${k}" => v },
    {
      "k8s.io/cluster-autoscaler/node-template/taint/${local.gpu_taint.key}"         = "${local.gpu_taint.value}:NoSchedule"
      "k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"             = tostring(var.gpus_per_node)
      "k8s.io/cluster-autoscaler/node-template/label/eks.amazonaws.com/capacityType" = var.gpu_capacity_type
    },
  )
}

resource "aws_eks_cluster" "this" {
  name                      = var.cluster_name
  version                   = var.kubernetes_version
  role_arn                  = aws_iam_role.cluster.arn
  enabled_cluster_log_types = var.cluster_log_types
  tags                      = var.tags

  vpc_config {
    subnet_ids              = local.private_subnet_ids
    endpoint_private_access = true
    endpoint_public_access  = var.endpoint_public_access
    public_access_cidrs     = var.public_access_cidrs
  }

  # Access entries only (no aws-auth ConfigMap); whoever runs terraform becomes cluster admin,
  # which the helm provider of the example relies on.
  access_config {
    authentication_mode                         = "API"
    bootstrap_cluster_creator_admin_permissions = true
  }

  depends_on = [aws_iam_role_policy_attachment.cluster]
}

# Add-ons that run without nodes first; CoreDNS waits for the system nodes.
resource "aws_eks_addon" "base" {
  for_each                    = toset(["vpc-cni", "kube-proxy", "eks-pod-identity-agent"])
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = each.key
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "PRESERVE"
  tags                        = var.tags
}

resource "aws_eks_addon" "coredns" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "coredns"
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "PRESERVE"
  tags                        = var.tags

  depends_on = [aws_eks_node_group.system]
}

resource "aws_eks_node_group" "system" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "system"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = local.private_subnet_ids
  ami_type        = "AL2023_x86_64_STANDARD"
  capacity_type   = "ON_DEMAND"
  instance_types  = var.system_instance_types
  labels          = { "remora.dev/pool" = "system" }
  tags            = var.tags

  scaling_config {
    min_size     = var.system_node_count.min
    desired_size = var.system_node_count.desired
    max_size     = var.system_node_count.max
  }

  update_config {
    max_unavailable = 1
  }

  lifecycle {
    # The cluster autoscaler owns the size once the group exists.
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.node, aws_eks_addon.base]
}

resource "aws_eks_node_group" "gpu" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "gpu"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = local.private_subnet_ids
  ami_type        = var.gpu_ami_type
  capacity_type   = var.gpu_capacity_type
  instance_types  = var.gpu_instance_types
  disk_size       = var.gpu_disk_size
  labels          = local.gpu_labels
  tags            = var.tags

  # Starts empty: the first GPU node is added when a pod requests nvidia.com/gpu.
  scaling_config {
    min_size     = var.gpu_node_count.min
    desired_size = var.gpu_node_count.min
    max_size     = var.gpu_node_count.max
  }

  taint {
    key    = local.gpu_taint.key
    value  = local.gpu_taint.value
    effect = local.gpu_taint.effect
  }

  update_config {
    max_unavailable = 1
  }

  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.node, aws_eks_addon.base]
}

resource "aws_autoscaling_group_tag" "gpu_node_template" {
  for_each               = local.gpu_node_template_tags
  autoscaling_group_name = aws_eks_node_group.gpu.resources[0].autoscaling_groups[0].name

  tag {
    key                 = each.key
    value               = each.value
    propagate_at_launch = false
  }
}

resource "aws_eks_pod_identity_association" "cluster_autoscaler" {
  cluster_name    = aws_eks_cluster.this.name
  namespace       = var.cluster_autoscaler_service_account.namespace
  service_account = var.cluster_autoscaler_service_account.name
  role_arn        = aws_iam_role.cluster_autoscaler.arn
  tags            = var.tags

  depends_on = [aws_eks_addon.base]
}
