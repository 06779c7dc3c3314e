"""Every other `tokenizer.json`: BPE with byte fallback, SentencePiece-style metaspace, Unigram,
WordPiece. The `tokenizers` library reads and runs them, exactly as transformers'
`AutoTokenizer` does; `LibraryTokenizer` gives them the interface of yunque's `Tokenizer`
(whose tiktoken path stays the fast one for byte-level BPE).

Streaming cannot decode token by token here: a metaspace decoder drops the space of a
sequence's first word, and byte-fallback tokens spell one character over several tokens. So
`IncrementalDecoder` decodes a short window of recent ids and emits what it adds to the text
already shown, holding back an unfinished character (vLLM's incremental detokenizer works so).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from yunque.errors import YunqueError
from yunque.fsutil import write_text_files
from yunque.text.special import ENDOFTEXT

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_METASPACE = "\u2581"


class IncrementalDecoder:
    """Token ids in, newly completed text out, for tokenizers whose pieces depend on context."""

    def __init__(self, tokenizer: LibraryTokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the window decoded for context
        self._read = 0  # ids up to here have been emitted

    def add(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        shown = self._tokenizer.decode(self._ids[self._prefix : self._read])
        text = self._tokenizer.decode(self._ids[self._prefix :])
        if len(text) <= len(shown) or text.endswith("\ufffd"):
            return ""  # nothing new yet, or a character whose bytes are still arriving
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(shown) :]

    def flush(self) -> str:
        shown = self._tokenizer.decode(self._ids[self._prefix : self._read])
        text = self._tokenizer.decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return text[len(shown) :]


class LibraryTokenizer:
    """A Hugging Face `tokenizer.json` run by the `tokenizers` library, with yunque's interface."""

    def __init__(self, text: str, config: dict[str, Any], where: str) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self._hf = HFTokenizer.from_str(text)
            self._plain = HFTokenizer.from_str(text)  # encodes special-token text as ordinary text
        except Exception as e:  # the library's parse errors have no common type
            raise YunqueError(f"{where} is not a tokenizer.json the tokenizers library can read ({e}).") from None
        self._plain.encode_special_tokens = True
        self._text, self._config, self.where = text, config, where
        added = json.loads(text).get("added_tokens") or []
        self.special_tokens = {t["content"]: t["id"] for t in added if t.get("special")}
        self.vocab_size = max([*self._hf.get_vocab(with_added_tokens=True).values(), -1]) + 1
        self.eos_token = config_token(config.get("eos_token"))
        self.model_max_length = config_max_length(config.get("model_max_length"))
        template = config.get("chat_template")
        self.chat_template = template if isinstance(template, str) else None

    @classmethod
    def from_file(cls, file: Path, config: dict[str, Any]) -> LibraryTokenizer:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise YunqueError(f"Cannot read {file} ({e}); give a readable tokenizer.json.") from None
        return cls(text, config, str(file))

    @property
    def eot_id(self) -> int | None:
        return end_of_text_id(self.special_tokens, self.eos_token)

    def token_to_id(self, token: str) -> int | None:
        return self._hf.token_to_id(token)

    def encode(self, text: str, allowed_special: Literal["all"] | Sequence[str] = ()) -> list[int]:
        """Token ids of `text`, without the post-processor's BOS/EOS (templates write those).
        Special-token text is ordinary text unless `allowed_special` is given (any names: all)."""
        unknown = set(allowed_special) - set(self.special_tokens) if allowed_special != "all" else set()
        if unknown:
            raise YunqueError(f"This tokenizer has no special token {sorted(unknown)[0]!r}; it knows {sorted(self.special_tokens)}.")
        hf = self._hf if allowed_special else self._plain
        return hf.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str, allowed_special: Literal["all"] | Sequence[str] = ()) -> tuple[list[int], list[int]]:
        """`encode`, and the index in `text` of the character each token starts at (the library's offsets)."""
        ids = self.encode(text, allowed_special)  # the same checks
        encoding = (self._hf if allowed_special else self._plain).encode(text, add_special_tokens=False)
        return ids, [start for start, _ in encoding.offsets]

    def encode_batch(self, texts: Sequence[str], allowed_special: Literal["all"] | Sequence[str] = (), num_threads: int | None = None) -> list[list[int]]:
        """`encode` for many texts (the library parallelises internally; `num_threads` is not needed)."""
        hf = self._hf if allowed_special else self._plain
        return [e.ids for e in hf.encode_batch(list(texts), add_special_tokens=False)]

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < self.vocab_size or self._hf.id_to_token(i) is None), None)
        if bad is not None:
            raise YunqueError(f"Token id {bad} is not in this tokenizer's vocabulary (ids run from 0 to {self.vocab_size - 1}).")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`, special tokens included, as `AutoTokenizer.decode` gives it."""
        text = self._hf.decode(self._check_ids(ids), skip_special_tokens=False)
        return _clean_up(text) if self._config.get("clean_up_tokenization_spaces") else text

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for on its own (best effort for context-dependent pieces)."""
        return _piece_bytes(self._hf.id_to_token(self._check_ids([token_id])[0]) or "")

    @cached_property
    def ranks(self) -> dict[bytes, int]:
        """Bytes -> id of the ordinary tokens (what output constraints match against)."""
        special = set(self.special_tokens.values())
        out: dict[bytes, int] = {}
        for token, i in self._hf.get_vocab(with_added_tokens=False).items():
            if i not in special:
                out.setdefault(_piece_bytes(token), i)
        return out

    def stream_decoder(self) -> IncrementalDecoder:
        return IncrementalDecoder(self)

    @cached_property
    def fingerprint(self) -> str:
        """Stable hash of the tokenizer as the library normalises it (16 hex digits)."""
        return hashlib.sha256(self._hf.to_str().encode()).hexdigest()[:16]

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write tokenizer.json (as read) and tokenizer_config.json into `directory`, atomically."""
        return write_text_files(directory, {"tokenizer.json": self._text, "tokenizer_config.json": json.dumps(self._config, indent=2, ensure_ascii=False)})

    def __repr__(self) -> str:
        return f"LibraryTokenizer(vocab_size={self.vocab_size}, specials={len(self.special_tokens)}, fingerprint={self.fingerprint})"


def _piece_bytes(token: str) -> bytes:
    """The text bytes of a vocabulary entry: byte-fallback `<0xNN>`, metaspace `▁` as a space,
    WordPiece's `##` continuation without its marker."""
    match = _BYTE_PIECE.fullmatch(token)
    if match:
        return bytes([int(match[1], 16)])
    return token.removeprefix("##").replace(_METASPACE, " ").encode("utf-8")


def end_of_text_id(special_tokens: dict[str, int], eos_token: str | None) -> int | None:
    """Id of the end-of-text token (`<|endoftext|>`, else the configured eos token), or None."""
    for name in (ENDOFTEXT, eos_token):
        if name in special_tokens:
            return special_tokens[name]
    return None


def config_token(value: Any) -> str | None:
    """A token named in tokenizer_config.json: stored as its text or as a serialized AddedToken."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def config_max_length(value: Any) -> int | None:
    """tokenizer_config.json's model_max_length; transformers writes a huge sentinel (1e30) when unknown."""
    return value if isinstance(value, int) and 0 < value < 10**9 else None


def _clean_up(text: str) -> str:
    """transformers' `clean_up_tokenization` (for tokenizers configured with it, e.g. BERT's)."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text
