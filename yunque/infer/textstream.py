"""Token ids to text pieces: UTF-8 safe streaming and stop strings.

A stop string may arrive split over several tokens, so text that could still be the start
of one is held back, and only for as long as it could be: as soon as a piece rules the
stop string out, the held text is released.
"""

from __future__ import annotations

from typing import Any, Sequence


class StopStrings:
    """Feed text pieces; get back what is safe to emit, and whether a stop string was hit."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Text that can be emitted now; after a stop string, the text before it and nothing more."""
        if self.stopped:
            return ""
        text = self.held + piece
        # Emitted text never ends in a prefix of a stop string, so a match starts inside `text`.
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped, self.held = True, ""
            return text[: min(hits)]
        keep = self._longest_partial(text)
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held text, at the end of generation (it did not turn into a stop string)."""
        text, self.held = ("" if self.stopped else self.held), ""
        return text

    def _longest_partial(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best


class TextStream:
    """Token ids in, text pieces out: the tokenizer's UTF-8 safe stream decoder, then stop strings."""

    def __init__(self, tokenizer: Any, stops: Sequence[str] = ()) -> None:
        self.decoder = tokenizer.stream_decoder()
        self.stops = StopStrings(stops)

    @property
    def stopped(self) -> bool:
        return self.stops.stopped

    def add(self, token_id: int) -> str:
        return self.stops.feed(self.decoder.add(token_id))

    def finish(self) -> str:
        """Whatever is left once generation has ended (incomplete bytes, held text)."""
        text = self.stops.feed(self.decoder.flush())
        return text + self.stops.flush()
