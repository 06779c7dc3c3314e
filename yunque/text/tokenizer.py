"""Byte-level BPE tokenizer: train on your own text, encode, decode, stream, save as Hugging Face files.

Two backends, one vocabulary. The `tokenizers` library trains the merges at native speed and
writes the Hugging Face `tokenizer.json` that other tools load. Encoding and decoding go
through a `tiktoken.Encoding` built from the same vocabulary (token bytes -> rank, where the
rank is the token id and ranks follow merge order), because tiktoken is the fastest encoder
there is. Both split text with the same regex and know the same special tokens, so they give
the same ids; the tests check that on real text and on arbitrary Unicode.

A tokenizer is stored as a Hugging Face directory (`tokenizer.json` + `tokenizer_config.json`).
`Tokenizer.from_pretrained` also reads GPT-2's original `encoder.json` + `vocab.bpe`, and
hands every other `tokenizer.json` (byte fallback, metaspace, Unigram, WordPiece) to
`yunque.text.hf_tokenizer.LibraryTokenizer`, which the tokenizers library runs.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal

import tiktoken

from yunque.errors import YunqueError
from yunque.fsutil import read_json, write_text_files
from yunque.text.hf_tokenizer import LibraryTokenizer, config_max_length, config_token, end_of_text_id
from yunque.text.special import CHAT_TOKENS, DEFAULT_CHAT_TEMPLATE, ENDOFTEXT, SPECIAL_TOKENS

# GPT-4's (cl100k) split pattern, in the form both tiktoken (fancy-regex) and tokenizers
# (Oniguruma) read the same way: no possessive quantifiers and no `$`, whose meaning differs
# between the two engines.
CL100K_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# GPT-2's pattern, as in its encoder.py and in the `tokenizers` ByteLevel pre-tokenizer.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

MAX_VOCAB_SIZE = 262_144
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
_TRAIN_CHUNK_CHARS = 1 << 16

AllowedSpecial = Literal["all"] | Collection[str]


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (byte-level BPE's alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = (b for b in range(256) if b not in printable)
    return {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(extra)}


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in _byte_to_unicode().items()}


def _to_bytes(token: str, where: str) -> bytes:
    table = _unicode_to_byte()
    try:
        return bytes(table[c] for c in token)
    except KeyError:
        raise YunqueError(
            f"{where} has token {token!r} outside the byte-level alphabet; yunque reads byte-level BPE tokenizers only."
        ) from None


def _to_unicode(token: bytes) -> str:
    table = _byte_to_unicode()
    return "".join(table[b] for b in token)


def check_vocab_size(vocab_size: int) -> None:
    """Raise YunqueError unless `vocab_size` leaves room for the 256 bytes and the special tokens."""
    if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise YunqueError(
            f"Vocabulary size {vocab_size} is out of range; choose between {MIN_VOCAB_SIZE} "
            f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens) and {MAX_VOCAB_SIZE:,}."
        )


class _NotPlainByteLevel(YunqueError):
    """A tokenizer.json that tiktoken cannot run exactly (another model type, a normalizer, byte
    fallback, ...): it loads through the tokenizers library instead."""


class StreamDecoder:
    """Turns token ids into text one at a time, emitting only complete UTF-8 characters.

    A multibyte character split across tokens is held back until its last byte arrives, so
    streamed text never shows U+FFFD for it; `flush` releases what is left (invalid trailing
    bytes become U+FFFD).
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        return self._utf8.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class Tokenizer:
    """A byte-level BPE tokenizer with special tokens, encoding through tiktoken.

    Build one with `Tokenizer.train(files, vocab_size)`, `Tokenizer.train_from_iterator(texts,
    vocab_size)` or `Tokenizer.from_pretrained(dir)`. Ordinary tokens are byte strings whose id
    is their merge rank; special tokens (`SPECIAL_TOKENS` for trained tokenizers, only
    `<|endoftext|>` for GPT-2) are never produced from ordinary text unless asked for.
    """

    SPECIAL_TOKENS = SPECIAL_TOKENS

    def __init__(
        self,
        ranks: dict[bytes, int],
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: dict[str, int],
        pattern: str,
        *,
        model_max_length: int | None = None,
        eos_token: str | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.ranks = ranks
        self.merges = list(merges)
        self.special_tokens = dict(special_tokens)
        self.pattern = pattern
        self.model_max_length = model_max_length
        self._chat_template = chat_template
        self.eos_token = eos_token if eos_token is not None else (ENDOFTEXT if ENDOFTEXT in special_tokens else None)
        self.vocab_size = max([*ranks.values(), *special_tokens.values()]) + 1
        self._enc = tiktoken.Encoding(
            name="yunque", pat_str=pattern, mergeable_ranks=ranks, special_tokens=self.special_tokens
        )
        used = len(ranks) + len(self.special_tokens)
        self._has_gaps = used != self.vocab_size

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def train(cls, files: Sequence[str | os.PathLike], vocab_size: int, *, show_progress: bool = True) -> Tokenizer:
        """Train on text files, .jsonl files (field "text"), directories of them, or 'python-docs'."""
        from yunque.text.corpus import iter_documents

        return cls.train_from_iterator(iter_documents(files), vocab_size, show_progress=show_progress)

    @classmethod
    def train_from_iterator(cls, texts: Iterable[str], vocab_size: int, *, show_progress: bool = True) -> Tokenizer:
        """Train a byte-level BPE with the cl100k split pattern and `SPECIAL_TOKENS` on `texts`.

        `vocab_size` counts every id: 256 bytes, the learned merges and the special tokens. A
        small corpus may run out of pairs to merge first, giving a smaller vocabulary.
        """
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import models, pre_tokenizers, trainers

        check_vocab_size(vocab_size)
        texts = iter(texts)
        first = next(texts, None)  # surfaces bad paths before training starts
        if first is None:
            raise YunqueError("There is no text to train the tokenizer on; give it files with some text in them.")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = _pre_tokenizer(CL100K_PATTERN)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - len(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        hf.train_from_iterator(_training_chunks(_prepend(first, texts)), trainer=trainer)
        model = json.loads(hf.to_str())["model"]
        # Renumber so that ids 0..255 are the byte values and merged tokens follow in merge order.
        trained = sorted(model["vocab"].items(), key=lambda kv: kv[1])
        ranks = {bytes([b]): b for b in range(256)}
        for token, _ in trained:
            ranks.setdefault(_to_bytes(token, "the trained model"), len(ranks))
        merges = [tuple(_to_bytes(part, "the trained model") for part in _merge_pair(m)) for m in model["merges"]]
        specials = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
        return cls(ranks, merges, specials, CL100K_PATTERN)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Tokenizer | LibraryTokenizer:
        """Load a yunque or Hugging Face directory (`tokenizer.json`), a `tokenizer.json` file, or
        a GPT-2 directory (`encoder.json` + `vocab.bpe`). Plain byte-level BPE gives a `Tokenizer`;
        any other tokenizer.json a `LibraryTokenizer` with the same interface."""
        path = Path(path)
        if not path.exists():
            raise YunqueError(f"Tokenizer path {path} does not exist; give a directory saved by yunque or Hugging Face.")
        if path.is_file() and path.suffix.lower() != ".json":
            raise YunqueError(f"{path} is a file, not a tokenizer directory; give the directory that holds tokenizer.json (or the tokenizer.json file itself).")
        if path.is_file():
            return cls._from_any_tokenizer_json(path, {})
        if (path / "tokenizer.json").is_file():
            config_path = path / "tokenizer_config.json"
            config = read_json(config_path) if config_path.is_file() else {}
            return cls._from_any_tokenizer_json(path / "tokenizer.json", config)
        for vocab_name, merges_name in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
            if (path / vocab_name).is_file() and (path / merges_name).is_file():
                return cls._from_gpt2_files(path / vocab_name, path / merges_name)
        raise YunqueError(
            f"{path} holds no tokenizer; expected tokenizer.json, or GPT-2's encoder.json and vocab.bpe."
        )

    @classmethod
    def _from_any_tokenizer_json(cls, file: Path, config: dict) -> Tokenizer | LibraryTokenizer:
        """Plain byte-level BPE on the tiktoken fast path; anything else through the tokenizers library."""
        try:
            return cls._from_tokenizer_json(file, config)
        except _NotPlainByteLevel:
            return LibraryTokenizer.from_file(file, config)

    @classmethod
    def _from_tokenizer_json(cls, file: Path, config: dict) -> Tokenizer:
        data = read_json(file)
        model = data.get("model") or {}
        if model.get("type") != "BPE":
            raise _NotPlainByteLevel(
                f"{file} holds a {model.get('type', 'unknown')} tokenizer; yunque supports byte-level BPE only "
                "(tokenizer.json with a BPE model and a ByteLevel pre-tokenizer, or GPT-2's encoder.json + vocab.bpe)."
            )
        unsupported = [
            what
            for what, bad in (
                ("a normalizer", data.get("normalizer") is not None),
                ("byte fallback", model.get("byte_fallback")),
                ("BPE dropout", model.get("dropout") is not None),
                ("a subword prefix or suffix", model.get("continuing_subword_prefix") or model.get("end_of_word_suffix")),
            )
            if bad
        ]
        if unsupported:
            raise _NotPlainByteLevel(
                f"{file} uses {unsupported[0]}, which yunque does not support; it reads plain byte-level BPE tokenizers only."
            )
        pattern = _pattern_of(data.get("pre_tokenizer"), file)
        specials = {t["content"]: t["id"] for t in data.get("added_tokens", []) if t.get("special", False)}
        plain = [t["content"] for t in data.get("added_tokens", []) if not t.get("special", False)]
        if plain:
            raise _NotPlainByteLevel(f"{file} adds non-special token {plain[0]!r}; yunque supports special added tokens only.")
        merges = [_merge_pair(m) for m in model.get("merges", [])]
        return cls._from_vocab(
            model.get("vocab", {}), merges, specials, pattern, str(file),
            model_max_length=config_max_length(config.get("model_max_length")),
            eos_token=config_token(config.get("eos_token")),
            # transformers also allows a list of named templates; keep only the plain form.
            chat_template=config["chat_template"] if isinstance(config.get("chat_template"), str) else None,
        )

    @classmethod
    def _from_gpt2_files(cls, vocab_file: Path, merges_file: Path) -> Tokenizer:
        vocab = read_json(vocab_file)
        lines = merges_file.read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
        if any(len(m) != 2 for m in merges):
            raise YunqueError(f"{merges_file} is not a BPE merges file; each line must hold two tokens separated by a space.")
        merged = {a + b for a, b in merges}
        # Entries neither a byte nor made by a merge, like GPT-2's "<|endoftext|>", are special tokens.
        specials = {
            token: i for token, i in vocab.items() if len(token) > 1 and token not in merged and re.fullmatch(r"<\|.+\|>", token)
        }
        return cls._from_vocab(vocab, merges, specials, GPT2_PATTERN, str(vocab_file))

    @classmethod
    def _from_vocab(
        cls,
        vocab: dict[str, int],
        merges: list[tuple[str, str]],
        specials: dict[str, int],
        pattern: str,
        where: str,
        **kwargs,
    ) -> Tokenizer:
        """Check that a byte-level vocabulary can be encoded by rank (what tiktoken does) and build it."""
        special_ids = set(specials.values())
        ranks = {_to_bytes(token, where): i for token, i in vocab.items() if i not in special_ids}
        if len(ranks) != len(vocab) - sum(1 for i in vocab.values() if i in special_ids):
            raise _NotPlainByteLevel(f"{where} lists the same token bytes twice; it is not a valid byte-level BPE vocabulary.")
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            raise _NotPlainByteLevel(f"{where} lacks the single byte {missing[0]:#04x}; byte-level BPE needs all 256 bytes.")
        byte_merges = [(_to_bytes(a, where), _to_bytes(b, where)) for a, b in merges]
        last, made = -1, set()
        for a, b in byte_merges:
            token = a + b
            if token not in ranks:
                raise _NotPlainByteLevel(f"{where} merges {a!r} + {b!r} into a token missing from its vocabulary.")
            if token in made:
                continue
            made.add(token)
            if ranks[token] <= last:
                raise _NotPlainByteLevel(f"{where} numbers its tokens out of merge order, which yunque cannot encode exactly.")
            last = ranks[token]
        orphans = [t for t in ranks if len(t) > 1 and t not in made]
        if orphans:
            raise _NotPlainByteLevel(f"{where} has token {orphans[0]!r} that no merge produces; it is not a plain BPE vocabulary.")
        return cls(ranks, byte_merges, specials, pattern, **kwargs)

    # ---- special tokens -----------------------------------------------------------------

    @property
    def eot_id(self) -> int | None:
        """Id of the end-of-text token (`<|endoftext|>`, else the configured eos token), or None."""
        return end_of_text_id(self.special_tokens, self.eos_token)

    def token_to_id(self, token: str) -> int | None:
        """Id of a special token name, or of the ordinary token with these UTF-8 bytes; None if absent
        (chat tokens like `<|user|>` are absent from imported GPT-2 tokenizers)."""
        if token in self.special_tokens:
            return self.special_tokens[token]
        return self.ranks.get(token.encode("utf-8"))

    # ---- encode / decode ----------------------------------------------------------------

    def _allowed(self, allowed_special: AllowedSpecial) -> set[str]:
        if allowed_special == "all":
            return set(self.special_tokens)
        allowed = set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise YunqueError(f"This tokenizer has no special token {sorted(unknown)[0]!r}; it knows {sorted(self.special_tokens)}.")
        return allowed

    def encode(self, text: str, allowed_special: AllowedSpecial = ()) -> list[int]:
        """Token ids of `text`. Special-token text is encoded as ordinary text unless listed in
        `allowed_special` (a set of names, or "all")."""
        if not allowed_special:
            return self._enc.encode_ordinary(text)
        return self._enc.encode(text, allowed_special=self._allowed(allowed_special), disallowed_special=())

    def encode_with_offsets(self, text: str, allowed_special: AllowedSpecial = ()) -> tuple[list[int], list[int]]:
        """`encode`, and the index in `text` of the character each token starts in (a token
        that starts inside a character, as byte-level pieces may, gets that character's)."""
        ids = self.encode(text, allowed_special)
        char_at = [i for i, ch in enumerate(text) for _ in range(len(ch.encode("utf-8")))]
        starts, pos = [], 0
        for t in ids:
            starts.append(char_at[pos] if pos < len(char_at) else len(text))
            pos += len(self._enc.decode_single_token_bytes(t))
        return ids, starts

    def encode_batch(
        self, texts: Sequence[str], allowed_special: AllowedSpecial = (), num_threads: int | None = None
    ) -> list[list[int]]:
        """`encode` for many texts, in parallel threads (default: one per available core, at most 8).

        Each thread encodes one contiguous slice of `texts`: one task per text (as tiktoken's own
        batch call does) costs more than encoding a short line, and tiktoken's Rust core releases
        the GIL while it encodes, so slices run truly in parallel.
        """
        texts = list(texts)
        allowed = self._allowed(allowed_special) if allowed_special else set()
        threads = max(1, min(num_threads or min(8, len(os.sched_getaffinity(0))), len(texts)))
        if allowed:
            def encode(text: str) -> list[int]:
                return self._enc.encode(text, allowed_special=allowed, disallowed_special=())
        else:
            encode = self._enc.encode_ordinary
        if threads == 1:
            return [encode(t) for t in texts]
        step = -(-len(texts) // (threads * 4))
        with ThreadPoolExecutor(threads) as pool:
            slices = pool.map(lambda i: [encode(t) for t in texts[i : i + step]], range(0, len(texts), step))
            return [ids for part in slices for ids in part]

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size or (self._has_gaps and not self._known(ids))):
            bad = next(i for i in ids if not self._known([i]))
            raise YunqueError(f"Token id {bad} is not in this tokenizer's vocabulary (ids run from 0 to {self.vocab_size - 1}).")
        return ids

    def _known(self, ids: list[int]) -> bool:
        valid = self._valid_ids
        return all(i in valid for i in ids)

    @cached_property
    def _valid_ids(self) -> frozenset[int]:
        return frozenset([*self.ranks.values(), *self.special_tokens.values()])

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The raw bytes of a sequence of ids (may end inside a UTF-8 character)."""
        return self._enc.decode_bytes(self._check_ids(ids))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a sequence of ids; `decode(encode(s)) == s` for every string."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (special tokens give their name)."""
        return self._enc.decode_single_token_bytes(self._check_ids([token_id])[0])

    def stream_decoder(self) -> StreamDecoder:
        """A decoder for streaming: `.add(id)` returns the text completed so far, `.flush()` the rest."""
        return StreamDecoder(self)

    # ---- identity and files -------------------------------------------------------------

    @cached_property
    def fingerprint(self) -> str:
        """Stable hash of split pattern, vocabulary, merges and special tokens (16 hex digits)."""
        h = hashlib.sha256()
        h.update(self.pattern.encode())
        for token, i in sorted(self.ranks.items(), key=lambda kv: kv[1]):
            h.update(b"v%d:%s;" % (i, token.hex().encode()))
        for a, b in self.merges:
            h.update(b"m%s,%s;" % (a.hex().encode(), b.hex().encode()))
        h.update(json.dumps(sorted(self.special_tokens.items())).encode())
        return h.hexdigest()[:16]

    def to_tokenizers(self):
        """This tokenizer as a `tokenizers.Tokenizer` (what `tokenizer.json` holds)."""
        from tokenizers import AddedToken, decoders, models
        from tokenizers import Tokenizer as HFTokenizer

        # Special tokens sit in the model's vocabulary too (as in GPT-2's files), so any ids work.
        vocab = {_to_unicode(token): i for token, i in self.ranks.items()} | self.special_tokens
        merges = [(_to_unicode(a), _to_unicode(b)) for a, b in self.merges]
        # ignore_merges: a pre-token that is itself in the vocabulary becomes one token, as in tiktoken.
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
        hf.pre_tokenizer = _pre_tokenizer(self.pattern)
        hf.decoder = decoders.ByteLevel()
        hf.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in self.special_tokens])
        return hf

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write `tokenizer.json` and `tokenizer_config.json` (readable by `tokenizers` and
        `transformers`) into `directory`, atomically; returns the directory."""
        return write_text_files(directory, {
            "tokenizer.json": self.to_tokenizers().to_str(pretty=True),
            "tokenizer_config.json": json.dumps(self._hf_config(), indent=2, ensure_ascii=False),
        })

    def _hf_config(self) -> dict:
        config: dict = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
            "add_prefix_space": False,
        }
        if self.eos_token:
            config |= {"bos_token": self.eos_token, "eos_token": self.eos_token}
        extra = [name for name in self.special_tokens if name != self.eos_token]
        if extra:
            config["extra_special_tokens"] = extra
        if self.model_max_length:
            config["model_max_length"] = self.model_max_length
        if self.chat_template:
            config["chat_template"] = self.chat_template
        return config

    @property
    def chat_template(self) -> str | None:
        """The jinja2 chat template saved with this tokenizer: the one it was loaded with,
        else yunque's default when the tokenizer has the chat tokens it is written on."""
        if self._chat_template:
            return self._chat_template
        if all(self.token_to_id(name) is not None for name in CHAT_TOKENS):
            return DEFAULT_CHAT_TEMPLATE
        return None

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, specials={len(self.special_tokens)}, fingerprint={self.fingerprint})"


