"""Parity with transformers: what it writes yunque loads with the same logits, and the reverse."""

import json

import pytest
import torch

import peers
from yunque.model.config import ModelConfig
from yunque.errors import YunqueError
from yunque.model.accounting import describe
from yunque.model.hf import config_from_hf, family_of
from yunque.model.transformer import Transformer

transformers = peers.require("transformers")

SMALL = dict(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=64)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}

HF_CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                            bos_token_id=0, eos_token_id=0),
    "gpt2-untied": lambda: transformers.GPT2Config(vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                                   n_inner=40, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0),
    "llama": lambda: transformers.LlamaConfig(**SMALL, num_key_value_heads=2, rope_parameters=LLAMA3_ROPE),
    "llama-tied": lambda: transformers.LlamaConfig(**SMALL, num_key_value_heads=4, tie_word_embeddings=True,
                                                   attention_bias=True, mlp_bias=True),
    "mistral": lambda: transformers.MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=6),
    "qwen2": lambda: transformers.Qwen2Config(**SMALL, num_key_value_heads=2, tie_word_embeddings=True),
    "mixtral": lambda: transformers.MixtralConfig(**SMALL, num_key_value_heads=2, num_local_experts=4,
                                                  num_experts_per_tok=2),
}


def hf_model(name: str):
    torch.manual_seed(0)
    cfg = HF_CONFIGS[name]()
    cfg._attn_implementation = "sdpa"
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # default init gives tiny logits that would hide errors
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
            else:  # norm weights stay near 1, biases become non-zero
                p.add_(torch.randn_like(p) * 0.3)
    return model


def assert_logits_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    scale = max(1.0, theirs.abs().max().item())
    diff = (ours - theirs).abs().max().item()
    assert diff <= 1e-4 * scale, f"max |diff| {diff:.2e} at logit scale {scale:.1f}"


def random_batches(vocab: int):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab, (b, t), generator=g) for b, t in [(2, 5), (3, 13), (2, 40)]]


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_transformers_checkpoint_loads_with_identical_logits(name, tmp_path):
    theirs = hf_model(name)
    theirs.save_pretrained(tmp_path)
    ours = Transformer.from_pretrained(tmp_path)
    assert family_of(ours.config) == theirs.config.model_type
    with torch.no_grad():
        for idx in random_batches(101):
            assert_logits_close(ours(idx), theirs(idx).logits)


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_yunque_checkpoint_loads_in_transformers_with_identical_logits(name, tmp_path):
    config = Transformer.from_pretrained(_saved(hf_model(name), tmp_path / "src")).config.replace(init_std=0.3)
    torch.manual_seed(2)
    ours = Transformer(config).eval()
    with torch.no_grad():
        for p in ours.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    ours.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_type"] == family_of(config) == name.split("-")[0]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="sdpa").eval()
    assert type(theirs).__name__ == saved["architectures"][0]
    with torch.no_grad():
        for idx in random_batches(101):
            assert_logits_close(ours(idx), theirs(idx).logits)
    assert Transformer.from_pretrained(tmp_path / "out").config == config


def _saved(model, path):
    model.save_pretrained(path)
    return path


def test_mixtral_training_loss_matches_transformers_including_the_aux_loss(tmp_path):
    theirs = hf_model("mixtral")
    theirs.config.output_router_logits = True
    theirs.save_pretrained(tmp_path)
    ours = Transformer.from_pretrained(tmp_path).train()
    theirs.train()
    idx = torch.randint(0, 101, (2, 12))
    targets = torch.cat([idx[:, 1:], torch.full((2, 1), -100)], dim=1)
    _, loss = ours(idx, targets)
    expected = theirs(idx, labels=idx).loss
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_sharded_bf16_checkpoint(tmp_path):
    theirs = hf_model("llama")
    with torch.no_grad():  # bf16-representable weights, so the float32 reference sees what the file holds
        for p in theirs.parameters():
            p.copy_(p.bfloat16())
    idx = random_batches(101)[1]
    with torch.no_grad():
        expected = theirs(idx).logits
    theirs.to(torch.bfloat16).save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ours = Transformer.from_pretrained(tmp_path)
    assert ours.lm_head.weight.dtype == torch.float32
    with torch.no_grad():
        assert_logits_close(ours(idx), expected)
        low = Transformer.from_pretrained(tmp_path, dtype=torch.bfloat16)
        assert low.lm_head.weight.dtype == torch.bfloat16
        assert torch.equal(low.tok_emb.weight, theirs.model.embed_tokens.weight.bfloat16())
    info = describe(tmp_path)
    assert info["family"] == "llama" and info["dtype"] == "BF16" and len(info["files"]) > 1
    assert info["parameters"] == ours.num_params() == info["stored_parameters"]


def test_a_bf16_checkpoint_stays_bf16_where_the_cpu_multiplies_bf16_natively(tmp_path, monkeypatch):
    from yunque.model import device

    hf_model("llama").to(torch.bfloat16).save_pretrained(tmp_path)
    assert device.stored_dtype(tmp_path) == "BF16"
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(device, "cpu_has_bf16", lambda: native)
        assert device.inference_dtype("cpu", "BF16") == expected and device.inference_dtype("cpu", "F32") == torch.float32


