output "cluster_name" {
  description = "Name of the EKS cluster."
  value       = module.eks_gpu.cluster_name
}

output "kubeconfig_command" {
  description = "Command that adds the cluster to your kubeconfig."
  value       = "aws eks update-kubeconfig --region ${var.region} --name ${module.eks_gpu.cluster_name}"
}

output "remora_url" {
  description = "In-cluster URL of the Remora pool (the Envoy proxy that routes on the X-Remora-Model header); point REMORA_URL or the databases' inference settings at it."
  value       = module.remora.client_url
}

output "gpu_node_group_name" {
  description = "The spot GPU node group that scales to zero."
  value       = module.eks_gpu.gpu_node_group_name
}

output "vpc_id" {
  description = "VPC of the cluster."
  value       = module.eks_gpu.vpc_id
}

output "grafana_command" {
  description = "Port-forward to Grafana (kube-prometheus-stack); Remora's dashboard is in the Remora folder."
  value       = "kubectl -n monitoring port-forward svc/kube-prometheus-stack-grafana 3000:80"
}
