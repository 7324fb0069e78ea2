"""The Kubernetes REST API (core/v1 and the named groups) beside gRPC, over the same registries (issue 15)."""
