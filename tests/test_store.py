"""The local model store: names, import, create, copy, delete, list, resolve; atomic and link-sharing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from store_fakes import make_hf_dir

from yunque.store import entries as store
from yunque.errors import YunqueError
from yunque.store.entries import ModelName, parse_name


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    return make_hf_dir(tmp_path / "src")


def _entries() -> list[str]:
    return [str(e.name) for e in store.list_models()]


def _store_snapshot() -> list[str]:
    root = store.store_root()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize(
    "text, expected",
    [
        ("tiny", ModelName("library", "tiny", "latest")),
        ("Tiny:V1", ModelName("library", "tiny", "v1")),
        ("me/tiny-2.5b_x:q4_0", ModelName("me", "tiny-2.5b_x", "q4_0")),
        ("library/tiny", ModelName("library", "tiny", "latest")),
    ],
)
def test_names_normalise_like_ollama(text: str, expected: ModelName) -> None:
    assert parse_name(text) == expected
    assert parse_name(str(expected)) == expected


@pytest.mark.parametrize(
    "bad",
    ["", "  ", "..", "../x", "a/../b", "x:..", "/etc/passwd", "~/x", "a\\b", "a\0b", "a/b/c", "a//b", "/a", "a/", ":tag", "a:", "a:b:c", ".hidden", "-dash", "sp ace", "x" * 81, "a/.b"],
)
def test_names_that_could_escape_or_are_malformed_are_refused(bad: str) -> None:
    with pytest.raises(YunqueError, match="Invalid model name"):
        parse_name(bad)


def test_every_accepted_name_stays_inside_the_store() -> None:
    root = store.store_root().resolve()
    for text in ["a", "a.b-c_d:e.f", "ns/m:t", "9/9:9"]:
        path = parse_name(text).path().resolve()
        assert root in path.parents


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from("aZ09_-.:/\\~ \0"), max_size=12) | st.text(max_size=12))
def test_any_text_is_refused_or_maps_inside_the_store(text: str) -> None:
    root = store.store_root()
    try:
        name = parse_name(text)
    except YunqueError:
        return
    rel = name.path(root).relative_to(root)
    assert rel.parts[0] == "models" and len(rel.parts) == 4
    assert all(p not in ("", ".", "..") and not p.startswith(".") for p in rel.parts)
    assert parse_name(str(name)) == name


def test_store_root_follows_yunque_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("YUNQUE_HOME", str(tmp_path / "elsewhere"))
    assert parse_name("a").path() == tmp_path / "elsewhere" / "models" / "library" / "a" / "latest"
    monkeypatch.delenv("YUNQUE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert store.store_root() == tmp_path / ".yunque"


def test_import_copies_files_and_records_digest(hf_dir: Path) -> None:
    (hf_dir / "pytorch_model.bin").write_bytes(b"pickle")  # never taken into the store
    entry = store.import_model(hf_dir, "tiny")
    assert str(entry.name) == "tiny:latest"
    assert entry.path == store.store_root() / "models" / "library" / "tiny" / "latest"
    names = {p.name for p in entry.path.iterdir()}
    assert names == {"config.json", "model.safetensors", "tokenizer.json", "modelfile.json"}
    listing = f"{hashlib.sha256((hf_dir / 'model.safetensors').read_bytes()).hexdigest()}  model.safetensors\n"
    assert entry.digest == "sha256:" + hashlib.sha256(listing.encode()).hexdigest()
    assert entry.details["family"] == "llama"
    assert entry.details["parameter_count"] == 2 * 64 * 8
    assert entry.details["quantization_level"] == "F32"
    got = store.get("TINY:latest")
    assert got.digest == entry.digest and got.size == entry.size > 4096
    assert json.loads((entry.path / "modelfile.json").read_text())["name"] == "tiny:latest"


def test_import_sharded_checkpoint(tmp_path: Path) -> None:
    src = make_hf_dir(tmp_path / "sharded", shards=2)
    entry = store.import_model(src, "ns/sharded:v1")
    shards = sorted(entry.path.glob("model-*.safetensors"))
    assert len(shards) == 2
    listing = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in shards)
    assert entry.digest == "sha256:" + hashlib.sha256(listing.encode()).hexdigest()
    assert entry.details["parameter_count"] == 2 * 64 * 8
    (src / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(YunqueError, match="missing weight shard"):
        store.import_model(src, "broken")


@pytest.mark.parametrize(
    "remove, message",
    [("config.json", "has no config.json"), ("model.safetensors", "has no safetensors weights"), ("tokenizer.json", "no tokenizer")],
)
def test_import_validates_the_source(hf_dir: Path, remove: str, message: str) -> None:
    (hf_dir / remove).unlink()
    with pytest.raises(YunqueError, match=message):
        store.import_model(hf_dir, "tiny")
    assert _entries() == []


def test_import_rejects_missing_dir_and_bad_config(tmp_path: Path, hf_dir: Path) -> None:
    with pytest.raises(YunqueError, match="does not exist"):
        store.import_model(tmp_path / "nope", "tiny")
    with pytest.raises(YunqueError, match="is a file, not a model directory"):
        store.import_model(hf_dir / "config.json", "tiny")
    (hf_dir / "config.json").write_text("{not json")
    with pytest.raises(YunqueError, match="not valid JSON"):
        store.import_model(hf_dir, "tiny")


def test_failure_mid_import_leaves_the_store_unchanged(hf_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store.import_model(hf_dir, "tiny")
    before = _store_snapshot()
    old_digest = store.get("tiny").digest
    real_copy = shutil.copy2

    def failing_copy(src, dst, *a, **k):
        if Path(src).name == "tokenizer.json":
            raise OSError("disk full")
        return real_copy(src, dst, *a, **k)

    monkeypatch.setattr(store.shutil, "copy2", failing_copy)
    make_hf_dir(hf_dir, seed=1)  # new weights: a successful import would change the digest
    for name in ("tiny", "other"):
        with pytest.raises(OSError, match="disk full"):
            store.import_model(hf_dir, name, force=True)
    assert _store_snapshot() == before
    assert store.get("tiny").digest == old_digest


def test_failure_mid_create_leaves_no_entry(hf_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store.import_model(hf_dir, "base")
    before = _store_snapshot()

    def failing_link(src, dst, *a, **k):
        raise PermissionError("no links")

    monkeypatch.setattr(store.os, "link", failing_link)
    monkeypatch.setattr(store.shutil, "copy2", failing_link)
    with pytest.raises(PermissionError):
        store.create("derived", "FROM base\nPARAMETER temperature 0.1\n")
    assert _store_snapshot() == before
    assert _entries() == ["base:latest"]


def test_derived_create_shares_weights_and_survives_rm_of_base(hf_dir: Path) -> None:
    base = store.import_model(hf_dir, "base")
    derived = store.create("pirate", 'FROM base\nPARAMETER temperature 0.2\nSYSTEM """Talk like a pirate."""\n')
    a, b = base.path / "model.safetensors", derived.path / "model.safetensors"
    assert os.path.samefile(a, b)  # one inode: no copy of the weights
    assert derived.digest == base.digest
    assert derived.settings.from_ == "base:latest"
    assert derived.settings.system == "Talk like a pirate."
    weights = b.read_bytes()
    store.delete("base")
    assert _entries() == ["pirate:latest"]
    survivor = store.get("pirate")
    assert (survivor.path / "model.safetensors").read_bytes() == weights
    assert store.weights_digest(survivor.path) == survivor.digest


def test_create_inherits_and_overrides_settings(hf_dir: Path) -> None:
    store.import_model(hf_dir, "base")
    store.create("one", 'FROM base\nPARAMETER temperature 0.2\nPARAMETER stop "<|end|>"\nSYSTEM be nice\nLICENSE MIT\n')
    two = store.create("two", "FROM one\nPARAMETER top_k 5\nPARAMETER temperature 0.9\n")
    assert two.settings.parameters == {"temperature": 0.9, "stop": ["<|end|>"], "top_k": 5}
    assert two.settings.system == "be nice" and two.settings.license == ["MIT"]


def test_create_from_a_directory_relative_to_the_modelfile(tmp_path: Path, hf_dir: Path) -> None:
    entry = store.create("fromdir", "FROM ./src\nPARAMETER seed 7\n", base_dir=tmp_path)
    assert entry.settings.from_ == str(hf_dir.resolve())
    assert entry.settings.parameters == {"seed": 7}
    with pytest.raises(YunqueError, match="not in the store"):
        store.create("x", "FROM missing\n", base_dir=tmp_path)
    with pytest.raises(YunqueError, match="does not exist"):
        store.create("x", "FROM ./missing\n", base_dir=tmp_path)
    with pytest.raises(YunqueError, match="GGUF"):
        store.create("x", "FROM ./model.Q4_K_M.gguf\n", base_dir=tmp_path)


def test_copy_and_list(hf_dir: Path) -> None:
    store.import_model(hf_dir, "tiny")
    copied = store.copy("tiny", "me/tiny:v2")
    assert os.path.samefile(copied.path / "model.safetensors", store.get("tiny").path / "model.safetensors")
    listed = {str(e.name): e for e in store.list_models()}
    assert set(listed) == {"tiny:latest", "me/tiny:v2"}
    assert listed["me/tiny:v2"].digest == listed["tiny:latest"].digest
    assert listed["me/tiny:v2"].short_id == listed["tiny:latest"].digest[7:19]
    with pytest.raises(YunqueError, match="onto itself"):
        store.copy("tiny", "tiny:latest")
    with pytest.raises(YunqueError, match="not in the store"):
        store.copy("nope", "x")


def test_delete_removes_entry_and_empty_folders(hf_dir: Path) -> None:
    store.import_model(hf_dir, "ns/a:1")
    store.import_model(hf_dir, "ns/a:2")
    store.delete("ns/a:1")
    assert _entries() == ["ns/a:2"]
    store.delete("ns/a:2")
    assert not (store.store_root() / "models" / "ns").exists()
    with pytest.raises(YunqueError, match="not in the store"):
        store.delete("ns/a:2")


def test_resolve_prefers_store_names_and_accepts_directories(tmp_path: Path, hf_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    by_dir = store.resolve("src")
    assert by_dir.name is None and by_dir.path == hf_dir.resolve()
    store.import_model(hf_dir, "src")
    assert str(store.resolve("src").name) == "src:latest"
    assert store.resolve("./src").name is None
    with pytest.raises(YunqueError, match="neither a model name"):
        store.resolve("no such thing!")


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    from yunque.cli.app import main

    monkeypatch.setattr("sys.argv", ["yunque", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_cli_store_verbs(tmp_path: Path, hf_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert _cli(monkeypatch, capsys, "import", str(hf_dir), "tiny")[0] == 0
    (tmp_path / "Modelfile").write_text('FROM tiny\nPARAMETER temperature 0.3\nSYSTEM """Be a pirate."""\nLICENSE MIT\n')
    assert _cli(monkeypatch, capsys, "create", "pirate", "-f", "Modelfile")[0] == 0
    assert _cli(monkeypatch, capsys, "cp", "pirate", "me/pirate:v2")[0] == 0
    code, out, _ = _cli(monkeypatch, capsys, "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    digest = store.get("tiny").short_id
    assert sorted(line.split()[:2] for line in lines[1:]) == sorted([["me/pirate:v2", digest], ["pirate:latest", digest], ["tiny:latest", digest]])
    code, out, _ = _cli(monkeypatch, capsys, "show", "pirate", "--modelfile")
    assert code == 0 and "FROM pirate:latest" in out and 'SYSTEM """Be a pirate."""' in out
    (tmp_path / "Again").write_text(out)  # show --modelfile output is itself a valid Modelfile
    assert _cli(monkeypatch, capsys, "create", "again", "-f", "Again")[0] == 0
    assert store.get("again").settings.system == "Be a pirate."
    assert _cli(monkeypatch, capsys, "show", "pirate", "--parameters")[1].split() == ["temperature", "0.3", "stop", '"<|end|>"']
    assert _cli(monkeypatch, capsys, "show", "pirate", "--system")[1] == "Be a pirate.\n"
    assert _cli(monkeypatch, capsys, "show", "pirate", "--license")[1] == "MIT\n"
    assert "<|assistant|>" in _cli(monkeypatch, capsys, "show", "pirate", "--template")[1]
    out = _cli(monkeypatch, capsys, "show", "pirate")[1]
    assert "architecture        llama" in out and "Be a pirate." in out
    code, _, err = _cli(monkeypatch, capsys, "rm", "tiny", "nope")
    assert code == 1 and "nope:latest is not in the store" in err and "Traceback" not in err
    assert store.get("tiny")  # nothing removed when one name is wrong
    assert _cli(monkeypatch, capsys, "rm", "tiny", "pirate")[0] == 0
    assert sorted(_entries()) == ["again:latest", "me/pirate:v2"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["import", "nowhere", "x"], "Model directory nowhere does not exist"),
        (["create", "x", "-f", "missing"], "Cannot read the Modelfile"),
        (["cp", "a", "../b"], "Invalid model name"),
        (["show", "x", "--system", "--license"], "at most one"),
    ],
)
def test_cli_errors_are_one_sentence_exit_1(args: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    code, _, err = _cli(monkeypatch, capsys, *args)
    assert code == 1 and message in " ".join(err.split()) and "Traceback" not in err


def test_create_can_replace_its_own_base(hf_dir: Path) -> None:
    base = store.import_model(hf_dir, "tiny")
    weights = (base.path / "model.safetensors").read_bytes()
    again = store.create("tiny", "FROM tiny\nPARAMETER temperature 0.4\n")
    assert again.settings.parameters == {"temperature": 0.4}
    assert (again.path / "model.safetensors").read_bytes() == weights
    assert _entries() == ["tiny:latest"]


def test_a_damaged_entry_is_skipped_by_list_and_can_be_deleted(hf_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    store.import_model(hf_dir, "good")
    bad = store.import_model(hf_dir, "bad")
    (bad.path / store.SETTINGS_FILE).write_text("{not json")
    with pytest.warns(UserWarning, match="bad:latest"):
        assert [str(e.name) for e in store.list_models()] == ["good:latest"]
    with pytest.warns(UserWarning, match="bad:latest"):
        code, out, _ = _cli(monkeypatch, capsys, "list")
    assert code == 0 and "good:latest" in out
    assert _cli(monkeypatch, capsys, "rm", "bad")[0] == 0
    assert _entries() == ["good:latest"]


@pytest.mark.parametrize(
    "config_changes, message",
    [({"model_type": "bert"}, "Unsupported model_type 'bert'"), ({"num_hidden_layers": "2"}, "n_layer must be an integer, got '2'")],
)
def test_import_refuses_configs_yunque_cannot_load(hf_dir: Path, config_changes: dict, message: str) -> None:
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, **config_changes}))
    with pytest.raises(YunqueError, match=message):
        store.import_model(hf_dir, "tiny")
    assert _entries() == []


def test_import_names_a_damaged_source_weight_file(hf_dir: Path) -> None:
    (hf_dir / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(YunqueError) as info:
        store.import_model(hf_dir, "tiny")
    assert str(hf_dir / "model.safetensors") in str(info.value) and _entries() == []


def test_import_refuses_a_tokenizer_yunque_cannot_read(hf_dir: Path) -> None:
    (hf_dir / "tokenizer.json").rename(hf_dir / "tokenizer.model")
    with pytest.raises(YunqueError, match="no tokenizer yunque reads"):
        store.import_model(hf_dir, "tiny")


@pytest.mark.parametrize("template, message", [("{% if %}", "template"), ("{{ .Nope }}", ".Nope")])
def test_create_refuses_a_template_that_cannot_render(hf_dir: Path, template: str, message: str) -> None:
    store.import_model(hf_dir, "tiny")
    with pytest.raises(YunqueError, match=message):
        store.create("broken", f'FROM tiny\nTEMPLATE """{template}"""\n')
    assert _entries() == ["tiny:latest"]


def test_rm_of_the_same_model_twice_removes_it_once(hf_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    store.import_model(hf_dir, "pirate")
    code, out, err = _cli(monkeypatch, capsys, "rm", "pirate", "pirate:latest", "PIRATE")
    assert (code, out, err) == (0, "deleted pirate:latest\n", "") and _entries() == []


def test_import_refuses_to_replace_an_entry_unless_forced(hf_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    store.import_model(hf_dir, "tiny")
    store.create("tiny", "FROM tiny\nSYSTEM Be a pirate.\n")
    code, _, err = _cli(monkeypatch, capsys, "import", str(hf_dir), "tiny")
    assert code == 1 and "tiny:latest is already in the store; pass --force" in " ".join(err.split())
    assert store.get("tiny").settings.system == "Be a pirate."
    assert _cli(monkeypatch, capsys, "import", str(hf_dir), "tiny", "--force")[0] == 0
    assert store.get("tiny").settings.system is None


def test_export_writes_a_loadable_hugging_face_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from serving import make_tiny_model

    from yunque.model.transformer import Transformer

    src = make_tiny_model(tmp_path / "src", d_model=32, n_layer=1, max_seq_len=32, vocab_size=300)
    store.import_model(src, "tiny")
    out = tmp_path / "out"
    assert _cli(monkeypatch, capsys, "export", "tiny", str(out))[0] == 0
    assert not (out / store.SETTINGS_FILE).exists()
    assert (out / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert Transformer.from_pretrained(out).config == Transformer.from_pretrained(src).config
    code, _, err = _cli(monkeypatch, capsys, "export", "tiny", str(out))
    assert code == 1 and "is not empty; pass --force" in " ".join(err.split())
    assert _cli(monkeypatch, capsys, "export", "tiny", str(out), "--force")[0] == 0
    assert not list(tmp_path.glob(".out.*"))  # no temporary directory left behind


def test_entries_are_read_once_per_version_and_a_new_version_is_seen(hf_dir: Path) -> None:
    """The server asks for an entry and its chat settings at every request; they are read from
    disk once per version of the entry (each write is a new directory), never stale."""
    store.import_model(hf_dir, "tiny")
    store.create("a", "FROM tiny\nSYSTEM one\n")
    first = store.chat_settings("a")
    assert first.system == "one" and store.get("a").settings.system == "one"
    first.system = "changed by a caller"
    store.get("a").settings.system = "changed too"
    assert store.chat_settings("a").system == "one" and store.get("a").settings.system == "one"
    store.create("a", "FROM tiny\nSYSTEM two\n")
    assert store.chat_settings("a").system == "two" and store.get("a").settings.system == "two"
