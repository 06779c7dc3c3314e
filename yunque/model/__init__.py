"""The model: ModelConfig and presets, the Transformer and its KV cache, Hugging Face names, load and
save, the torch-free HF-directory reader, accounting, int8 and the device policy. Imports text."""
