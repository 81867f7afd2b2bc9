terraform {
  # 1.9: variable validations that refer to other variables (min_replicas, chart_version).
  required_version = ">= 1.9"

  required_providers {
    # Helm provider 3.x: `kubernetes = { ... }` in the provider block, `set = [ ... ]` lists.
    helm = {
      source  = "hashicorp/helm"
      version = ">= 3.0, < 4.0"
    }
  }
}
