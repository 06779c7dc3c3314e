"""Inference: sampling, text streaming, the decode step, batches, the Engine, generate, embeddings and
output constraints. Imports text and model; never train, store or server."""
