"""vLLM's runtime LoRA API over HTTP: list, load and unload adapters in a running server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

# vLLM serves /v1/load_lora_adapter and /v1/unload_lora_adapter only with this set to True.
RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
LIST_TIMEOUT = 10.0
# Loading reads the adapter's weights and moves them to the device: give it longer.
LOAD_TIMEOUT = 120.0


class LoraRuntimeError(Exception):
    """A call to vLLM's LoRA API failed; the message is one line naming the call and why."""


@dataclass(frozen=True)
class LoraRuntime:
    """One vLLM server, at `base_url` (http://HOST:PORT, no /v1)."""

    base_url: str
    list_timeout: float = LIST_TIMEOUT
    load_timeout: float = LOAD_TIMEOUT

    def loaded(self) -> dict[str, str]:
        """The LoRA adapters the server serves now: name -> path (GET /v1/models).

        vLLM lists the base model(s) without a parent and every LoRA with its base as parent."""
        body = self._call("GET", "/v1/models", None, self.list_timeout)
        try:
            cards = body["data"]
            return {c["id"]: c.get("root") or "" for c in cards if c.get("parent") is not None}
        except (TypeError, KeyError) as exc:
            raise LoraRuntimeError(f"GET {self.base_url}/v1/models: unexpected answer") from exc

    def load(self, name: str, path: str, *, replace: bool = False) -> None:
        """Load the adapter at `path` (as the server sees it) under `name`; `replace` swaps
        the weights of an adapter already loaded under that name in place."""
        body = {"lora_name": name, "lora_path": path, "load_inplace": replace}
        self._call("POST", "/v1/load_lora_adapter", body, self.load_timeout)

    def unload(self, name: str) -> None:
        self._call("POST", "/v1/unload_lora_adapter", {"lora_name": name}, self.list_timeout)

    def _call(self, method: str, path: str, body: dict[str, Any] | None, timeout: float) -> Any:
        url = f"{self.base_url.rstrip('/')}{path}"
        what = f"{method} {url}" + (f" {body['lora_name']}" if body else "")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise LoraRuntimeError(f"{what}: {exc.code} {_error_text(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LoraRuntimeError(f"{what}: {_one_line(str(reason))}") from None
        if method == "GET":
            try:
                return json.loads(raw)
            except ValueError:
                raise LoraRuntimeError(f"{what}: answer is not JSON") from None
        return raw


def _error_text(exc: urllib.error.HTTPError) -> str:
    """vLLM's error message ({"error": {"message": ...}}), else the HTTP reason."""
    try:
        body = json.loads(exc.read())
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message") if isinstance(error, dict) else None
        if message is None and isinstance(body, dict):
            message = body.get("message") or body.get("detail")
        text = str(message) if message else str(exc.reason)
    except (ValueError, OSError, AttributeError):
        text = str(exc.reason)
    return _one_line(text)


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
