"""The merge Job's work: weight files, the merge, the pipeline steps, the demo.

Imports no Kubernetes code."""
