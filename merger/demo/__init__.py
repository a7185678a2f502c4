"""The demo: small random models, adapters and a tokenizer, merged and compared with PEFT."""
