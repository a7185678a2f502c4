"""A stand-in for vLLM's OpenAI server in cluster tests: its flags, health, models, completions.

It refuses to start when a local --model or LoRA path has no weights (as vLLM would), and
answers a completion with where the weights behind the asked-for model name live, so
tests can tell merged from adapter serving without running a model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def parse(argv: list[str]) -> argparse.Namespace:
    argv = with_config_file(argv)
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name", nargs="+", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--enable-lora", action="store_true")
    parser.add_argument("--lora-modules", nargs="+", default=[])
    args, _ = parser.parse_known_args(argv)
    return args


def with_config_file(argv: list[str]) -> list[str]:
    """vLLM's --config FILE: the file's keys become flags before the command line's."""
    if "--config" not in argv:
        return argv
    import yaml

    index = argv.index("--config")
    config = yaml.safe_load(Path(argv[index + 1]).read_text()) or {}
    flags: list[str] = []
    for key, value in config.items():
        values = value if isinstance(value, list) else [value]
        flags += [f"--{key}", *(str(v) for v in values)]
    return flags + argv[:index] + argv[index + 2 :]


def models(args: argparse.Namespace) -> dict[str, str]:
    """Model name -> the weights behind it."""
    names = args.served_model_name or [args.model]
    served = {name: args.model for name in names}
    for module in args.lora_modules:
        name, _, path = module.partition("=")
        served[name] = path
    return served


def check_weights(served: dict[str, str]) -> None:
    for name, path in served.items():
        if path.startswith("/") and not any(Path(path).glob("*.safetensors")):
            sys.exit(f"fake-vllm: {name}: no safetensors under {path}")


def handler_for(served: dict[str, str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                self._send(200, {})
            elif self.path == "/v1/models":
                listed = [{"id": name, "root": path} for name, path in served.items()]
                self._send(200, {"object": "list", "data": listed})
            else:
                self._send(404, {"error": self.path})

        def do_POST(self) -> None:  # noqa: N802
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/completions" or request.get("model") not in served:
                self._send(404, {"error": f"no model {request.get('model')}"})
                return
            text = served[request["model"]]
            self._send(200, {"object": "text_completion", "choices": [{"index": 0, "text": text}]})

        def log_message(self, *_: object) -> None:
            pass

    return Handler


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    served = models(args)
    check_weights(served)
    time.sleep(0.5)  # vLLM takes a while before /health answers; so does this
    ThreadingHTTPServer((args.host, args.port), handler_for(served)).serve_forever()


if __name__ == "__main__":
    main()
