"""Suite-wide pytest configuration: the Kubernetes test-cluster fixtures (tests/cluster/)."""

pytest_plugins = ["tests.cluster.fixtures"]
