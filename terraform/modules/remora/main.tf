# Installs Remora's Helm chart into an existing cluster, with KEDA and kube-prometheus-stack when
# asked. The two come first: the chart's ScaledObject, ServiceMonitor, PodMonitor and
# PrometheusRule are custom resources whose definitions those charts install.

resource "helm_release" "keda" {
  count            = var.install_keda ? 1 : 0
  name             = "keda"
  repository       = "https://kedacore.github.io/charts"
  chart            = "keda"
  version          = var.keda_chart_version
  namespace        = var.keda_namespace
  create_namespace = var.create_namespace
  atomic           = var.atomic
  timeout          = var.timeout_seconds
  values           = var.keda_values
}

resource "helm_release" "kube_prometheus_stack" {
  count            = var.install_kube_prometheus_stack ? 1 : 0
  name             = var.kube_prometheus_stack_release_name
  repository       = "https://prometheus-community.github.io/helm-charts"
  chart            = "kube-prometheus-stack"
  version          = var.kube_prometheus_stack_chart_version
  namespace        = var.monitoring_namespace
  create_namespace = var.create_namespace
  atomic           = var.atomic
  timeout          = var.timeout_seconds
  values           = concat([yamlencode(local.kube_prometheus_stack_values)], var.kube_prometheus_stack_values)
}

resource "helm_release" "remora" {
  name             = var.release_name
  chart            = var.chart_repository == null ? local.local_chart : "remora"
  repository       = var.chart_repository
  version          = var.chart_repository == null ? null : var.chart_version
  namespace        = var.namespace
  create_namespace = var.create_namespace
  atomic           = var.atomic
  timeout          = var.timeout_seconds
  values           = concat([yamlencode(local.chart_values)], var.values)

  depends_on = [helm_release.keda, helm_release.kube_prometheus_stack]
}
