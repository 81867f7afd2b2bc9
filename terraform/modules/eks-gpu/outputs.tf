output "cluster_name" {
  description = "Name of the EKS cluster (for `aws eks update-kubeconfig --name` and the cluster autoscaler's auto-discovery)."
  value       = aws_eks_cluster.this.name
}

output "cluster_endpoint" {
  description = "HTTPS endpoint of the Kubernetes API server."
  value       = aws_eks_cluster.this.endpoint
}

output "cluster_certificate_authority_data" {
  description = "Base64-encoded CA certificate of the API server (base64decode it for a Kubernetes or Helm provider)."
  value       = aws_eks_cluster.this.certificate_authority[0].data
}

output "kubernetes_version" {
  description = "Kubernetes minor version the control plane runs."
  value       = aws_eks_cluster.this.version
}

output "vpc_id" {
  description = "The VPC the cluster runs in (created here, or existing_vpc's)."
  value       = local.vpc_id
}

output "private_subnet_ids" {
  description = "Private subnets of the cluster and its nodes."
  value       = local.private_subnet_ids
}

output "node_role_arn" {
  description = "IAM role of the nodes of both node groups."
  value       = aws_iam_role.node.arn
}

output "gpu_node_group_name" {
  description = "Name of the GPU managed node group (spot by default, minimum size gpu_node_count.min)."
  value       = aws_eks_node_group.gpu.node_group_name
}

output "gpu_node_selector" {
  description = "Node selector that places a pod on the GPU nodes (for the chart's shared.nodeSelector)."
  value       = { "remora.dev/pool" = local.gpu_labels["remora.dev/pool"] }
}

output "gpu_tolerations" {
  description = "Tolerations a pod needs for the GPU nodes' nvidia.com/gpu taint (for the chart's shared.tolerations)."
  value       = [{ key = local.gpu_taint.key, operator = "Exists", effect = "NoSchedule" }]
}

output "system_node_selector" {
  description = "Node selector of the on-demand CPU system nodes."
  value       = { "remora.dev/pool" = "system" }
}

output "cluster_autoscaler_role_arn" {
  description = "IAM role of the cluster autoscaler, bound by EKS Pod Identity to cluster_autoscaler_service_account."
  value       = aws_iam_role.cluster_autoscaler.arn
}

output "cluster_autoscaler_service_account" {
  description = "Namespace and name of the service account the cluster autoscaler must run as for its IAM role."
  value       = var.cluster_autoscaler_service_account
}
