"""The Job pipeline: the plan, its sources, and the steps fetch → merge → quantize →
validate → publish (and verify in serving pods)."""
