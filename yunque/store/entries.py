"""The local model store: named Hugging Face model directories under `~/.yunque`, Ollama style.

Layout (docs/architecture.md has the why):

    $YUNQUE_HOME/models/<namespace>/<model>/<tag>/     one complete HF model directory
        config.json  *.safetensors  tokenizer.json  tokenizer_config.json  generation_config.json ...
        modelfile.json                                 yunque's settings for this entry (see `ModelEntry`)

A name is `model`, `model:tag` or `namespace/model:tag`; the namespace defaults to `library`
and the tag to `latest`, as in Ollama. Entries derived from another (`create` FROM a store
model, `copy`) hard-link the base's files, so they cost no extra space and survive `delete`
of the base (a file's data lives while any link to it does). Files in the store are never
modified in place, which is what makes sharing them by hard link safe.

Every operation builds the new entry in a temporary sibling directory and renames it into
place, so a failure part-way leaves the store as it was.
"""

from __future__ import annotations

from copy import deepcopy
import datetime as dt
import functools
import hashlib
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from yunque.errors import YunqueError
from yunque.fsutil import atomic_dir, read_json, write_text_atomic
from yunque.model.hfdir import ADAPTER_DIR, ADAPTER_WEIGHTS, PICKLE_SUFFIXES, header_stats, read_config, weight_files
from yunque.store.chat import model_chat_settings
from yunque.store.modelfile import Modelfile, parse_modelfile
from yunque.text.chat_template import ChatSettings

SETTINGS_FILE = "modelfile.json"
STORE_FORMAT = 1
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
# Ollama's rules, lower-cased: a part starts with a letter or digit (so never "." or ".."),
# then letters, digits, "_", "-" and "."; a tag may also start with "_".
_PART = re.compile(r"[a-z0-9][a-z0-9_.-]{0,79}")
_TAG = re.compile(r"[a-z0-9_][a-z0-9_.-]{0,79}")
# What `Tokenizer.from_pretrained` reads (a SentencePiece tokenizer.model is not among them).
_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))


def store_root() -> Path:
    """The store's root: `$YUNQUE_HOME`, or `~/.yunque`."""
    return Path(os.environ.get("YUNQUE_HOME") or Path.home() / ".yunque").expanduser()


@dataclass(frozen=True)
class ModelName:
    """A validated model name; `str()` gives the short form (`model:tag`, or `ns/model:tag`)."""

    namespace: str
    model: str
    tag: str

    def __str__(self) -> str:
        base = self.model if self.namespace == DEFAULT_NAMESPACE else f"{self.namespace}/{self.model}"
        return f"{base}:{self.tag}"

    def path(self, root: Path | None = None) -> Path:
        return (root or store_root()) / "models" / self.namespace / self.model / self.tag


def parse_name(name: str) -> ModelName:
    """Validate and normalise a model name; anything that could leave the store is refused."""

    def bad(why: str) -> YunqueError:
        return YunqueError(
            f"Invalid model name {name!r}: {why}; use `model`, `model:tag` or `namespace/model:tag` "
            "with letters, digits, '_', '-' and '.' (starting with a letter or digit)."
        )

    if not isinstance(name, str) or not name.strip():
        raise bad("it is empty")
    for needle, why in (("\0", "it contains a NUL character"), ("\\", "it contains a backslash"), ("..", "it contains '..'")):
        if needle in name:
            raise bad(why)
    if name.startswith(("/", "~")):
        raise bad("it starts like a path (use `./dir` or a full path where a directory is meant)")
    text = name.strip().lower()
    base, sep, tag = text.partition(":")
    if sep and not tag:
        raise bad("the tag after ':' is empty")
    tag = tag or DEFAULT_TAG
    parts = base.split("/")
    if len(parts) > 2:
        raise bad("it has more than one '/'")
    namespace, model = parts if len(parts) == 2 else (DEFAULT_NAMESPACE, parts[0])
    for part in (namespace, model):
        if not _PART.fullmatch(part):
            raise bad(f"{part!r} is not a valid name part" if part else "a part is empty")
    if not _TAG.fullmatch(tag):
        raise bad(f"{tag!r} is not a valid tag")
    return ModelName(namespace, model, tag)


