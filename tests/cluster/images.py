"""The test node's image table: which local command a container image stands for."""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# The virtual environment (or interpreter prefix) running the tests.
VENV_BIN = Path(sys.executable).parent


@dataclass
class ContainerContext:
    """What an image handler knows about the container it has to start."""

    pod: dict
    container: dict
    command: list[str]  # spec command with $(VAR) expanded; empty when not given
    args: list[str]  # spec args with $(VAR) expanded
    env: dict[str, str]  # the container's resolved environment
    ports: dict[int, int]  # containerPort -> host port on 127.0.0.1

    @property
    def image(self) -> str:
        return self.container["image"]

    def port(self, container_port: int) -> int:
        """Host port that stands for `container_port` of this pod."""
        return self.ports[container_port]


@dataclass
class Launch:
    """The process a handler asks for: argv, extra environment, optional working dir."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None


Handler = Callable[[ContainerContext], "Launch | Sequence[str]"]


class ImageNotFound(LookupError):
    """No handler is registered for an image (the node reports ErrImagePull)."""


class ImageTable:
    """Ordered glob patterns -> handlers; the newest matching registration wins."""

    def __init__(self) -> None:
        self._entries: list[tuple[str, Handler]] = []

    def register(self, pattern: str, handler: Handler) -> None:
        """Map images matching the glob `pattern` (e.g. "python:*") to `handler`."""
        self._entries.append((pattern, handler))

    def unregister(self, pattern: str) -> None:
        self._entries = [(p, h) for p, h in self._entries if p != pattern]

    def patterns(self) -> list[str]:
        return [pattern for pattern, _ in self._entries]

    def snapshot(self) -> list[tuple[str, Handler]]:
        return list(self._entries)

    def restore(self, snapshot: list[tuple[str, Handler]]) -> None:
        self._entries = list(snapshot)

    def resolve(self, image: str) -> Handler:
        for pattern, handler in reversed(self._entries):
            if fnmatch.fnmatchcase(image, pattern):
                return handler
        raise ImageNotFound(
            f'image "{image}" is not in the test node\'s image table '
            f"(register it with node.images.register(pattern, handler))"
        )

    def launch(self, ctx: ContainerContext) -> Launch:
        result = self.resolve(ctx.image)(ctx)
        return result if isinstance(result, Launch) else Launch(argv=list(result))


def _path_env(ctx_env: Mapping[str, str], path: Sequence[str | Path]) -> dict[str, str]:
    current = ctx_env.get("PATH") or os.environ.get("PATH", "/usr/bin:/bin")
    return {"PATH": os.pathsep.join([*map(str, path), current])}


def run_as_given(
    path: Sequence[str | Path] = (VENV_BIN,), env: Mapping[str, str] | None = None
) -> Handler:
    """An image whose command and args run as given, with `path` folders first on PATH."""

    def handler(ctx: ContainerContext) -> Launch:
        argv = ctx.command + ctx.args
        if not argv:
            raise ValueError(f"image {ctx.image}: no entrypoint here, give the container a command")
        return Launch(argv=argv, env={**_path_env(ctx.env, path), **(env or {})})

    return handler


def entrypoint(
    *prefix: str, path: Sequence[str | Path] = (VENV_BIN,), env: Mapping[str, str] | None = None
) -> Handler:
    """An image whose ENTRYPOINT is `prefix`: args are appended, a command replaces it."""

    def handler(ctx: ContainerContext) -> Launch:
        argv = (ctx.command or list(prefix)) + ctx.args
        return Launch(argv=argv, env={**_path_env(ctx.env, path), **(env or {})})

    return handler


def vllm_openai(python: str | Path, env: Mapping[str, str] | None = None) -> Handler:
    """vllm/vllm-openai: the image's entrypoint is the OpenAI-compatible API server."""
    python = Path(python)
    return entrypoint(
        str(python), "-m", "vllm.entrypoints.openai.api_server", path=(python.parent,), env=env
    )
