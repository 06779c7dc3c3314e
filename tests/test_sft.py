"""Supervised fine-tuning through the training loop: a pretrained model learns to answer, the loss
covers only the assistant's tokens, and the run resumes exactly after an interruption."""

import contextlib
import json
import random

import pytest
import torch

from serving import make_tiny_model
from yunque.model.transformer import Transformer
from yunque.store.chat import model_chat_settings
from yunque.store.modelfile import Modelfile
from yunque.train.config import TrainConfig
from yunque.errors import YunqueError
from yunque.train.distributed import Placement
from yunque.train.loop import train
from yunque.train.metrics import read_metrics
from yunque.train.sft import IGNORE, Sft

WORDS = "simple complex flat nested sparse dense beautiful ugly explicit implicit readable".split()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("base") / "base", d_model=64, n_layer=2, max_seq_len=256)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A task a tiny model can learn in a minute: say the given word twice."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("sft") / "twice.jsonl"
    rows = []
    for _ in range(60):
        word = rng.choice(WORDS)
        rows.append({"instruction": f"Say {word} twice.", "output": f"{word} {word}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _objective(base, data, tmp_path, **kw):
    cfg = TrainConfig(out=str(tmp_path / "run"), **{**dict(max_steps=160, decay_steps=160, batch_size=8, context=96, lr=3e-3, warmup_steps=5,
                                                         eval_every=0, checkpoint_every=80, log_every=10, sample_tokens=16, seed=1), **kw})
    return cfg, Sft(cfg, base, model_chat_settings(base, Modelfile(from_=str(base))), data, val_fraction=0.2)


def test_batches_learn_only_the_assistants_tokens(base, data, tmp_path):
    _, sft = _objective(base, data, tmp_path)
    x, y = sft.batch(0, 0, torch.device("cpu"))
    assert x.shape == y.shape and x.shape[0] == 8
    for row in range(8):
        learnt = sft.tokenizer.decode([t for t in y[row].tolist() if t != IGNORE])
        words = learnt.removesuffix("<|end|>\n").split()
        assert len(words) == 2 and words[0] == words[1] in WORDS, learnt  # the answer and its end-of-turn marker, nothing else
    assert sft.batch(3, 1, torch.device("cpu"))[0].equal(sft.batch(3, 1, torch.device("cpu"))[0])  # batches are a function of (step, index)
    assert len(sft.val_set) == 12 and sft.dropped == 0


def test_fine_tuning_lowers_the_held_out_loss_on_answers_and_resumes_exactly(base, data, tmp_path):
    cfg, sft = _objective(base, data, tmp_path)
    place = Placement(0, 0, 1, torch.device("cpu"))
    before = sft.evaluate(Transformer.from_pretrained(base), place, contextlib.nullcontext())
    result = train(cfg, progress=False, objective=sft)
    after = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "val_loss" in r][-1]
    assert after["val_loss"] < 0.5 * before["val_loss"], (before["val_loss"], after["val_loss"])
    assert all(a.split()[:2] == [a.split()[0]] * 2 for a in after["answers"]), after["answers"]
    assert (result.model_dir / "model.safetensors").is_file() and (result.model_dir / "tokenizer.json").is_file()

    # Stopped at step 80 and resumed: the same losses as the uninterrupted run, bit for bit.
    half, sft_half = _objective(base, data, tmp_path / "b", max_steps=80)
    train(half, progress=False, objective=sft_half)
    full, sft_full = _objective(base, data, tmp_path / "b")
    train(full, resume=True, progress=False, objective=sft_full)
    losses = lambda p: [r["train_loss"] for r in read_metrics(p) if "train_loss" in r]  # noqa: E731
    assert losses(tmp_path / "b" / "run" / "metrics.jsonl") == losses(tmp_path / "run" / "metrics.jsonl")


def test_yunque_finetune_trains_a_store_model_and_refuses_bad_data_in_one_sentence(base, data, tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from yunque.store import entries as store

    monkeypatch.setenv("YUNQUE_HOME", str(tmp_path / "home"))
    env = dict(os.environ)
    store.import_model(base, "tiny")

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "yunque.cli", "finetune", *args], env=env, capture_output=True, text=True, timeout=300)
        r.stderr = " ".join(r.stderr.split())  # the console wraps long lines
        return r

    r = cli("tiny", "--data", str(data), "--out", str(tmp_path / "run"), "--max-steps", "20", "--context", "96", "--batch-size", "4",
            "--lr", "3e-3", "--log-every", "5")
    assert r.returncode == 0, r.stderr
    assert "held-out loss on answers" in r.stdout and (tmp_path / "run" / "model" / "model.safetensors").is_file()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert records[-1]["val_loss"] > 0 and "answers" in records[-1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "no answer"}) + "\n")
    r = cli("tiny", "--data", str(bad), "--out", str(tmp_path / "bad-run"))
    assert r.returncode == 1 and "bad.jsonl:1: the record lacks 'output'" in r.stderr and "Traceback" not in r.stderr
    r = cli("nope", "--data", str(data), "--out", str(tmp_path / "x"))
    assert r.returncode == 1 and "not in the store" in r.stderr
    r = cli("tiny", "--data", str(data), "--out", str(tmp_path / "lora"), "--method", "lora", "--lora-targets", "q_proj,down_proj",
            "--max-steps", "4", "--warmup-steps", "1", "--context", "96", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    adapter = json.loads((tmp_path / "lora" / "adapter" / "adapter_config.json").read_text())
    assert adapter["target_modules"] == ["down_proj", "q_proj"] and adapter["base_model_name_or_path"] == "tiny:latest"
    r = cli("tiny", "--data", str(data), "--out", str(tmp_path / "y"), "--method", "lora", "--lora-targets", "c_attn")
    assert r.returncode == 1 and "called c_attn; LoRA targets here are" in r.stderr
    r = cli("tiny", "--data", str(data), "--out", str(tmp_path / "t"), "--method", "lora", "--lora-tokens", "<|end|>,<|nope|>")
    assert r.returncode == 1 and "<|nope|> is not one" in r.stderr and not (tmp_path / "t").exists()
    r = cli("tiny", "--data", str(data), "--out", str(tmp_path / "z"), "--method", "qlora")
    assert r.returncode == 1 and "choose full or lora" in r.stderr


def test_lora_fine_tuning_trains_only_adapters_resumes_exactly_and_peft_loads_the_result(base, data, tmp_path):
    import peers
    from test_hf import assert_logits_close

    from yunque.model.lora import LoraSettings, load_adapter

    peft, transformers = peers.require("peft"), peers.require("transformers")
    lora = LoraSettings(r=8, alpha=16, dropout=0.0, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))

    def objective(out, **kw):
        cfg, _ = _objective(base, data, out, lr=1e-2, **kw)
        return cfg, Sft(cfg, base, model_chat_settings(base, Modelfile(from_=str(base))), data, val_fraction=0.2, lora=lora)

    cfg, sft = objective(tmp_path / "a")
    place = Placement(0, 0, 1, torch.device("cpu"))
    before = sft.evaluate(Transformer.from_pretrained(base), place, contextlib.nullcontext())
    result = train(cfg, progress=False, objective=sft)
    after = [r for r in read_metrics(tmp_path / "a" / "run" / "metrics.jsonl") if "val_loss" in r][-1]
    # The base is a random model: frozen random embeddings and head leave adapters less to work with than full tuning.
    assert after["val_loss"] < 0.9 * before["val_loss"], (before["val_loss"], after["val_loss"])
    assert result.model_dir == tmp_path / "a" / "run" / "adapter" and not (tmp_path / "a" / "run" / "model").exists()
    assert not (result.model_dir / "model.safetensors").exists()  # the adapter alone, not the base's weights
    # The template's markers (end-of-turn among them) train as token rows: frozen, they could never be learnt.
    specials = sft.tokenizer.special_tokens
    rows = json.loads((result.model_dir / "adapter_config.json").read_text())["trainable_token_indices"]
    assert specials["<|end|>"] in rows and specials["<|assistant|>"] in rows and specials["<|tool|>"] not in rows

    half, sft_half = objective(tmp_path / "b", max_steps=80)
    train(half, progress=False, objective=sft_half)
    full, sft_full = objective(tmp_path / "b")
    train(full, resume=True, progress=False, objective=sft_full)
    losses = lambda p: [r["train_loss"] for r in read_metrics(p) if "train_loss" in r]  # noqa: E731
    assert losses(tmp_path / "b" / "run" / "metrics.jsonl") == losses(tmp_path / "a" / "run" / "metrics.jsonl")

    ours = load_adapter(Transformer.from_pretrained(base), result.model_dir)
    theirs = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base), result.model_dir).eval()
    x = sft.batch(0, 0, torch.device("cpu"))[0]
    with torch.no_grad():
        assert_logits_close(ours(x), theirs(x).logits)


