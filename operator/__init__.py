"""The Kubernetes operator: CRD models, reconcile, children; imports only merger plan types."""
