"""Text: the tokenizer, the one list of special tokens and the default chat template, chat-template
rendering (strings in, a string out), corpora and token shards. Imports only errors/fsutil; no torch."""