@dataclass
class ModelEntry:
    """One model: its directory (an HF layout) and the settings yunque keeps beside it.

    `name` is None for a plain directory used directly (see `resolve`).
    """

    name: ModelName | None
    path: Path
    settings: Modelfile
    digest: str = ""
    modified: str = ""
    size: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        return read_config(self.path)

    @property
    def short_id(self) -> str:
        """The first 12 hex digits of the weights digest, as `yunque list` shows it."""
        return self.digest.removeprefix("sha256:")[:12]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STORE_FORMAT,
            "name": str(self.name) if self.name else None,
            "modified": self.modified,
            "digest": self.digest,
            "size": self.size,
            "details": self.details,
            **self.settings.to_dict(),
        }


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def validate_model_dir(src: str | os.PathLike) -> Path:
    """Check that `src` looks like an HF model directory yunque can load; return it resolved.

    Needs a config.json of a supported family with well-typed values, safetensors weights with
    readable headers (all shards an index names) and tokenizer files yunque reads. Loading the
    weights is left to the caller.
    """
    path = Path(src).expanduser()
    if path.suffix.lower() == ".gguf":
        raise YunqueError(f"{src} is a GGUF file, which yunque does not load; use the model's Hugging Face directory (config.json + *.safetensors).")
    config = read_config(path)
    header_stats(path)  # every weight file present and whole; a bad one is named by its source path, before anything is copied
    if not any(all((path / f).is_file() for f in group) for group in _TOKENIZER_FILES):
        raise YunqueError(f"{src} has no tokenizer yunque reads (tokenizer.json, vocab.json + merges.txt, or encoder.json + vocab.bpe); save the tokenizer into the model directory.")
    from yunque.model.hf import config_from_hf  # imports torch: only paid when a directory is checked

    config_from_hf(config)
    return path.resolve()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def weights_digest(model_dir: Path) -> str:
    """sha256 of the `sha256sum`-style listing of the model's weight files (`<hex>  <name>` lines, by name).

    The files are model.safetensors or the shards its index names (`hfdir.weight_files`), so
    `sha256sum model*.safetensors | sha256sum` (C locale) in a usual directory gives the same hex.
    """
    listing = "".join(f"{_sha256(p)}  {p.name}\n" for p in weight_files(model_dir))
    return "sha256:" + hashlib.sha256(listing.encode()).hexdigest()


# config.json keys for the same quantity differ by family (GPT-2 names first, then Llama's).
_CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "max_seq_len")
_EMBEDDING_KEYS = ("n_embd", "hidden_size", "d_model")


def _details(model_dir: Path, parent: str | None) -> dict[str, Any]:
    config = read_config(model_dir)
    count, dtypes = header_stats(model_dir)
    return {
        "parent_model": parent or "",
        "format": "safetensors",
        "family": config.get("model_type") or "unknown",
        "parameter_count": count,
        "parameter_size": human_count(count),
        "quantization_level": dtypes,
        "context_length": next((config[k] for k in _CONTEXT_KEYS if k in config), None),
        "embedding_length": next((config[k] for k in _EMBEDDING_KEYS if k in config), None),
    }


def human_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link (no extra space); copy where the filesystem cannot link."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _importable(path: Path) -> bool:
    """Files that may run code when loaded (pickles) are never taken into the store."""
    return path.is_file() and not path.name.startswith(".") and path.suffix not in PICKLE_SUFFIXES and path.name != SETTINGS_FILE


