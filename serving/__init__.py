"""Serving with vLLM: the tuner, KV-cache arithmetic, model shapes, vLLM arguments, local launch.

Imports neither torch nor Kubernetes code."""
