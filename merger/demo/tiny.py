"""Small random models, adapters and a locally trained tokenizer (demo, tests, benchmarks)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

# A few hundred words of plain text so a byte-level BPE tokenizer can be trained offline.
CORPUS = (
    """
The quick brown fox jumps over the lazy dog. A merged model serves faster than a base
model with adapters loaded at run time. Support tickets ask about refunds, invoices,
passwords, shipping times and account limits. Please reset my password. Where is my
order? The invoice for March is missing. Our team answers every ticket within a day.
Kubernetes schedules pods onto nodes; a deployment keeps replicas running; a job runs
to completion. Weights are stored as tensors in safetensors files, sharded by size.
Low rank adaptation trains two small matrices per layer and leaves the base frozen.
Quantization stores weights in fewer bits; calibration uses real prompts. Hello world.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Questions? Answers! Lists, commas; colons:
"""
    * 4
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<s>{{ message['role'] }}: {{ message['content'] }}</s>"
    "{% endfor %}{% if add_generation_prompt %}<s>assistant: {% endif %}"
)

# Per architecture: the config class name and the dimensions shared by all tiny models.
ARCHITECTURES = {
    "llama": "LlamaConfig",
    "mistral": "MistralConfig",
    "qwen2": "Qwen2Config",
    "gpt2": "GPT2Config",
    "phi3": "Phi3Config",
}


def train_tokenizer(vocab_size: int = 384):
    """Train a byte-level BPE tokenizer on CORPUS and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def tiny_config(arch: str = "llama", vocab_size: int = 384, **overrides):
    """A config for a 2-layer model of the given architecture with small dimensions."""
    import transformers

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown tiny architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    config_class = getattr(transformers, ARCHITECTURES[arch])
    if arch == "gpt2":
        fields = dict(n_embd=64, n_layer=2, n_head=4, n_positions=256, vocab_size=vocab_size)
    else:
        fields = dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            vocab_size=vocab_size,
        )
    fields.update(bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False)
    fields.update(overrides)
    return config_class(**fields)


def build_tiny_model(
    out_dir: str | Path,
    arch: str = "llama",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str = "5GB",
    **config_overrides,
) -> Path:
    """Write a random model of `arch` with a trained tokenizer as a Hugging Face checkpoint."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    out = Path(out_dir)
    tokenizer = train_tokenizer()
    config = tiny_config(arch, vocab_size=len(tokenizer), **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=1, eos_token_id=2, pad_token_id=3, do_sample=False
    )
    model.save_pretrained(out, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out)
    return out


def randomize_lora(model, seed: int, scale: float = 0.1) -> None:
    """Give every adapter parameter random values (PEFT starts B at zero, a no-op merge)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "magnitude" in name:
                noise = torch.randn(param.shape, generator=generator) * scale
                param.copy_((param + noise.to(param.dtype)) if "magnitude" in name else noise)


def build_adapter(base_dir: str | Path, out_dir: str | Path, seed: int = 1, **lora_kwargs) -> Path:
    """Train-free LoRA adapter on `base_dir`: a PEFT LoraConfig from kwargs, random weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    lora_kwargs.setdefault("r", 8)
    lora_kwargs.setdefault("lora_alpha", 16)
    lora_kwargs.setdefault("task_type", "CAUSAL_LM")
    peft_model = get_peft_model(base, LoraConfig(**lora_kwargs))
    randomize_lora(peft_model, seed)
    peft_model.save_pretrained(out_dir)
    _record_base_path(Path(out_dir), Path(base_dir))
    return Path(out_dir)


def _record_base_path(adapter_dir: Path, base_dir: Path) -> None:
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(base_dir)
    config_path.write_text(json.dumps(config, indent=2))
