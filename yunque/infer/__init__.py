"""Inference: sampling, text streaming, the decode step, batches, the KV budget and prompt cache, the
Engine, generate, scoring, embeddings and output constraints. Imports text and model; never train, store or server."""
