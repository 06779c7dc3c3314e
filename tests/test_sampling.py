import dataclasses

import pytest
import torch

from yunque.infer import sampling
from yunque.errors import YunqueError
from yunque.infer.sampling import SamplingBatch, SamplingParams, apply_penalties, sample
from yunque.infer.textstream import StopStrings


def batch_of(*params, seeds=None):
    if seeds is not None:
        params = [dataclasses.replace(p, seed=s) for p, s in zip(params, seeds)]
    return SamplingBatch(params, torch.device("cpu"))


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(temperature=-1), "temperature"),
        (dict(top_k=-2), "top_k"),
        (dict(top_p=0), "top_p"),
        (dict(min_p=1.0), "min_p"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(frequency_penalty=3), "frequency_penalty"),
        (dict(presence_penalty=-3), "presence_penalty"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(stop=[""]), "stop strings"),
        (dict(seed="x"), "seed"),
    ],
)
def test_invalid_settings_are_one_clear_error(kw, words):
    with pytest.raises(YunqueError, match=words):
        SamplingParams(**kw)


def test_unknown_option_is_named_and_single_stop_string_is_wrapped():
    with pytest.raises(YunqueError, match="bogus"):
        SamplingParams.from_kwargs(bogus=1)
    p = SamplingParams.from_kwargs(SamplingParams(top_k=3), stop="\n")
    assert p.stop == ("\n",) and p.top_k == 3


def test_greedy_is_argmax_and_ignores_seed():
    logits = torch.randn(3, 50)
    ids = sample(logits, batch_of(*[SamplingParams(temperature=0, seed=s) for s in (1, 2, None)]))
    assert torch.equal(ids, logits.argmax(-1))


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = torch.randn(4, 100)
    for p in (SamplingParams(top_k=1), SamplingParams(top_p=1e-6), SamplingParams(min_p=0.999)):
        for _ in range(5):
            assert torch.equal(sample(logits, batch_of(*[p] * 4)), logits.argmax(-1))


def test_filters_keep_only_allowed_tokens():
    torch.manual_seed(0)
    logits = torch.randn(1, 30)
    top5 = set(logits[0].topk(5).indices.tolist())
    probs = logits[0].softmax(-1)
    order = probs.argsort(descending=True)
    nucleus = set(order[: int((probs[order].cumsum(0) < 0.5).sum()) + 1].tolist())
    above = set(torch.nonzero(probs >= 0.3 * probs.max()).flatten().tolist())
    gen_k, gen_p, gen_m = (batch_of(SamplingParams(**kw), seeds=[7]) for kw in (dict(top_k=5), dict(top_p=0.5), dict(min_p=0.3)))
    for _ in range(200):
        assert int(sample(logits, gen_k)) in top5
        assert int(sample(logits, gen_p)) in nucleus
        assert int(sample(logits, gen_m)) in above


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 1e-9]]))
    b = batch_of(SamplingParams(seed=3))
    draws = torch.stack([sample(logits, b) for _ in range(4000)]).flatten()
    freq = torch.bincount(draws, minlength=4).float() / 4000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.03)


def test_temperature_sharpens():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    cold = batch_of(SamplingParams(temperature=0.1, seed=0))
    assert all(int(sample(logits, cold)) == 0 for _ in range(100))


def test_seeded_rows_are_reproducible_and_independent_of_batch_mates():
    logits = torch.randn(1, 1000)
    alone = batch_of(SamplingParams(seed=42))
    a = [int(sample(logits, alone)) for _ in range(20)]
    mixed = batch_of(SamplingParams(temperature=0), SamplingParams(seed=42), SamplingParams(seed=None, top_k=10))
    b = [int(sample(logits.expand(3, -1), mixed)[1]) for _ in range(20)]
    assert a == b and len(set(a)) > 1


def test_penalties():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    seen = torch.tensor([[True, True, False, False]])
    counts = torch.tensor([[0.0, 0.0, 3.0, 0.0]])
    b = batch_of(SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25))
    out = apply_penalties(logits, seen, counts, b)
    assert torch.allclose(out, torch.tensor([[1.0, -4.0, 1.0 - 1.5 - 0.25, 0.5]]))
    # Under greedy decoding the penalty changes the winner.
    assert int(sample(logits, batch_of(SamplingParams(temperature=0)))) == 0
    assert int(sample(logits, batch_of(SamplingParams(temperature=0, repetition_penalty=3.0)), seen, counts)) == 2


