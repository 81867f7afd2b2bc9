"""The sidecar-injection admission webhook: `remora webhook`."""
