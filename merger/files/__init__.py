"""Weight and artifact files: safetensors headers, shards, direct I/O, hashes, publishing."""