def test_describe_reports_active_parameters_for_moe(tmp_path):
    hf_model("mixtral").save_pretrained(tmp_path)
    info = describe(tmp_path)
    model = Transformer.from_pretrained(tmp_path)
    assert info["family"] == "mixtral" and info["experts"] == "2 of 4"
    assert info["active_parameters"] == model.num_params(active=True) < info["parameters"]
    assert info["flops_per_token"] == model.flops_per_token()
    assert info["size_bytes"] == (tmp_path / "model.safetensors").stat().st_size


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def llama_dir(tmp_path):
    hf_model("llama").save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_unsupported_model_type_names_the_supported_ones(llama_dir):
    cfg = json.loads((llama_dir / "config.json").read_text())
    (llama_dir / "config.json").write_text(json.dumps({**cfg, "model_type": "falcon"}))
    with pytest.raises(YunqueError, match="'falcon'.*gpt2, llama, mistral, mixtral, qwen2"):
        Transformer.from_pretrained(llama_dir)


def test_missing_config_and_directory_are_clear(tmp_path, llama_dir):
    with pytest.raises(YunqueError, match="does not exist"):
        Transformer.from_pretrained(tmp_path / "nope")
    (llama_dir / "config.json").unlink()
    with pytest.raises(YunqueError, match="no config.json"):
        Transformer.from_pretrained(llama_dir)


def test_missing_extra_and_misshapen_tensors_are_named(llama_dir):
    from safetensors.torch import load_file, save_file

    file = llama_dir / "model.safetensors"
    original = load_file(file)
    broken = dict(original)
    del broken["model.layers.1.self_attn.k_proj.weight"]
    save_file(broken, file)
    with pytest.raises(YunqueError, match=r"lacks tensor\(s\) model\.layers\.1\.self_attn\.k_proj\.weight"):
        Transformer.from_pretrained(llama_dir)
    save_file({**original, "model.layers.0.surprise": torch.zeros(2)}, file)
    with pytest.raises(YunqueError, match="unexpected tensor.*model.layers.0.surprise"):
        Transformer.from_pretrained(llama_dir)
    save_file({**original, "model.norm.weight": torch.zeros(31)}, file)
    with pytest.raises(YunqueError, match=r"wrong shape: model\.norm\.weight \(31,\) \(expected \(32,\)\)"):
        Transformer.from_pretrained(llama_dir)


def test_truncated_weights_are_reported_as_corrupt(llama_dir):
    file = llama_dir / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(YunqueError, match="corrupt"):
        Transformer.from_pretrained(llama_dir)
    file.write_bytes(b"garbage")
    with pytest.raises(YunqueError, match="corrupt"):
        Transformer.from_pretrained(llama_dir)


def test_pickle_only_directory_is_refused(llama_dir):
    (llama_dir / "model.safetensors").rename(llama_dir / "pytorch_model.bin")
    with pytest.raises(YunqueError, match="pickle"):
        Transformer.from_pretrained(llama_dir)


def test_config_without_a_family_cannot_be_exported(tmp_path):
    model = Transformer(ModelConfig(vocab_size=11, n_layer=1, n_head=2, d_model=8, positions="rope", norm="layernorm"))
    with pytest.raises(YunqueError, match="matches no Hugging Face family"):
        model.save_pretrained(tmp_path)


def test_rope_settings_read_in_transformers_4_spelling():
    v4 = dict(model_type="llama", hidden_size=32, num_attention_heads=4, num_hidden_layers=1, vocab_size=10,
              intermediate_size=8, rope_theta=500000.0,
              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192})
    cfg = config_from_hf(v4)
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling["rope_type"] == "llama3" and cfg.rope_scaling["factor"] == 8.0
    v5 = dict(v4, rope_parameters={**v4.pop("rope_scaling"), "rope_theta": 500000.0})
    del v5["rope_theta"]
    assert config_from_hf(v5) == cfg


def test_inspect_command_prints_a_table_and_json(tmp_path):
    from typer.testing import CliRunner

    from yunque.cli.app import app

    hf_model("qwen2").save_pretrained(tmp_path)
    runner = CliRunner()
    table = runner.invoke(app, ["inspect", str(tmp_path)], terminal_width=150)
    assert table.exit_code == 0 and "qwen2 (Qwen2ForCausalLM)" in table.output and "FLOPs per token" in table.output
    as_json = runner.invoke(app, ["inspect", str(tmp_path), "--json"])
    assert json.loads(as_json.output) == json.loads(json.dumps(describe(tmp_path)))


def test_gpt2_checkpoint_in_openai_layout_loads(tmp_path):
    """openai-community/gpt2's own file: no "transformer." prefix, plus causal-mask buffers named attn.bias."""
    from safetensors.torch import load_file, save_file

    theirs = hf_model("gpt2")
    theirs.save_pretrained(tmp_path)
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(tmp_path / "model.safetensors").items()}
    tensors.update({f"h.{i}.attn.bias": torch.ones(1, 1, 64, 64).tril() for i in range(2)})
    save_file(tensors, tmp_path / "model.safetensors")
    ours = Transformer.from_pretrained(tmp_path)
    idx = random_batches(101)[0]
    with torch.no_grad():
        assert_logits_close(ours(idx), theirs(idx).logits)


@pytest.mark.parametrize(
    "model_type, key, value",
    [("gpt2", "activation_function", "relu"), ("gpt2", "scale_attn_by_inverse_layer_idx", True), ("llama", "hidden_act", "gelu")],
)
def test_unsupported_computation_settings_are_refused_by_name(model_type, key, value):
    from yunque.model.hf import config_from_hf

    with pytest.raises(YunqueError, match=key):
        config_from_hf({"model_type": model_type, key: value})
