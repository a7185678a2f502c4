"""The tokenizer as GGUF keys: tokens, types, merges, pre-tokenizer, special ids, chat template."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import gguf

from lorafuse.errors import UserError, first_line

# llama.cpp names a BPE pre-tokenizer by the sha256 of how the tokenizer encodes this text
# (convert_hf_to_gguf.py, get_vocab_base_pre). The text and the hashes below are llama.cpp's.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not "
    "sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
KNOWN_PRE_TOKENIZERS = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}

# The split regexes of llama.cpp's pre-tokenizers, for vocabularies of our own (no known hash).
KNOWN_SPLIT_REGEXES = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
}


def add_vocabulary(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> None:
    """Write the tokenizer of `model_dir` (tokenizer.json) the way llama.cpp reads it."""
    tokenizer_json = _tokenizer_json(model_dir)
    if tokenizer_json["model"].get("byte_fallback"):
        _add_sentencepiece_style(writer, model_dir)  # Llama 2, Mistral v0.x
    else:
        _add_bpe(writer, model_dir, vocab_size)
    # merges, bos/eos/unk/pad ids, add_bos/add_eos and the chat template (jinja or json)
    gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size).add_to_gguf(
        writer, quiet=True)


def _tokenizer_json(model_dir: Path) -> dict:
    path = Path(model_dir) / "tokenizer.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing; GGUF export needs the fast tokenizer's file") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({first_line(exc)})") from None


def _load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise UserError(f"{model_dir}: cannot load its tokenizer ({first_line(exc)})") from None


def _add_bpe(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> None:
    """Byte-level BPE (GPT-2 style: Llama 3, Qwen2, SmolLM): convert_hf_to_gguf's gpt2 vocab."""
    tokenizer = _load_tokenizer(model_dir)
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise UserError(f"{model_dir}: tokenizer has ids up to {max(vocab.values())}, more than "
                        f"the model's vocab_size {vocab_size}")
    by_id = {index: text for text, index in vocab.items()}
    added = tokenizer.get_added_vocab()
    tokens, types = [], []
    for index in range(vocab_size):
        text = by_id.get(index)
        if text is None:  # embedding rows no token uses (vocabularies padded to a multiple)
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif text in added:
            tokens.append(text)
            special = tokenizer.added_tokens_decoder[index].special
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(text)
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tokenizer, model_dir))
    writer.add_token_list(tokens)
    writer.add_token_types(types)


def _pre_tokenizer(tokenizer, model_dir: Path) -> str:
    """llama.cpp's name for the pre-tokenizer: known by its hash, else by its split regex.

    The split is read from the tokenizer transformers actually builds, not tokenizer.json:
    some tokenizer classes (Qwen2's) impose their own regex whatever the file says."""
    encoded = tokenizer.encode(CHECK_TEXT)
    known = KNOWN_PRE_TOKENIZERS.get(hashlib.sha256(str(encoded).encode()).hexdigest())
    if known:
        return known
    state = json.loads(tokenizer.backend_tokenizer.pre_tokenizer.__getstate__())
    if state.get("type") == "ByteLevel" and state.get("use_regex", True):
        return "gpt-2"  # GPT-2's own split regex
    steps = state.get("pretokenizers") or []
    patterns = [(step.get("pattern") or {}).get("Regex") for step in steps
                if step.get("type") == "Split"]
    if len(patterns) == 1 and patterns[0] in KNOWN_SPLIT_REGEXES:
        return KNOWN_SPLIT_REGEXES[patterns[0]]
    raise UserError(f"{model_dir}/tokenizer.json: pre-tokenizer {state.get('type')!r} is not "
                    "one llama.cpp is known to reproduce (neither its hash nor its regex is "
                    "known)")


def _add_sentencepiece_style(writer: gguf.GGUFWriter, model_dir: Path) -> None:
    try:
        vocab = gguf.LlamaHfVocab(Path(model_dir))
    except (FileNotFoundError, TypeError, ValueError) as exc:
        raise UserError(f"{model_dir}/tokenizer.json: not a Llama-style tokenizer llama.cpp "
                        f"reads ({first_line(exc)})") from None
    tokens, scores, types = zip(*vocab.all_tokens(), strict=True)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(list(tokens))
    writer.add_token_scores(list(scores))
    writer.add_token_types(list(types))