def _write_entry(dest: ModelName, fill: Callable[[Path], None], settings: Modelfile, digest: str | None, parent: str | None) -> ModelEntry:
    """Build an entry in a temporary directory with `fill(tmp)`, write its settings, rename it into place."""
    path = dest.path()
    try:
        with atomic_dir(path, overwrite=True) as tmp:
            fill(tmp)
            entry = ModelEntry(
                name=dest,
                path=path,
                settings=settings,
                digest=digest or weights_digest(tmp),
                modified=_now(),
                size=_dir_size(tmp),
                details=_details(tmp, parent),
            )
            write_text_atomic(tmp / SETTINGS_FILE, json.dumps(entry.to_json(), indent=2) + "\n")
    except BaseException:
        _prune_empty_parents(path)
        raise
    return entry


def _prune_empty_parents(path: Path) -> None:
    """Remove the model and namespace folders above `path` if nothing else lives in them."""
    for parent in (path.parent, path.parent.parent):
        try:
            parent.rmdir()
        except OSError:
            break  # not empty: other tags or models live there


def import_model(src_dir: str | os.PathLike, name: str, force: bool = False) -> ModelEntry:
    """Copy an HF model directory into the store as `name`; an existing entry of that name is
    replaced (with its SYSTEM, TEMPLATE and parameters) only when `force` is set."""
    dest = parse_name(name)
    if not force and (dest.path() / SETTINGS_FILE).is_file():
        raise YunqueError(f"Model {dest} is already in the store; pass --force to replace it (its SYSTEM, TEMPLATE and parameters are lost) or choose another name.")
    src = validate_model_dir(src_dir)
    return _write_entry(dest, lambda tmp: _copy_files(src, tmp), Modelfile(from_=str(src)), None, str(src))


def _copy_files(src: Path, tmp: Path) -> None:
    _carry(src, tmp, shutil.copy2)


def _link_files(src: Path, tmp: Path) -> None:
    _carry(src, tmp, _link_or_copy)


def _carry(src: Path, tmp: Path, put: Callable[[Path, Path], Any]) -> None:
    """The model's files (and its adapter's, if it carries one) from `src` into `tmp` by `put`."""
    for folder, into in ((src, tmp), (src / ADAPTER_DIR, tmp / ADAPTER_DIR)):
        if folder.is_dir():
            into.mkdir(exist_ok=True)
            for p in sorted(folder.iterdir()):
                if _importable(p):
                    put(p, into / p.name)


def _adapter_digest(model_digest: str, adapter: Path) -> str:
    """An adapted model's ID covers the base's weights and the adapter's."""
    return "sha256:" + hashlib.sha256(f"{model_digest}\n{_sha256(adapter / ADAPTER_WEIGHTS)}  adapter\n".encode()).hexdigest()


def _load_entry(name: ModelName, path: Path) -> ModelEntry:
    data = read_json(path / SETTINGS_FILE)
    try:
        settings = Modelfile.from_dict(data)
    except KeyError:
        raise YunqueError(f"{path / SETTINGS_FILE} lacks its FROM entry; remove the model with `yunque rm {name}` and create it again.") from None
    return ModelEntry(name, path, settings, data.get("digest", ""), data.get("modified", ""), data.get("size", 0), data.get("details", {}))


def require(name: str) -> ModelName:
    """The normalised name of an entry in the store, without reading its settings."""
    parsed = parse_name(name)
    if not (parsed.path() / SETTINGS_FILE).is_file():
        raise YunqueError(f"Model {parsed} is not in the store; see `yunque list`, or add it with `yunque import` or `yunque create`.")
    return parsed


def get(name: str) -> ModelEntry:
    """The store entry called `name` (read once per version of the entry: see `_version`)."""
    parsed = require(name)
    return deepcopy(_entry_at(parsed, parsed.path(), _version(parsed.path())))


def _version(path: Path) -> tuple[int, int, int]:
    """Which version of an entry lies at `path`. Files in the store are never modified in place:
    every write builds a new entry directory and renames it over the old one, so a new version
    always has a new settings file (another inode and modification time). A server can then
    read an entry's files once, not at every request."""
    st = (path / SETTINGS_FILE).stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=64)
def _entry_at(name: ModelName, path: Path, version: tuple[int, int, int]) -> ModelEntry:
    return _load_entry(name, path)


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~", ".\\", "..\\")) or text in (".", "..") or "\\" in text or os.path.isabs(text)


