"""The node's image table: which argv a container image becomes."""

import pytest

from .images import ContainerContext, ImageNotFound, ImageTable, entrypoint, vllm_openai


def context(image: str, command=(), args=()) -> ContainerContext:
    return ContainerContext(
        pod={},
        container={"name": "c", "image": image},
        command=list(command),
        args=list(args),
        env={"PATH": "/usr/bin"},
        ports={8000: 40123},
    )


def test_newest_matching_registration_wins():
    table = ImageTable()
    table.register("example/*", lambda ctx: ["old"])
    table.register("example/app:*", lambda ctx: ["new"])
    assert table.launch(context("example/app:1")).argv == ["new"]


def test_unmapped_image_raises_image_not_found():
    table = ImageTable()
    table.register("example/*", lambda ctx: ["x"])
    with pytest.raises(ImageNotFound, match="other/app:1"):
        table.launch(context("other/app:1"))


def test_vllm_image_runs_the_api_server_module_with_the_container_args(tmp_path):
    python = tmp_path / "bin" / "python"
    launch = vllm_openai(python)(context("vllm/vllm-openai:v0", args=["--model", "/m"]))
    assert launch.argv == [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", "/m"]
    assert launch.env["PATH"].split(":")[0] == str(python.parent)


def test_container_command_replaces_an_image_entrypoint():
    handler = entrypoint("server", "--serve")
    assert handler(context("i", command=["sh", "-c"], args=["true"])).argv == ["sh", "-c", "true"]
    assert handler(context("i", args=["--x"])).argv == ["server", "--serve", "--x"]
