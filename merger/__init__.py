"""The merge engine and everything else that touches weights; imports no Kubernetes code."""
