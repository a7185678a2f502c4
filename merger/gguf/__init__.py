"""GGUF export of a merged model for llama.cpp and Ollama: methods, metadata, tensors, file."""