def resolve(name_or_path: str, base_dir: str | os.PathLike | None = None) -> ModelEntry:
    """A store entry by name, or a plain model directory (relative paths against `base_dir`).

    Text that starts like a path (`/`, `./`, `../`, `~`) is always a directory; otherwise a
    store name wins over a directory of the same name.
    """
    text = name_or_path.strip()
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if not _looks_like_path(text):
        try:
            parsed = parse_name(text)
        except YunqueError:
            parsed = None
        if parsed and (parsed.path() / SETTINGS_FILE).is_file():
            return _load_entry(parsed, parsed.path())
        if not (base / text).is_dir():
            if parsed:
                raise YunqueError(f"Model {parsed} is not in the store and {base / text} is not a directory; see `yunque list`.")
            raise YunqueError(f"{text!r} is neither a model name in the store nor a directory; see `yunque list`.")
    path = validate_model_dir(base / Path(text).expanduser())
    settings = _load_entry(None, path).settings if (path / SETTINGS_FILE).is_file() else Modelfile(from_=str(path))
    return ModelEntry(None, path, settings, size=_dir_size(path), details=_details(path, None))


def create(name: str, modelfile_text: str, base_dir: str | os.PathLike | None = None) -> ModelEntry:
    """Create `name` from Modelfile text; FROM paths are relative to `base_dir` (the Modelfile's folder).

    Settings not given in the Modelfile are inherited from a store base; parameters merge key by key.
    """
    dest = parse_name(name)
    mf = parse_modelfile(modelfile_text)
    base = resolve(mf.from_, base_dir)
    inherited = base.settings
    settings = Modelfile(
        from_=str(base.name) if base.name else str(base.path),
        parameters={**inherited.parameters, **mf.parameters},
        system=mf.system if mf.system is not None else inherited.system,
        template=mf.template if mf.template is not None else inherited.template,
        messages=mf.messages or inherited.messages,
        license=mf.license or inherited.license,
        adapter=inherited.adapter,
    )
    _check_template(ModelEntry(dest, base.path, settings))
    adapter = _adapter_source(mf, base, base_dir)
    if adapter is None:
        if base.name:
            return _write_entry(dest, lambda tmp: _link_files(base.path, tmp), settings, base.digest, settings.from_)
        return _write_entry(dest, lambda tmp: _copy_files(base.path, tmp), settings, None, settings.from_)
    settings.adapter = str(adapter)

    def fill(tmp: Path) -> None:
        (_link_files if base.name else _copy_files)(base.path, tmp)
        _copy_files(adapter, tmp / ADAPTER_DIR)

    digest = _adapter_digest(base.digest or weights_digest(base.path), adapter)
    return _write_entry(dest, fill, settings, digest, settings.from_)


def _adapter_source(mf: Modelfile, base: ModelEntry, base_dir: str | os.PathLike | None) -> Path | None:
    """The adapter directory a Modelfile's ADAPTER names, checked against the base (None without one)."""
    if mf.adapter is None:
        return None
    if (base.path / ADAPTER_DIR).is_dir():
        raise YunqueError(f"{base.name or base.path} already carries an adapter; merge it first (`yunque merge`) to put another on top.")
    adapter = (Path(base_dir) if base_dir is not None else Path.cwd()) / Path(mf.adapter).expanduser()
    if not adapter.is_dir():
        raise YunqueError(f"ADAPTER {mf.adapter}: {adapter} is not a directory; give the directory of a LoRA adapter (adapter_config.json and adapter_model.safetensors).")
    from yunque.model.lora import check_adapter  # torch, only when an adapter is given

    check_adapter(base.path, adapter)
    return adapter.resolve()


