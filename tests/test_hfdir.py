"""Reading HF model directories: JSON errors, config checks, index-aware weight files, header stats."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from yunque.errors import YunqueError
from yunque.fsutil import read_json
from yunque.model.hfdir import dtype_counts, header_stats, read_config, weight_files


def _shards(path: Path, names: dict[str, str]) -> None:
    """Write an index mapping tensor name -> shard file, and each shard file it names."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": names}))
    for tensor, shard in names.items():
        save_file({tensor: torch.zeros(2)}, str(path / shard))


def test_read_json_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(YunqueError, match=r"absent\.json is missing"):
        read_json(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(YunqueError, match=r"bad\.json is not valid JSON \(.*line 1"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(YunqueError, match=r"list\.json must hold a JSON object"):
        read_json(tmp_path / "list.json")
    with pytest.raises(YunqueError, match="cannot be read"):
        read_json(tmp_path)
    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert read_json(tmp_path / "ok.json") == {"a": 1}


def test_read_config_checks_the_directory_first(tmp_path: Path) -> None:
    with pytest.raises(YunqueError, match="does not exist"):
        read_config(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(YunqueError, match="is a file, not a model directory"):
        read_config(tmp_path / "file")
    with pytest.raises(YunqueError, match="has no config.json"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text('"llama"')
    with pytest.raises(YunqueError, match="must hold a JSON object"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    assert read_config(tmp_path) == {"model_type": "llama"}


def test_weight_files_follow_the_index_by_name(tmp_path: Path) -> None:
    _shards(tmp_path, {"b": "model-00002-of-00002.safetensors", "a": "model-00001-of-00002.safetensors", "c": "model-00001-of-00002.safetensors"})
    save_file({"x": torch.zeros(1)}, str(tmp_path / "adapter.safetensors"))  # not named by the index: not the model's
    assert [p.name for p in weight_files(tmp_path)] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def test_missing_shard_named_by_the_index_is_reported(tmp_path: Path) -> None:
    _shards(tmp_path, {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"})
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(YunqueError, match=r"missing weight shard\(s\) model-00002-of-00002\.safetensors named by model\.safetensors\.index\.json"):
        weight_files(tmp_path)


@pytest.mark.parametrize(
    "index, message",
    [({"metadata": {}}, "no weight_map"), ({"weight_map": {"a": 3}}, "no weight_map"), ({"weight_map": {"a": "../x.safetensors"}}, "not a file directly in the model directory")],
)
def test_an_unusable_index_is_refused(tmp_path: Path, index: dict, message: str) -> None:
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(YunqueError, match=message):
        weight_files(tmp_path)


def test_pickle_only_directory_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(YunqueError, match=r"only pickle weights \(pytorch_model\.bin\)"):
        weight_files(tmp_path)
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(YunqueError, match="has no safetensors weights"):
        weight_files(tmp_path)


def test_header_stats_count_parameters_without_loading_them(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(3, 4, dtype=torch.bfloat16), "b": torch.zeros(4)}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    assert header_stats(tmp_path) == (16, "BF16/F32")
    assert dtype_counts(tmp_path) == {"BF16": 12, "F32": 4}
    _shards(tmp_path / "sharded", {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"})
    assert header_stats(tmp_path / "sharded") == (4, "F32")


def test_a_damaged_or_truncated_file_is_named(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(8)}, str(file))
    whole = file.read_bytes()
    for data in (b"\x08\x00\x00\x00\x00\x00\x00\x00not json", b"\x02\x00\x00\x00\x00\x00\x00\x00[]", b"\x01", whole[:-4], whole + b"\x00"):
        file.write_bytes(data)
        with pytest.raises(YunqueError, match=re.escape(f"{file} is not a valid safetensors file")):
            header_stats(tmp_path)


def test_the_store_and_hfdir_import_without_torch() -> None:
    code = "import sys, yunque.store.entries, yunque.model.hfdir; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
