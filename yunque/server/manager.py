"""The model manager: loads store models on demand, keeps them warm, unloads idle ones.

Each loaded model owns one continuous-batching scheduler (`yunque.infer.engine.Engine`), so every
request for that model, from any client, is decoded in the same batch. A model stays
loaded for `keep_alive` seconds after its last request finishes (Ollama's rule: default
5 minutes, 0 unloads at once, negative keeps it forever); a model in use is never
unloaded under a running request. Loading runs in a worker thread so the event loop keeps
serving other models while weights are read. All methods run on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from yunque.server.errors import ModelNotFound
from yunque.server.runner import Runner
from yunque.server.settings import DEFAULT_KEEP_ALIVE
from yunque.store import entries as store

T = TypeVar("T")

log = logging.getLogger("yunque.server")


@dataclass
class LoadedModel:
    name: str
    entry: store.ModelEntry
    runner: Runner
    load_duration: float  # seconds it took to load
    keep_alive: float
    expires_at: float  # wall-clock time; math.inf while in use with a negative keep_alive
    active: int = 0
    last_used: float = field(default_factory=time.monotonic)

    @property
    def tokenizer(self) -> Any:
        return self.runner.tokenizer

    @property
    def scheduler(self) -> Any:
        return self.runner.scheduler


def lookup(name: str) -> store.ModelEntry:
    """The store entry for `name`; an unknown name is a 404, a malformed one a 400."""
    parsed = store.parse_name(name)
    if not (parsed.path() / store.SETTINGS_FILE).is_file():
        raise ModelNotFound(str(parsed))
    return store.get(name)


class ModelManager:
    """Loaded models by store name, each with its own scheduler and keep-alive timer."""

    def __init__(
        self,
        loader: Callable[[store.ModelEntry], Runner],
        default_keep_alive: float = DEFAULT_KEEP_ALIVE,
        max_loaded: int = 3,
        reap_interval: float = 1.0,
    ) -> None:
        self._loader = loader
        self.default_keep_alive = default_keep_alive
        self.max_loaded = max_loaded
        self._reap_interval = reap_interval
        self._models: dict[str, LoadedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._reaper: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._loading = 0  # models being loaded: they hold a place under max_loaded
        self._room = asyncio.Event()  # set whenever a model goes idle or leaves: waiters look again

    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_forever())

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for name in list(self._models):
            await self._unload(name)

    def running(self) -> list[LoadedModel]:
        """Loaded models, the most recently used first."""
        return sorted(self._models.values(), key=lambda m: m.last_used, reverse=True)

    async def acquire_for(self, name: str, build: Callable[[LoadedModel], T], keep_alive: float | None = None) -> tuple[LoadedModel, float, T]:
        """`acquire`, then `build(lm)` (render and encode the request, in a worker thread: a long
        prompt is CPU work no stream should wait for); the model is released if building fails."""
        lm, load_seconds = await self.acquire(name, keep_alive)
        try:
            return lm, load_seconds, await asyncio.to_thread(build, lm)
        except BaseException:
            self.release(lm)
            raise

    def get_loaded(self, name: str) -> LoadedModel | None:
        return self._models.get(str(store.parse_name(name)))

    async def acquire(self, name: str, keep_alive: float | None = None) -> tuple[LoadedModel, float]:
        """The loaded model called `name` (loading it if needed), marked in use; and the seconds spent loading.

        Every `acquire` must be paired with one `release`.
        """
        entry = await asyncio.to_thread(lookup, name)  # reads the store's files
        key = str(entry.name)
        lock = self._locks.setdefault(key, asyncio.Lock())
        load_seconds = 0.0
        async with lock:
            lm = self._models.get(key)
            if lm is not None and lm.entry.digest != entry.digest and lm.active == 0:
                # The store entry changed (re-imported or re-created) since it was loaded.
                await self._unload(key)
                lm = None
            if lm is None:
                await self._make_room()
                t0 = time.perf_counter()
                try:
                    runner = await asyncio.to_thread(self._loader, entry)
                finally:
                    self._loading -= 1
                    self._room.set()
                load_seconds = time.perf_counter() - t0
                ka = self.default_keep_alive if keep_alive is None else keep_alive
                lm = LoadedModel(key, entry, runner, load_seconds, ka, math.inf)
                self._models[key] = lm
                log.info("loaded %s on %s in %.2fs", key, runner.device, load_seconds)
        if keep_alive is not None:
            lm.keep_alive = keep_alive
        lm.active += 1
        lm.last_used = time.monotonic()
        lm.expires_at = time.time() + lm.keep_alive
        return lm, load_seconds

    def release(self, lm: LoadedModel) -> None:
        """The request using `lm` is done; start its keep-alive timer (or unload it now if that is 0).

        Not a coroutine, so it also runs from a cancelled streaming response's cleanup; the
        unload itself is a task of its own.
        """
        lm.active -= 1
        lm.last_used = time.monotonic()
        lm.expires_at = time.time() + lm.keep_alive
        if lm.active == 0:
            self._room.set()
        if lm.active == 0 and lm.keep_alive <= 0 and self._models.get(lm.name) is lm:
            task = asyncio.get_running_loop().create_task(self._unload(lm.name))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def unload(self, name: str) -> bool:
        """Unload `name` now if idle, else as soon as its running requests end. False if it was not loaded."""
        lm = self.get_loaded(name)
        if lm is None:
            return False
        lm.keep_alive = 0.0
        if lm.active == 0:
            await self._unload(lm.name)
        return True

    async def _make_room(self) -> None:
        """Take a place under max_loaded for one more model: unload the least recently used idle
        model while at capacity, and while every loaded model is busy, wait for one to go idle
        (busy models are never evicted). The caller gives the place back when its load ends."""
        while len(self._models) + self._loading >= self.max_loaded:
            idle = [m for m in self._models.values() if m.active == 0]
            if idle:
                await self._unload(min(idle, key=lambda m: m.last_used).name)
                continue
            self._room.clear()
            await self._room.wait()
        self._loading += 1

    async def _unload(self, name: str) -> None:
        lm = self._models.pop(name, None)
        if lm is None:
            return
        self._room.set()
        await asyncio.to_thread(lm.runner.scheduler.shutdown)
        device = lm.runner.device
        del lm
        gc.collect()
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
        log.info("unloaded %s", name)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._reap_interval)
            now = time.time()
            for lm in list(self._models.values()):
                if lm.active == 0 and lm.expires_at <= now:
                    await self._unload(lm.name)
