"""The merge: base and adapters read, tensors laid out, merged in float32, streamed out."""
