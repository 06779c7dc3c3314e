"""Generation in the caller's thread: load a model directory, stream one sequence, or decode
several prompts together; all on a `Batch` (yunque.infer.batch)."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from yunque.errors import YunqueError
from yunque.infer.batch import Batch, Chunk, GenerationResult, make_request
from yunque.infer.sampling import SamplingParams
from yunque.model.transformer import Transformer


def load(model_dir: str | Path, *, int8: bool = False, device: str = "auto", dtype: torch.dtype | None = None) -> tuple[Transformer, Any]:
    """Model and tokenizer of a Hugging Face-layout directory, ready for generation.

    The device and dtype default to `yunque.model.device`'s policy (a GPU in bf16 when there is
    one); `int8` quantizes for the CPU's int8 kernel, so it always loads on the CPU.
    """
    from yunque.model.device import device_kind, inference_dtype, stored_dtype
    from yunque.model.lora import apply_entry_adapter
    from yunque.model.quantize import quantize_int8
    from yunque.text.tokenizer import Tokenizer

    path = Path(model_dir)
    if not path.is_dir():
        raise YunqueError(f"Model directory {path} does not exist; give a directory with config.json, model.safetensors and tokenizer.json.")
    kind = "cpu" if int8 else device_kind(device)
    model = Transformer.from_pretrained(path, dtype=dtype or inference_dtype(kind, stored_dtype(path)), device=kind)
    model = apply_entry_adapter(model, path).eval()  # a store entry's Modelfile ADAPTER, merged
    if int8:
        quantize_int8(model)
    return model, Tokenizer.from_pretrained(path)


def _context(model: Transformer, max_len: int | None) -> int:
    return max_len or model.config.max_seq_len



class Stream:
    """An iterator over one generation's ids or text pieces; `.result` is set once it is exhausted.

    Breaking out of the loop early and calling `close()` records the generation as cancelled.
    """

    def __init__(self, model: Transformer, tokenizer: Any, prompt: str | Sequence[int], params: SamplingParams,
                 want_text: bool, max_len: int | None = None) -> None:
        self._chunks: collections.deque[Chunk] = collections.deque()
        self.result: GenerationResult | None = None
        context = _context(model, max_len)
        self._req = make_request(model, tokenizer, prompt, params, context, self._chunks.append, self._set_result)
        self._want_text = want_text
        self._batch = Batch(model, 1, min(context, len(self._req.prompt_ids) + params.max_new_tokens), tokenizer)
        self._started = False

    def _set_result(self, result: GenerationResult) -> None:
        self.result = result

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> Any:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                if self._want_text:
                    if chunk.text:
                        return chunk.text
                    continue
                if chunk.token_ids:
                    return chunk.token_ids[0]
                continue
            if self.result is not None:
                raise StopIteration
            if not self._started:
                self._started = True
                self._batch.add(self._req)
            else:
                self._batch.step()

    def close(self) -> None:
        """Stop early: the result reports `cancelled`."""
        if self.result is None:
            self._req.cancelled = True
            if self._req in self._batch.active:
                self._batch.remove(self._req, "cancelled")
            else:
                self._req.finish("cancelled")


def generate_ids(model: Transformer, input_ids: Sequence[int] | Tensor, params: SamplingParams | None = None,
                 tokenizer: Any = None, max_len: int | None = None, **sampling: Any) -> Stream:
    """Stream the ids of a continuation of `input_ids` (greedy when temperature == 0).

    `sampling` holds `SamplingParams` fields (temperature, top_k, top_p, min_p, penalties, seed,
    max_new_tokens, stop_token_ids, truncate). A stop token ends generation and is not yielded.
    """
    params = SamplingParams.from_kwargs(params, **sampling)
    if isinstance(input_ids, Tensor):
        if input_ids.dim() == 2 and input_ids.shape[0] != 1:
            raise YunqueError(f"generate_ids takes one sequence, got a batch of {input_ids.shape[0]}; use generate_batch.")
        input_ids = input_ids.flatten().tolist()
    return Stream(model, tokenizer, input_ids, params, want_text=False, max_len=max_len)


def generate(model: Transformer, tokenizer: Any, prompt: str, params: SamplingParams | None = None,
             max_len: int | None = None, **sampling: Any) -> Stream:
    """Stream text pieces of a continuation of `prompt`, each made of complete UTF-8 characters.

    Stop strings end generation and are not emitted; text that could still be the start of one
    is held back until it is ruled out. `stream.result` has the finish reason, counts and timings.
    """
    params = SamplingParams.from_kwargs(params, **sampling)
    return Stream(model, tokenizer, prompt, params, want_text=True, max_len=max_len)


def generate_batch(model: Transformer, prompts: Sequence[str | Sequence[int]], params: SamplingParams | Sequence[SamplingParams] | None = None,
                   tokenizer: Any = None, max_len: int | None = None, **sampling: Any) -> list[GenerationResult]:
    """Generate for several prompts (of any lengths) decoded together; results in prompt order."""
    if params is None or isinstance(params, SamplingParams):
        params = [SamplingParams.from_kwargs(params, **sampling)] * len(prompts)
    elif sampling:
        raise YunqueError("Pass either a list of SamplingParams or sampling keywords, not both.")
    if len(params) != len(prompts):
        raise YunqueError(f"Got {len(params)} sampling settings for {len(prompts)} prompts; give one per prompt or one for all.")
    results: list[GenerationResult | None] = [None] * len(prompts)
    context = _context(model, max_len)
    reqs = [
        make_request(model, tokenizer, prompt, p, context, lambda chunk: None, lambda r, i=i: results.__setitem__(i, r))
        for i, (prompt, p) in enumerate(zip(prompts, params))
    ]
    batch = Batch(model, len(reqs), context, tokenizer)
    batch.add(*reqs)
    while batch.active:
        batch.step()
    return results  # type: ignore[return-value]
