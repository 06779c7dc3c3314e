"""Pretraining: exact resume, kill safety, Ctrl-C checkpoints, torchrun parity, bad input, metrics, bpb.

Everything runs on a tiny model (2 layers, width 32) over synthetic text made here, so the
tests need no shared data and each training run takes a second or two.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from yunque.train.checkpoint import latest_checkpoint, list_checkpoints, load_weights, read_state
from yunque.train.config import TrainConfig
from yunque.text.shards import TokenShards, prepare
from yunque.errors import YunqueError
from yunque.model.transformer import Transformer
from yunque.text.tokenizer import Tokenizer
from yunque.train.loop import resolve_config, train
from yunque.train.metrics import read_metrics
from yunque.train.objectives import NextToken, evaluate, model_config
from yunque.train.schedule import lr_at

TINY = {"n_layer": 2, "d_model": 32, "n_head": 2, "n_kv_head": 2, "d_ff": 64}
WORDS = "the king queen lord love death night day sword crown heart blood fair sweet good my thy and of to".split()


def _text(seed: int, lines: int) -> str:
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "." for _ in range(lines))


def _make_data(root: Path, vocab_size: int, seed: int) -> Path:
    corpus = root / f"corpus{seed}.txt"
    corpus.write_text(_text(seed, 2500))
    Tokenizer.train([corpus], vocab_size, show_progress=False).save_pretrained(root / f"tok{vocab_size}")
    prepare([corpus], root / f"tok{vocab_size}", root / f"data{vocab_size}", progress=False)
    return root / f"data{vocab_size}"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _make_data(tmp_path_factory.mktemp("train_data"), 300, seed=0)


@pytest.fixture(scope="module")
def other_data(tmp_path_factory) -> Path:
    """Shards made with a different tokenizer (another vocabulary size and corpus)."""
    return _make_data(tmp_path_factory.mktemp("train_data_other"), 320, seed=1)


@pytest.fixture(autouse=True)
def _restore_threads():
    """Runs use one thread (steady timings on a shared 2-core machine); give the rest of the suite its own."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=str(data), out=str(out), preset="cpu-tiny", model=dict(TINY), max_steps=6, batch_size=4, context=32,
        lr=3e-3, warmup_steps=2, eval_every=0, eval_tokens=512, checkpoint_every=3, log_every=1, sample_tokens=8, threads=1,
    )
    return TrainConfig(**{**base, **kw})


def _cli_args(data: Path, out: Path, *extra: str) -> list[str]:
    model = [a for k, v in TINY.items() for a in ("--model", f"{k}={v}")]
    return [
        sys.executable, "-m", "yunque", "train", "--data", str(data), "--out", str(out), "--preset", "cpu-tiny", *model,
        "--batch-size", "4", "--context", "32", "--eval-tokens", "512", "--threads", "1", "--log-every", "1", "--warmup-steps", "2", *extra,
    ]


