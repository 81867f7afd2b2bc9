# Everything the module derives from its variables, apart from the resources: no provider is
# needed to evaluate it, so tests/deploy/test_terraform.py renders the chart with these values
# through `terraform console` and `helm template`.

locals {
  local_chart = "${path.module}/../../../helm/remora"

  prometheus_address = coalesce(var.prometheus_address, "http://prometheus-operated.${var.monitoring_namespace}.svc:9090")
  # The chart scales only its shared pool; injected sidecars scale with their databases' pods.
  autoscaling = var.mode == "injection" ? "none" : var.autoscaling

  # The chart names objects after the release, cut to 40 characters.
  base_name = trimsuffix(substr(var.release_name, 0, 40), "-")
  pool_url  = "http://${local.base_name}-remora.${var.namespace}.svc:8080"
  proxy_url = "http://${local.base_name}-envoy.${var.namespace}.svc:8080"

  # Chart values derived from the variables; every key exists in helm/remora/values.yaml
  # (tests/deploy/test_terraform.py checks it). var.values come after and win.
  chart_values = {
    mode  = var.mode
    proxy = { kind = var.proxy }
    image = {
      repository = var.image_repository
      tag        = var.image_tag
    }
    sidecar = {
      gpu = var.gpu
    }
    autoscaling = {
      minReplicas = var.min_replicas
      maxReplicas = var.max_replicas
      keda = {
        enabled           = local.autoscaling == "keda"
        prometheusAddress = local.prometheus_address
        extraTriggers     = var.keda_wake_triggers
      }
      hpa = {
        enabled = local.autoscaling == "hpa"
      }
    }
    monitoring = {
      # kube-prometheus-stack's Prometheus selects monitors and rules by its release label.
      labels         = var.install_kube_prometheus_stack ? tomap({ release = var.kube_prometheus_stack_release_name }) : tomap({})
      serviceMonitor = { enabled = var.monitoring && var.mode != "injection" }
      podMonitor     = { enabled = var.monitoring && var.mode != "shared" }
      prometheusRule = { enabled = var.monitoring }
      dashboard = {
        enabled   = var.monitoring
        namespace = var.monitoring_namespace
      }
    }
  }

  kube_prometheus_stack_values = {
    grafana = {
      sidecar = {
        dashboards = {
          # Remora's dashboard ConfigMap carries grafana_folder; put it in that folder.
          folderAnnotation = "grafana_folder"
          provider         = { foldersFromFilesStructure = true }
        }
      }
    }
  }
}
