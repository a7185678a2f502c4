"""Harness tests: the node runs `python:*` images as given, with this checkout's interpreter."""

import pytest

from .images import run_as_given


@pytest.fixture
def node(node):
    node.images.register("python:*", run_as_given())
    return node