def _losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["train_loss"]) for r in read_metrics(out / "metrics.jsonl") if "train_loss" in r]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early:\n{proc.stdout.read() if proc.stdout else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for training")
        time.sleep(0.05)


# ---------------------------------------------------------------------------- resume


def test_resume_reproduces_the_uninterrupted_run_exactly(data, tmp_path):
    full = train(_cfg(data, tmp_path / "full", decay_steps=6), progress=False)
    train(_cfg(data, tmp_path / "half", max_steps=3, decay_steps=6), progress=False)
    resumed = train(resolve_config(resume=True, out=str(tmp_path / "half"), max_steps=6), resume=True, progress=False)

    assert _losses(tmp_path / "full") == _losses(tmp_path / "half")
    assert [s for s, _ in _losses(tmp_path / "full")] == [1, 2, 3, 4, 5, 6]
    assert resumed.val_loss == full.val_loss and resumed.val_bpb == full.val_bpb
    a = Transformer.from_pretrained(tmp_path / "full" / "model").state_dict()
    b = Transformer.from_pretrained(tmp_path / "half" / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_outputs_metrics_and_model_directory(data, tmp_path):
    out = tmp_path / "run"
    result = train(_cfg(data, out, eval_every=3), progress=False)
    records = read_metrics(out / "metrics.jsonl")
    train_records = [r for r in records if "train_loss" in r]
    assert {"step", "tokens", "train_loss", "lr", "tokens_per_s", "elapsed_s"} <= set(train_records[0])
    evals = [r for r in records if "val_bpb" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert {"val_loss", "val_bpb", "sample"} <= set(evals[0])
    assert train_records[-1]["tokens"] == 6 * 4 * 32
    assert all(math.isfinite(r["val_bpb"]) and r["val_bpb"] > 0 for r in evals)
    assert "mfu" not in train_records[0]  # CPU: no peak-FLOPs figure to divide by
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_0000003", "step_0000006"]

    model = Transformer.from_pretrained(result.model_dir)
    ckpt = Transformer.from_pretrained(latest_checkpoint(out / "checkpoints"))
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    assert torch.equal(model(x), ckpt(x))
    tok = Tokenizer.from_pretrained(result.model_dir)
    assert tok.fingerprint == TokenShards(data).meta["tokenizer"]["fingerprint"]
    assert model.config.eos_token_id == tok.eot_id

    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(result.model_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-4, rtol=1e-4)


def test_keep_last_prunes_old_checkpoints(data, tmp_path):
    train(_cfg(data, tmp_path, max_steps=8, checkpoint_every=2, keep_last=2), progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_0000006", "step_0000008"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_time_budget_stops_evaluates_and_saves(data, tmp_path):
    result = train(_cfg(data, tmp_path, max_steps=None, time_budget=1.5, schedule="wsd", min_lr_ratio=0.0), progress=False)
    assert result.step > 2 and result.val_bpb is not None and result.model_dir.is_dir()
    state = read_state(latest_checkpoint(tmp_path / "checkpoints"))
    assert state["step"] == result.step and state["elapsed_s"] >= 1.5


def test_eval_seconds_evaluates_by_training_time_not_steps(data, tmp_path):
    train(_cfg(data, tmp_path, max_steps=None, time_budget=1.5, eval_seconds=0.4, schedule="wsd"), progress=False)
    mid_run = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "val_bpb" in r and "train_loss" in r]
    times = [r["elapsed_s"] for r in mid_run]
    assert len(times) >= 2 and times[0] >= 0.4
    assert all(b - a >= 0.4 for a, b in zip(times, times[1:]))


def test_toml_config_with_flags_on_top(data, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(f'data = "{data}"\nlr = 1e-3\nbatch_size = 8\ntime_budget = 60\n[model]\nn_layer = 3\nd_model = 48\n')
    cfg = resolve_config(toml, lr=5e-4, model={"n_head": 4}, out=str(tmp_path / "run"))
    assert (cfg.lr, cfg.batch_size, cfg.time_budget, cfg.max_steps) == (5e-4, 8, 60, None)
    assert cfg.model == {"n_layer": 3, "d_model": 48, "n_head": 4}


def test_lr_schedules():
    cos = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(cos, 0) == pytest.approx(0.1) and lr_at(cos, 9) == pytest.approx(1.0)
    assert lr_at(cos, 60) == pytest.approx(0.55) and lr_at(cos, 110) == pytest.approx(0.1)
    wsd = TrainConfig(lr=1.0, warmup_steps=0, max_steps=100, schedule="wsd", decay_frac=0.2, min_lr_ratio=0.0)
    assert lr_at(wsd, 50) == 1.0 and lr_at(wsd, 80) == 1.0 and lr_at(wsd, 90) == pytest.approx(0.5) and lr_at(wsd, 100) == 0.0
    assert (TrainConfig(max_steps=50).warmup, TrainConfig(max_steps=5000).warmup, TrainConfig(max_steps=None, time_budget=9).warmup) == (5, 100, 100)
    timed = TrainConfig(lr=1.0, warmup_steps=0, max_steps=None, time_budget=100.0, schedule="wsd", decay_frac=0.5, min_lr_ratio=0.0)
    assert lr_at(timed, 10, elapsed=25.0) == 1.0 and lr_at(timed, 10, elapsed=75.0) == pytest.approx(0.5)


# ---------------------------------------------------------------------------- bits per byte


def test_bits_per_byte_matches_a_hand_computation(data, tmp_path):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    shards = TokenShards(data)
    cfg = _cfg(data, tmp_path, eval_tokens=None, context=32, batch_size=3)
    cfg_model = model_config(cfg, shards.meta["vocab_size"])
    model = Transformer(cfg_model)
    val_loss, bpb, n = evaluate(model, shards, cfg, torch.device("cpu"), torch.autocast("cpu", enabled=False))

    # By hand: score every val token after the first from the tokens before it (in windows of
    # the context), leave out the end-of-text separators, divide by the UTF-8 bytes of the text.
    tok = Tokenizer.from_pretrained(shards.meta["tokenizer"]["path"])
    ids = torch.from_numpy(shards._array("val").astype("int64"))
    nats, text_nats = [], 0.0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, cfg_model.max_seq_len):
            x = ids[start : start + cfg_model.max_seq_len]
            y = ids[start + 1 : start + cfg_model.max_seq_len + 1]
            x = x[: len(y)]
            per_token = F.cross_entropy(model(x[None])[0], y, reduction="none").double()
            nats.append(per_token)
            text_nats += float(per_token[y != tok.eot_id].sum())
    text = tok.decode([i for i in ids.tolist() if i != tok.eot_id])
    assert n == len(ids) - 1
    assert val_loss == pytest.approx(float(torch.cat(nats).mean()), rel=1e-6)
    assert bpb == pytest.approx(text_nats / (math.log(2) * len(text.encode("utf-8"))), rel=1e-6)


class _OneBatch(NextToken):
    """Memorise one fixed batch, and report how well: another objective through the same loop."""

    def batch(self, step, index, device):
        return super().batch(0, 0, device)

    @torch.no_grad()
    def evaluate(self, model, place, autocast):
        _, loss = model(*self.batch(0, 0, place.device))
        return {"fit_loss": float(loss)}

    def report(self, record):
        return f"fit loss {record['fit_loss']:.3f}"


def test_the_loop_trains_any_objective(data, tmp_path, capsys):
    cfg = _cfg(data, tmp_path, max_steps=60, lr=1e-2, schedule="constant", eval_every=20, checkpoint_every=0)
    result = train(cfg, progress=False, objective=_OneBatch(cfg))
    fits = [r["fit_loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if "fit_loss" in r]
    assert len(fits) == 3 and fits[-1] < fits[0] < math.log(300)  # steps 20 and 40, then the final evaluation
    assert fits[-1] < 1.0, fits  # one batch of 128 tokens is learnt by heart (about 0.4 after 60 steps)
    assert result.val_loss is None and (result.model_dir / "model.safetensors").is_file() and (tmp_path / "loss.png").is_file()
    assert read_state(latest_checkpoint(tmp_path / "checkpoints"))["step"] == 60


# ---------------------------------------------------------------------------- bad input


def test_inconsistent_configs_are_rejected_before_any_allocation(data, other_data, tmp_path, monkeypatch):
    def no_model(*a, **k):
        raise AssertionError("a model was allocated before the config was checked")

    monkeypatch.setattr(Transformer, "__init__", no_model)
    cases = {
        "max_seq_len": dict(model={**TINY, "max_seq_len": 16}),
        "warmup_steps": dict(warmup_steps=10, max_steps=5),
        "vocab_size": dict(model={**TINY, "vocab_size": 999}),
        "n_head": dict(model={**TINY, "n_head": 3}),
        "Hugging Face family": dict(preset="gpt2", model={**TINY, "mlp_bias": False}),
        "does not exist": dict(data=str(tmp_path / "nowhere")),
        "split": dict(context=200000, eval_tokens=None),
        **({} if torch.cuda.is_available() else {"CUDA": dict(device="cuda")}),
    }
    for needle, kw in cases.items():
        with pytest.raises(YunqueError, match=needle):
            train(_cfg(kw.pop("data", data), tmp_path / "x", **kw), progress=False)
    with pytest.raises(YunqueError, match="batch_size must be positive"):
        _cfg(data, tmp_path, batch_size=0)
    toml = tmp_path / "bad.toml"
    toml.write_text('lr = 1e-3\nlearning_rate = 2e-3\n')
    with pytest.raises(YunqueError, match="learning_rate"):
        resolve_config(toml)
    assert not (tmp_path / "x").exists()


def test_data_from_another_tokenizer_is_refused(data, other_data, tmp_path):
    train(_cfg(data, tmp_path, max_steps=2, warmup_steps=1, checkpoint_every=0), progress=False)
    with pytest.raises(YunqueError, match="different tokenizer"):
        train(resolve_config(resume=True, out=str(tmp_path), data=str(other_data), max_steps=4), resume=True, progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    train(_cfg(data, tmp_path, max_steps=3, checkpoint_every=3), progress=False)
    good = latest_checkpoint(tmp_path / "checkpoints")
    weights = Transformer.from_pretrained(good).state_dict()
    diverging = resolve_config(resume=True, out=str(tmp_path), max_steps=20, lr=1e10, schedule="constant", checkpoint_every=1)
    with pytest.raises(YunqueError, match=r"loss became (nan|inf).*step_0000003"):
        train(diverging, resume=True, progress=False)
    kept = list_checkpoints(tmp_path / "checkpoints")
    assert kept and all(math.isfinite(read_state(p).get("elapsed_s", 0)) for p in kept)
    last = Transformer.from_pretrained(kept[-1])
    assert all(torch.isfinite(t).all() for t in last.state_dict().values())
    if kept[-1] == good:
        assert all(torch.equal(weights[k], v) for k, v in last.state_dict().items())


def test_cli_reports_user_mistakes_in_one_sentence(data, tmp_path):
    proc = subprocess.run(_cli_args(data, tmp_path / "none", "--resume"), capture_output=True, text=True, env=_env(), timeout=60)
    assert proc.returncode == 1 and "Nothing to resume" in proc.stderr and "Traceback" not in proc.stderr



def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


CORRUPTIONS = {
    "trainer_state.json": _truncate,
    "optimizer.safetensors": _truncate,
    "rng.safetensors": Path.unlink,
}


@pytest.fixture(scope="module")
def six_step_run(data, tmp_path_factory) -> Path:
    """A finished 6-step run with checkpoints at steps 3 and 6, copied by each test that damages it."""
    out = tmp_path_factory.mktemp("six") / "run"
    train(_cfg(data, out, decay_steps=6), progress=False)
    return out


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_resume_skips_a_corrupt_newest_checkpoint(six_step_run, tmp_path, capsys, name):
    out = tmp_path / "run"
    shutil.copytree(six_step_run, out)
    CORRUPTIONS[name](out / "checkpoints" / "step_0000006" / name)
    result = train(resolve_config(resume=True, out=str(out), max_steps=6), resume=True, progress=False)
    warning = capsys.readouterr().err
    assert f"step_0000006 is unusable ({name}" in warning and "resuming from step_0000003" in warning
    assert warning.count("\n") == 1
    assert result.step == 6 and [s for s, _ in _losses(out)] == [1, 2, 3, 4, 5, 6]
    assert _losses(out) == _losses(six_step_run)  # the steps after the usable checkpoint trained again, identically
    assert read_state(out / "checkpoints" / "step_0000006")["step"] == 6  # the corrupt one replaced by a good one


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_resume_with_no_usable_checkpoint_is_one_sentence(data, six_step_run, tmp_path, name):
    out = tmp_path / "run"
    shutil.copytree(six_step_run, out)
    for ckpt in list_checkpoints(out / "checkpoints"):
        CORRUPTIONS[name](ckpt / name)
    with pytest.raises(YunqueError, match=rf"step_0000006 .*{name}.* no older checkpoint is usable; delete .* without --resume"):
        train(_cfg(data, out), resume=True, progress=False)
    with pytest.raises(YunqueError, match="no older checkpoint is usable"):
        resolve_config(resume=True, out=str(out))



def test_resume_with_fewer_steps_than_done_is_refused(six_step_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(six_step_run, out)
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(YunqueError, match="already at step 6.*larger --max-steps"):
        train(resolve_config(resume=True, out=str(out), max_steps=4), resume=True, progress=False)
    assert (out / "metrics.jsonl").read_text() == before



def test_load_weights_fills_the_model_in_place_without_building_another(six_step_run, monkeypatch):
    ckpt = six_step_run / "checkpoints" / "step_0000006"
    expected = Transformer.from_pretrained(ckpt).state_dict()
    model = Transformer(Transformer.from_pretrained(ckpt).config)
    before = {name: p.data_ptr() for name, p in model.named_parameters()}

    def no_model(*a, **k):
        raise AssertionError("load_weights built a second model")

    monkeypatch.setattr(Transformer, "__init__", no_model)
    load_weights(model, ckpt)
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == before
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------- signals and kills


@pytest.mark.slow
def test_sigkill_loses_only_recent_steps_and_resume_works(data, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        _cli_args(data, out, "--max-steps", "100000", "--checkpoint-every", "2", "--keep-last", "2"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
    )
    _wait_for(lambda: len(list_checkpoints(out / "checkpoints")) >= 2, proc)
    time.sleep(0.3)  # land somewhere in the middle of training or of a checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    kept = list_checkpoints(out / "checkpoints")
    assert kept
    for ckpt in kept:  # every checkpoint that looks complete is complete and loads
        Transformer.from_pretrained(ckpt)
        assert read_state(ckpt)["step"] == int(ckpt.name.split("_")[1])
    step = read_state(kept[-1])["step"]
    done = subprocess.run(_cli_args(data, out, "--resume", "--max-steps", str(step + 2)), capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [s for s, _ in _losses(out)] == list(range(1, step + 3))
    assert not [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # leftovers of the kill removed


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_before_exiting(data, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        _cli_args(data, out, "--max-steps", "100000", "--checkpoint-every", "1000"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
    )
    _wait_for(lambda: len(_losses(out)) >= 3, proc)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "--resume" in output and "Traceback" not in output
    ckpt = latest_checkpoint(out / "checkpoints")
    assert ckpt is not None and read_state(ckpt)["step"] == _losses(out)[-1][0] >= 3


# ---------------------------------------------------------------------------- data parallel


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(data, tmp_path):
    steps = 5
    train(_cfg(data, tmp_path / "one", max_steps=steps, batch_size=2, grad_accum=2, checkpoint_every=0), progress=False)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
        *_cli_args(data, tmp_path / "two", "--max-steps", str(steps), "--checkpoint-every", "0", "--warmup-steps", "2",
                   "--lr", "3e-3", "--eval-every", "0", "--seed", str(TrainConfig.seed))[2:],
    ]
    cmd[cmd.index("--batch-size") + 1] = "2"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [s for s, _ in one] == [s for s, _ in two] == list(range(1, steps + 1))
    for (_, a), (_, b) in zip(one, two):
        assert a == pytest.approx(b, rel=1e-4)
    assert one[-1][1] < one[0][1]
    # rank 0 alone wrote: one metrics file, one model, one set of checkpoints
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()
    assert len(list_checkpoints(tmp_path / "two" / "checkpoints")) == 1
