"""JSON-constrained decoding: only tokens that keep the output a valid prefix of one JSON object.

`format: "json"` (Ollama) and `response_format: {"type": "json_object"}` (OpenAI) ask for an
answer that parses. Asking the model and hoping fails with small models, so each decode
step masks the logits of every candidate token whose bytes would break the JSON grammar
(RFC 8259, with an object at the top and no leading or runaway whitespace, as llama.cpp's
json grammar), and generation ends as soon as the object closes.

The grammar runs over bytes: a byte-level BPE token may hold half a UTF-8 character, and
every byte of 0x80 and above may only sit inside a string. A state is an immutable tuple,
so trying a candidate token never disturbs the state it starts from.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor

from yunque.errors import YunqueError

# Modes of the automaton. Containers on the stack: b"{" or b"[".
_ROOT, _VALUE, _ARRAY_START, _OBJECT_START, _KEY, _COLON, _AFTER = range(7)
_STRING, _ESCAPE, _UNICODE, _NUMBER, _LITERAL, _DONE = range(7, 13)

_WS = frozenset(b" \t\n\r")
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = frozenset(b'"\\/bfnrtu')
_LITERALS = {ord("t"): b"rue", ord("f"): b"alse", ord("n"): b"ull"}
# Number sub-states: what has been read so far decides what may follow.
_N_MINUS, _N_ZERO, _N_INT, _N_DOT, _N_FRAC, _N_E, _N_ESIGN, _N_EXP = range(8)
_N_COMPLETE = frozenset((_N_ZERO, _N_INT, _N_FRAC, _N_EXP))

MAX_BLANKS = 32  # whitespace bytes in a row outside strings: room to indent, none to loop in (as llama.cpp's json grammar)

State = tuple  # (mode, stack: bytes, aux): aux is the string's "is a key" flag, (flag, hex digits left), number
               # sub-state, literal rest, or the length of the current run of whitespace

START: State = (_ROOT, b"", None)


def _value_start(stack: bytes, c: int) -> State | None:
    """The state after byte `c` opens a value (the stack holds the enclosing containers)."""
    if c == ord("{"):
        return (_OBJECT_START, stack + b"{", None)
    if c == ord("["):
        return (_ARRAY_START, stack + b"[", None)
    if c == ord('"'):
        return (_STRING, stack, False)
    if c == ord("-"):
        return (_NUMBER, stack, _N_MINUS)
    if c == ord("0"):
        return (_NUMBER, stack, _N_ZERO)
    if c in _DIGITS:
        return (_NUMBER, stack, _N_INT)
    if c in _LITERALS:
        return (_LITERAL, stack, _LITERALS[c])
    return None


def _after_value(stack: bytes) -> State:
    return (_DONE, b"", None) if not stack else (_AFTER, stack, None)


def _number(sub: int, c: int) -> int | None:
    """The number sub-state after byte `c`, or None if `c` cannot continue the number."""
    if c in _DIGITS:
        if sub == _N_MINUS:
            return _N_ZERO if c == ord("0") else _N_INT
        if sub in (_N_INT, _N_FRAC, _N_EXP):
            return sub
        if sub == _N_DOT:
            return _N_FRAC
        if sub in (_N_E, _N_ESIGN):
            return _N_EXP
        return None  # after a leading zero
    if c == ord(".") and sub in (_N_ZERO, _N_INT):
        return _N_DOT
    if c in b"eE" and sub in (_N_ZERO, _N_INT, _N_FRAC):
        return _N_E
    if c in b"+-" and sub == _N_E:
        return _N_ESIGN
    return None


def step(state: State, c: int) -> State | None:
    """The state after byte `c`, or None if `c` breaks the grammar."""
    mode, stack, aux = state
    if mode == _STRING:
        if c == ord('"'):
            return (_COLON, stack, None) if aux else _after_value(stack)
        if c == ord("\\"):
            return (_ESCAPE, stack, aux)
        return None if c < 0x20 else state
    if mode == _ESCAPE:
        if c not in _ESCAPES:
            return None
        return (_UNICODE, stack, (aux, 4)) if c == ord("u") else (_STRING, stack, aux)
    if mode == _UNICODE:
        if c not in _HEX:
            return None
        is_key, left = aux
        return (_STRING, stack, is_key) if left == 1 else (_UNICODE, stack, (is_key, left - 1))
    if mode == _NUMBER:
        sub = _number(aux, c)
        if sub is not None:
            return (_NUMBER, stack, sub)
        if aux not in _N_COMPLETE:
            return None
        return step(_after_value(stack), c)  # the number ended; `c` belongs to what follows
    if mode == _LITERAL:
        if c != aux[0]:
            return None
        return _after_value(stack) if len(aux) == 1 else (_LITERAL, stack, aux[1:])
    if c in _WS:  # between tokens of the grammar; aux counts the run, so a model cannot idle in blanks
        if mode in (_ROOT, _DONE) or (aux or 0) >= MAX_BLANKS:
            return None
        return (mode, stack, (aux or 0) + 1)
    if mode == _ROOT:
        return (_OBJECT_START, b"{", None) if c == ord("{") else None
    if mode == _VALUE:
        return _value_start(stack, c)
    if mode == _ARRAY_START:
        return _after_value(stack[:-1]) if c == ord("]") else _value_start(stack, c)
    if mode == _OBJECT_START:
        if c == ord("}"):
            return _after_value(stack[:-1])
        return (_STRING, stack, True) if c == ord('"') else None
    if mode == _KEY:
        return (_STRING, stack, True) if c == ord('"') else None
    if mode == _COLON:
        return (_VALUE, stack, None) if c == ord(":") else None
    if mode == _AFTER:
        top = stack[-1]
        if c == ord(","):
            return (_KEY, stack, None) if top == ord("{") else (_VALUE, stack, None)
        if c == (ord("}") if top == ord("{") else ord("]")):
            return _after_value(stack[:-1])
        return None
    return None  # _DONE: nothing may follow the object


def feed(state: State, data: bytes) -> State | None:
    """The state after all of `data`, or None if it breaks the grammar somewhere."""
    for c in data:
        state = step(state, c)
        if state is None:
            return None
    return state


def is_complete(state: State) -> bool:
    """True once the top-level object has closed."""
    return state[0] == _DONE


_TABLES: "weakref.WeakKeyDictionary[Any, list[bytes | None]]" = weakref.WeakKeyDictionary()


def _token_table(tokenizer: Any) -> list[bytes | None]:
    """Bytes of every ordinary token by id (None for special tokens and unused ids), built once per tokenizer."""
    if tokenizer not in _TABLES:
        table: list[bytes | None] = [None] * tokenizer.vocab_size
        for data, token_id in tokenizer.ranks.items():
            table[token_id] = data
        _TABLES[tokenizer] = table
    return _TABLES[tokenizer]


class JsonConstraint:
    """One request's JSON state: masks its logits each step and follows the tokens it emits.

    Only the `screen` most likely tokens are checked each step (all of them if none of those
    fits), so sampling is exact for a top-k up to `screen` and otherwise draws from the valid
    tokens among the likeliest. Special tokens (end of text included) are never allowed:
    generation ends when the object closes.
    """

    def __init__(self, tokenizer: Any, screen: int = 64) -> None:
        self.table = _token_table(tokenizer)
        self.state: State = START
        self.screen = screen

    @property
    def complete(self) -> bool:
        return is_complete(self.state)

    def _bytes(self, token_id: int) -> bytes | None:
        return self.table[token_id] if token_id < len(self.table) else None  # ids past the tokenizer: padding

    def _allowed(self, token_id: int) -> bool:
        data = self._bytes(token_id)
        return bool(data) and feed(self.state, data) is not None

    def mask(self, logits: Tensor) -> Tensor:
        """`logits` (V,) with every token that would break the JSON set to -inf."""
        order = logits.topk(min(self.screen, logits.shape[0])).indices.tolist()
        allowed = [t for t in order if self._allowed(t)]
        if not allowed:  # rare: nothing likely fits; take the likeliest that does
            fits = next((t for t in logits.argsort(descending=True).tolist() if self._allowed(t)), None)
            if fits is None:
                raise YunqueError("No token of this tokenizer can continue the JSON answer; use a byte-level tokenizer for JSON output.")
            allowed = [fits]
        out = torch.full_like(logits, float("-inf"))
        index = torch.tensor(allowed, device=logits.device)
        out[index] = logits[index]
        return out

    def advance(self, token_id: int) -> None:
        state = feed(self.state, self._bytes(token_id) or b"")
        if state is None:
            raise ValueError(f"token {token_id} breaks the JSON constraint it was sampled under")
        self.state = state