def feed_all(stops, pieces):
    s = StopStrings(stops)
    out = [s.feed(p) for p in pieces]
    return out, s.flush(), s.stopped


def test_stop_string_split_across_pieces_is_not_emitted():
    out, rest, stopped = feed_all(["END"], ["hello E", "N", "D and more"])
    assert "".join(out) + rest == "hello " and stopped
    assert out[0] == "hello "  # "E" held back only while it could start "END"


def test_held_text_is_released_when_ruled_out():
    out, rest, stopped = feed_all(["END"], ["a E", "x", "EN"])
    assert out == ["a ", "Ex", ""] and rest == "EN" and not stopped


def test_earliest_of_several_stop_strings_wins():
    out, _, stopped = feed_all(["\n\n", "User:"], ["ok User: hi\n\n"])
    assert out == ["ok "] and stopped


@pytest.mark.parametrize("u", [0.0, 1.0])
def test_extreme_draws_never_pick_a_filtered_token(monkeypatch, u):
    monkeypatch.setattr(sampling, "uniform", lambda key, draw: u)
    logits = torch.tensor([[-1.0, 5.0, 0.0, -3.0]])  # probabilities ~ 0.0025, 0.991, 0.0067, 0.0003
    kept = [(dict(top_k=2), {1, 2}), (dict(top_p=0.5), {1}), (dict(min_p=0.5), {1}), (dict(min_p=0.001), {0, 1, 2})]
    for kw, allowed in kept:
        assert int(sample(logits, batch_of(SamplingParams(**kw)))) in allowed


def test_draws_are_uniform_and_distinct_per_seed_and_step():
    us = [sampling.uniform(key, draw) for key in (0, 1, 2**63) for draw in range(2000)]
    assert 0 < min(us) and max(us) < 1 and len(set(us)) == len(us)
    assert abs(sum(us) / len(us) - 0.5) < 0.01
    assert abs(sum(u < 0.1 for u in us) / len(us) - 0.1) < 0.01


def test_a_rebuilt_batch_carries_each_stream_on():
    logits = torch.randn(1, 1000)
    one = batch_of(SamplingParams(seed=9))
    a = [int(sample(logits, one)) for _ in range(10)]
    b = [int(sample(logits, SamplingBatch([SamplingParams(seed=9)], torch.device("cpu"), draws=[i]))) for i in range(10)]
    assert a == b and len(set(a)) > 1


def test_seeded_top_k_row_does_not_depend_on_its_batch_mates_top_k():
    torch.manual_seed(1)
    logits = torch.randn(1, 500)
    alone = batch_of(SamplingParams(seed=5, top_k=5))
    a = [int(sample(logits, alone)) for _ in range(20)]
    mixed = batch_of(SamplingParams(top_k=50), SamplingParams(seed=5, top_k=5), SamplingParams(top_p=0.5))
    b = [int(sample(logits.expand(3, -1), mixed)[1]) for _ in range(20)]
    assert a == b and len(set(a)) > 1


def test_unseeded_top_k_top_p_draws_follow_the_renormalised_candidates():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]])).expand(2000, -1)
    ids = sample(logits, batch_of(*[SamplingParams(top_k=3, top_p=0.8)] * 2000))
    freq = torch.bincount(ids, minlength=4).float() / 2000
    # top-k 3 keeps 0.4/0.3/0.2; top-p 0.8 keeps ranks whose preceding mass is below 0.8: all three.
    assert torch.allclose(freq, torch.tensor([4 / 9, 3 / 9, 2 / 9, 0.0]), atol=0.04)


def test_logit_bias_forces_and_bans_tokens_per_row():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    top = logits.argmax(dim=-1)
    params = [
        SamplingParams(temperature=0, logit_bias={7: 100.0}),  # forced, greedy
        SamplingParams(temperature=1.0, seed=1, logit_bias={11: 100.0, 12: -100.0}),  # forced, sampled
        SamplingParams(temperature=0, logit_bias={int(top[2]): -100.0}),  # the argmax banned: the runner-up wins
    ]
    tokens = sample(logits, batch_of(*params)).tolist()
    assert tokens[:2] == [7, 11] and tokens[2] == int(logits[2].topk(2).indices[1])
    assert sample(logits, batch_of(SamplingParams(temperature=0))).tolist()[0] == int(top[0])  # no bias, no change
    for bad in ({-1: 1.0}, {3: 101.0}, {3: float("nan")}):
        with pytest.raises(YunqueError, match="logit_bias"):
            SamplingParams(logit_bias=bad)