def test_a_lora_run_can_keep_its_base_in_bf16(base, data, tmp_path):
    """QLoRA-style: the frozen base in bfloat16 (half the weights' memory), adapters and token rows
    in float32; it learns like the float32 run. Full fine-tuning of bf16 weights is refused."""
    from yunque.model.lora import LoraSettings, adapters, token_rows

    lora = LoraSettings(r=8, alpha=16, dropout=0.0, targets=("q_proj", "v_proj", "down_proj"))
    cfg, _ = _objective(base, data, tmp_path / "x", max_steps=60, decay_steps=60, lr=1e-2)
    sft = Sft(cfg, base, model_chat_settings(base, Modelfile(from_=str(base))), data, val_fraction=0.2, lora=lora, base_dtype="bfloat16")
    model = sft.build_model(torch.device("cpu"))
    trained = {id(p) for m in [*adapters(model), *token_rows(model)] for p in m.parameters() if p.requires_grad}
    assert all(p.dtype == torch.float32 for p in model.parameters() if id(p) in trained)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters() if id(p) not in trained)
    place = Placement(0, 0, 1, torch.device("cpu"))
    before = sft.evaluate(Transformer.from_pretrained(base), place, contextlib.nullcontext())["val_loss"]
    result = train(cfg, progress=False, objective=sft)
    assert result.val_loss < 0.9 * before, (before, result.val_loss)
    with pytest.raises(YunqueError, match="--base-dtype is float32 or, for --method lora, bfloat16"):
        Sft(cfg, base, model_chat_settings(base, Modelfile(from_=str(base))), data, base_dtype="bfloat16")