# ---- helpers ------------------------------------------------------------------------------


def _pre_tokenizer(pattern: str):
    from tokenizers import Regex, pre_tokenizers

    if pattern == GPT2_PATTERN:  # GPT-2's own form, as transformers writes it
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _pattern_of(pre: dict | None, where: Path) -> str:
    """The split regex of a byte-level pre-tokenizer: ByteLevel alone (GPT-2), or Split + ByteLevel."""
    steps = (pre.get("pretokenizers") if pre and pre.get("type") == "Sequence" else [pre]) or []
    kinds = [s.get("type") if s else None for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space"):
        return GPT2_PATTERN
    if (
        kinds == ["Split", "ByteLevel"]
        and "Regex" in (steps[0].get("pattern") or {})
        and steps[0].get("behavior") == "Isolated"
        and not steps[0].get("invert")
        and not steps[1].get("use_regex", True)
        and not steps[1].get("add_prefix_space")
    ):
        return steps[0]["pattern"]["Regex"]
    raise _NotPlainByteLevel(
        f"{where} has a pre-tokenizer yunque does not support ({kinds}); it reads byte-level BPE with a "
        "ByteLevel pre-tokenizer, optionally after one regex Split."
    )


def _merge_pair(merge: str | list[str]) -> tuple[str, str]:
    pair = merge.split(" ") if isinstance(merge, str) else merge
    if len(pair) != 2:
        raise YunqueError(f"Merge {merge!r} is not a pair of tokens; the tokenizer file is damaged.")
    return pair[0], pair[1]


def _prepend(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


_SAFE_CUT = re.compile(r"\n(?=\S)")


def _training_chunks(texts: Iterable[str]) -> Iterator[str]:
    """Cut long documents into ~64K-character pieces so training uses every core.

    Cuts fall after a newline that precedes a non-space character: no pre-token of the
    cl100k pattern spans such a point, so the pair counts are exactly those of whole documents.
    """
    for text in texts:
        start = 0
        while len(text) - start > _TRAIN_CHUNK_CHARS:
            cut = _SAFE_CUT.search(text, start + _TRAIN_CHUNK_CHARS)
            if cut is None:
                break
            yield text[start : cut.end()]
            start = cut.end()
        yield text[start:]


# ---- the `yunque tokenizer train` step ----------------------------------------------------


@dataclass
class TrainSummary:
    tokenizer: Tokenizer
    out: Path
    seconds: float
    sample: str
    sample_ids: list[int]
    bytes_per_token: float


def train_tokenizer(
    files: Sequence[str | os.PathLike], vocab_size: int, out: str | os.PathLike, *, force: bool = False,
    show_progress: bool = True,
) -> TrainSummary:
    """Train on `files` and save to `out`; refuses to replace a different tokenizer unless `force`.

    Everything is checked before training where possible, and nothing is written unless
    training succeeds, so a failed run leaves no partial directory.
    """
    from yunque.text.corpus import iter_documents

    check_vocab_size(vocab_size)
    out = Path(out)
    existing = _existing_fingerprint(out, force)
    sample: list[str] = []

    def keep_sample(docs: Iterable[str]) -> Iterator[str]:
        size = 0
        for doc in docs:
            if size < 1 << 20:
                sample.append(doc[: (1 << 20) - size])
                size += len(sample[-1])
            yield doc

    start = time.perf_counter()
    tok = Tokenizer.train_from_iterator(keep_sample(iter_documents(files)), vocab_size, show_progress=show_progress)
    seconds = time.perf_counter() - start
    if existing is not None and existing != tok.fingerprint and not force:
        raise YunqueError(
            f"{out} already holds a different tokenizer; pass --force to replace it or choose another --out directory."
        )
    tok.save_pretrained(out)
    text = "".join(sample)
    first_line = next((line for line in text.splitlines() if line.strip()), "")[:120]
    return TrainSummary(tok, out, seconds, first_line, tok.encode(first_line),
                        len(text.encode("utf-8")) / max(1, len(tok.encode(text))))


def _existing_fingerprint(out: Path, force: bool) -> str | None:
    """Fingerprint of the tokenizer already in `out`, None if `out` is new or empty (or `force`)."""
    if out.exists() and not out.is_dir():
        raise YunqueError(f"{out} is a file; give --out a directory path.")
    if force or not out.exists() or not any(out.iterdir()):
        return None
    if not (out / "tokenizer.json").is_file():
        raise YunqueError(f"{out} already holds other files; choose a new --out directory or pass --force.")
    try:
        return Tokenizer.from_pretrained(out).fingerprint
    except YunqueError:
        raise YunqueError(f"{out} holds a tokenizer.json yunque cannot read; choose another --out directory or pass --force.") from None


def parse_ids(values: Sequence[str]) -> list[int]:
    """Token ids from text (as typed on a command line); a non-integer is a YunqueError."""
    try:
        return [int(v) for v in values]
    except ValueError:
        bad = next(v for v in values if not v.lstrip("-").isdigit())
        raise YunqueError(f"{bad!r} is not a token id; give whole numbers separated by spaces.") from None