def chat_settings(model: ModelEntry | str | os.PathLike) -> ChatSettings:
    """The effective chat template, system prompt, parameters and stop strings of a store entry,
    a store name or a model directory (see `yunque.store.chat.model_chat_settings`)."""
    entry = model if isinstance(model, ModelEntry) else resolve(str(model))
    if entry.name is None or not (entry.path / SETTINGS_FILE).is_file():
        return model_chat_settings(entry.path, entry.settings)  # a plain directory: its files may change in place
    version = _version(entry.path)
    cached = _CHAT_SETTINGS.get(entry.path)
    if cached is None or cached[0] != version or cached[1] != entry.settings:
        cached = (version, deepcopy(entry.settings), model_chat_settings(entry.path, entry.settings))
        _CHAT_SETTINGS[entry.path] = cached
    return deepcopy(cached[2])


# Store entry directory -> (its version, the Modelfile settings used, the chat settings they give).
_CHAT_SETTINGS: dict[Path, tuple[tuple[int, int, int], Modelfile, ChatSettings]] = {}


def _check_template(entry: ModelEntry) -> None:
    """Render the entry's effective template once, so a broken TEMPLATE is refused at create time."""
    chat_settings(entry).render([{"role": "user", "content": "Hello"}])


def copy(src: str, dst: str) -> ModelEntry:
    """Copy `src` to `dst` (hard links: no extra space); an existing `dst` is replaced."""
    dest = parse_name(dst)  # a bad destination is reported before a missing source
    entry = get(src)
    if dest == entry.name:
        raise YunqueError(f"Cannot copy {entry.name} onto itself; choose another destination name.")
    return _write_entry(dest, lambda tmp: _link_files(entry.path, tmp), entry.settings, entry.digest, entry.details.get("parent_model"))


def delete(name: str) -> None:
    """Remove `name` from the store; models derived from it keep working (their files are links).

    The settings are not read, so a damaged entry can still be removed.
    """
    path = require(name).path()
    trash = path.with_name(f".{path.name}.deleting-{os.getpid()}")
    os.replace(path, trash)  # one rename: the entry is gone at once, whatever happens next
    shutil.rmtree(trash, ignore_errors=True)
    _prune_empty_parents(path)


def export_model(name: str, dest_dir: str | os.PathLike, force: bool = False, adapter_only: bool = False) -> Path:
    """Copy store entry `name` out to `dest_dir` as a plain Hugging Face directory (without
    yunque's modelfile.json), atomically; a non-empty `dest_dir` is replaced only with `force`.
    An entry with an adapter exports merged, or (`adapter_only`) as its PEFT adapter alone."""
    entry = get(name)
    adapter = entry.path / ADAPTER_DIR
    if adapter_only and not adapter.is_dir():
        raise YunqueError(f"{entry.name} carries no adapter; export it without --adapter-only.")
    dest = Path(dest_dir).expanduser()
    if dest.exists() and not dest.is_dir():
        raise YunqueError(f"{dest} is a file; give a directory to export {entry.name} into.")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise YunqueError(f"{dest} is not empty; pass --force to replace its contents or choose an empty directory.")
    if adapter.is_dir() and not adapter_only:
        from yunque.model.lora import merge_to_directory  # torch, only for an adapted model

        return merge_to_directory(entry.path, adapter, dest, force=True)
    with atomic_dir(dest, overwrite=True) as tmp:
        _copy_files(adapter if adapter_only else entry.path, tmp)
    return dest


def list_models() -> list[ModelEntry]:
    """All store entries, most recently modified first; a damaged entry is skipped with a warning."""
    models = store_root() / "models"
    entries = []
    for path in models.glob("*/*/*/" + SETTINGS_FILE):
        ns, model, tag = path.parent.relative_to(models).parts
        if any(part.startswith(".") for part in (ns, model, tag)):
            continue  # a build or a delete in progress
        try:
            name = parse_name(f"{ns}/{model}:{tag}")
        except YunqueError:
            continue  # not made by yunque
        try:
            entries.append(_load_entry(name, path.parent))
        except YunqueError as e:
            warnings.warn(f"Skipping {name}: {e}", stacklevel=2)
    return sorted(entries, key=lambda e: e.modified, reverse=True)