@pytest.mark.slow
def test_torchrun_lora_fine_tuning_matches_one_process_with_the_same_global_batch(base, data, tmp_path):
    """Data-parallel SFT: two torchrun ranks with batch 2 take the same steps as one process with
    batch 2 × 2 micro-steps; adapters and token rows all get gradients on every rank."""
    import os
    import subprocess
    import sys

    steps = 4
    common = ["finetune", str(base), "--data", str(data), "--method", "lora", "--lora-dropout", "0", "--max-steps", str(steps),
              "--warmup-steps", "1", "--context", "96", "--batch-size", "2", "--lr", "1e-2", "--log-every", "1",
              "--eval-every", "0", "--checkpoint-every", "0", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "yunque.cli", *common, "--grad-accum", "2", "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "yunque.cli",
                          *common, "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    losses = lambda run: [(r["step"], r["train_loss"]) for r in read_metrics(tmp_path / run / "metrics.jsonl") if "train_loss" in r]  # noqa: E731
    assert [s for s, _ in losses("one")] == [s for s, _ in losses("two")] == list(range(1, steps + 1))
    for (_, a), (_, b) in zip(losses("one"), losses("two")):
        assert a == pytest.approx(b, rel=1e-4)
    from safetensors.torch import load_file

    a, b = (load_file(tmp_path / run / "adapter" / "adapter_model.safetensors") for run in ("one", "two"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-6) for k in a)
