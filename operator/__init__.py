"""The Kubernetes operator: CRD models, reconcile, children rendering; imports merger plan types only."""
