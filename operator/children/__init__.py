"""The objects a ModelDeployment owns, one module per kind, rendered as plain dicts (pure)."""
