"""Kubernetes integration: sidecar injection (function, CLI, admission webhook)."""
