output "release_name" {
  description = "Helm release name of the Remora chart."
  value       = helm_release.remora.name
}

output "namespace" {
  description = "Namespace of the Remora release."
  value       = helm_release.remora.namespace
}

output "chart_version" {
  description = "Version of the Remora chart that was installed."
  value       = helm_release.remora.version
}

output "status" {
  description = "Status of the Remora release as Helm reports it (deployed, failed, ...)."
  value       = helm_release.remora.status
}

output "shared_service_url" {
  description = "In-cluster URL of the shared pool's own Service (<release>-remora, port 8080); null in injection mode, where each database reaches its sidecar at http://127.0.0.1:8080."
  value       = var.mode == "injection" ? null : local.pool_url
}

output "client_url" {
  description = "In-cluster URL clients and databases should use for the shared pool: the Envoy proxy that hashes on X-Remora-Model (proxy = envoy), else the pool's Service; null in injection mode or with proxy = gateway-api (use your Gateway's address)."
  value       = var.mode == "injection" || var.proxy == "gateway-api" ? null : (var.proxy == "envoy" ? local.proxy_url : local.pool_url)
}

output "prometheus_address" {
  description = "Prometheus that KEDA's triggers query."
  value       = local.prometheus_address
}

output "keda_release" {
  description = "Name and namespace of the KEDA release this module installed; null when install_keda is false."
  value       = var.install_keda ? { name = helm_release.keda[0].name, namespace = helm_release.keda[0].namespace } : null
}

output "kube_prometheus_stack_release" {
  description = "Name and namespace of the kube-prometheus-stack release this module installed; null when install_kube_prometheus_stack is false."
  value = var.install_kube_prometheus_stack ? {
    name      = helm_release.kube_prometheus_stack[0].name
    namespace = helm_release.kube_prometheus_stack[0].namespace
  } : null
}
