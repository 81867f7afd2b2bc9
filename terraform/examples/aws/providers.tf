provider "aws" {
  region = var.region

  default_tags {
    tags = var.tags
  }
}

# Helm talks to the new cluster with a token from `aws eks get-token` (the AWS CLI must be on the
# machine running terraform), fetched per call, so long applies outlive a 15-minute token. The
# identity that creates the cluster is its admin (bootstrap_cluster_creator_admin_permissions).
provider "helm" {
  kubernetes = {
    host                   = module.eks_gpu.cluster_endpoint
    cluster_ca_certificate = base64decode(module.eks_gpu.cluster_certificate_authority_data)
    exec = {
      api_version = "client.authentication.k8s.io/v1beta1"
      command     = "aws"
      args        = ["eks", "get-token", "--cluster-name", module.eks_gpu.cluster_name, "--region", var.region]
    }
  }
}
