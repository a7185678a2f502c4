"""An Ollama Modelfile for the GGUF: FROM, the chat template in Go template form, stop tokens."""

from __future__ import annotations

import warnings
from pathlib import Path

MODELFILE_NAME = "Modelfile"
# Ollama's ChatML template (Go text/template): each message, then the assistant's turn.
CHATML_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}{{- if ne .Role \"system\" }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n{{ end }}{{- end }}<|im_start|>assistant\n"
)
_PROBE = [("system", "S1"), ("user", "U1"), ("assistant", "A1"), ("user", "U2")]


def modelfile(model_dir: Path, gguf_name: str) -> str:
    """The Modelfile text for `gguf_name` beside it, from `model_dir`'s tokenizer."""
    tokenizer = _tokenizer(model_dir)
    lines = [f"FROM ./{gguf_name}", ""]
    template = getattr(tokenizer, "chat_template", None) if tokenizer else None
    if template and _is_chatml(tokenizer):
        default_system = _default_system(tokenizer)
        lines += ['TEMPLATE """' + CHATML_TEMPLATE + '"""']
        if default_system:
            lines += [f'SYSTEM """{default_system}"""']
        stops = ["<|im_start|>", "<|im_end|>"]
    else:
        lines += [
            "# The tokenizer's chat template is not ChatML, the one form translated to Ollama's",
            "# Go template automatically. Ollama uses the template in the GGUF's",
            "# tokenizer.chat_template metadata when it recognises it; otherwise write a",
            "# TEMPLATE here by hand (https://github.com/ollama/ollama/blob/main/docs/template.md).",
        ]
        stops = []
    eos = getattr(tokenizer, "eos_token", None) if tokenizer else None
    if eos and eos not in stops:
        stops.append(eos)
    lines += [""] + [f'PARAMETER stop "{stop}"' for stop in stops]
    return "\n".join(lines) + "\n"


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError):
        return None


def _render(tokenizer, messages: list[tuple[str, str]]) -> str | None:
    try:
        return tokenizer.apply_chat_template(
            [{"role": role, "content": text} for role, text in messages],
            tokenize=False, add_generation_prompt=True)
    except Exception:  # a template may refuse some message orders; then it is not ChatML
        return None


def _chatml(messages: list[tuple[str, str]]) -> str:
    turns = "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in messages)
    return turns + "<|im_start|>assistant\n"


def _is_chatml(tokenizer) -> bool:
    """Whether the template renders a conversation exactly as ChatML does."""
    return _render(tokenizer, _PROBE) == _chatml(_PROBE)


def _default_system(tokenizer) -> str | None:
    """The system prompt the template adds when the conversation has none (SmolLM2 does)."""
    rendered = _render(tokenizer, [("user", "U1")]) or ""
    plain = _chatml([("user", "U1")])
    if rendered == plain or not rendered.endswith(plain):
        return None
    prefix = rendered[: -len(plain)]
    head, tail = "<|im_start|>system\n", "<|im_end|>\n"
    if prefix.startswith(head) and prefix.endswith(tail):
        return prefix[len(head): -len(tail)]
    return None
