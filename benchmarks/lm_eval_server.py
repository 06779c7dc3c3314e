"""lm-eval against `yunque serve`: its `local-completions` model scores a local JSON task through
/v1/completions (echo + logprobs, token-id prompts, several prompts per request), and the
accuracy must equal the one computed in-process from the same model with
`yunque.infer.score.prompt_logprobs`.

The task is SST-2 from ../shared/data/sentiment (the first --limit dev sentences) as a
two-choice loglikelihood task; the model is a tiny random one (its accuracy is chance: the
point is that the harness, the API and the direct computation agree), or --model-dir.

    pip install "lm-eval[api]"    # not a dependency of yunque
    .venv/bin/python benchmarks/lm_eval_server.py [--limit 64] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serving import LiveServer, make_tiny_model  # noqa: E402  (test helpers: a tiny model and a server subprocess)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CHOICES = ["negative", "positive"]  # lm-eval puts its target_delimiter, a space, before each
TASK = """task: yunque_sst2
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: multiple_choice
doc_to_text: "Review: {{{{content}}}}\\nSentiment:"
doc_to_choice: {choices}
doc_to_target: label
metric_list:
  - metric: acc
"""


def write_task(directory: Path, limit: int) -> list[dict]:
    with open(SHARED / "sentiment" / "sst2_dev.tsv", encoding="utf-8") as f:
        rows = [{"content": r["content"], "label": int(r["label"])} for r in csv.DictReader(f, delimiter="\t")][:limit]
    data = directory / "sst2_dev.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / "yunque_sst2.yaml").write_text(TASK.format(data=data, choices=json.dumps(CHOICES)))
    return rows


def direct_scores(model_dir: Path, rows: list[dict]) -> list[list[float]]:
    """The same task scored in-process: the summed log probability of each choice's tokens."""
    from yunque.infer.generate import load
    from yunque.infer.score import prompt_logprobs

    model, tokenizer = load(model_dir, device="cpu")
    out = []
    for row in rows:
        text = f"Review: {row['content']}\nSentiment:"
        context = tokenizer.encode(text)
        scores = []
        for choice in CHOICES:
            ids = tokenizer.encode(f"{text} {choice}")  # as lm-eval: the whole text encoded, split after the context
            lps = prompt_logprobs(model, ids, vocab=tokenizer.vocab_size)
            scores.append(sum(lp.logprob for lp in lps[len(context):]))
        out.append(scores)
    return out


def accuracy(scores: list[list[float]], rows: list[dict]) -> float:
    return sum(max(range(len(s)), key=s.__getitem__) == row["label"] for s, row in zip(scores, rows)) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--model-dir", type=Path, default=None)
    args = parser.parse_args()
    import lm_eval
    from lm_eval.tasks import TaskManager

    from yunque.store import entries as store

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = args.model_dir or make_tiny_model(tmp / "tiny", d_model=64, n_layer=2, max_seq_len=256)
        os.environ["YUNQUE_HOME"] = str(tmp / "home")
        store.import_model(model_dir, "bench")
        rows = write_task(tmp, args.limit)
        server = LiveServer(tmp / "home").start()
        try:
            t0 = time.perf_counter()
            results = lm_eval.simple_evaluate(
                model="local-completions",
                model_args=f"model=bench,base_url={server.url}/v1/completions,tokenizer={model_dir},tokenizer_backend=huggingface,"
                           "tokenized_requests=True,num_concurrent=1,max_retries=1",
                tasks=["yunque_sst2"],
                task_manager=TaskManager(include_path=str(tmp)),
                batch_size=8,
                log_samples=True,
            )
            harness_seconds = time.perf_counter() - t0
        finally:
            server.stop()
        t0 = time.perf_counter()
        direct = direct_scores(model_dir, rows)
        direct_seconds = time.perf_counter() - t0
    harness = results["results"]["yunque_sst2"]["acc,none"]
    by_doc = {s["doc_id"]: [float(r[0][0]) for r in s["resps"]] for s in results["samples"]["yunque_sst2"]}
    worst = max(abs(a - b) for i, scores in enumerate(direct) for a, b in zip(by_doc[i], scores))
    print(f"SST-2 dev, first {len(rows)} sentences, two-choice loglikelihood")
    print(f"{'':<38}{'acc':>8}{'seconds':>10}")
    print(f"{'lm-eval local-completions -> yunque':<38}{harness:>8.4f}{harness_seconds:>10.1f}")
    print(f"{'yunque in-process prompt_logprobs':<38}{accuracy(direct, rows):>8.4f}{direct_seconds:>10.1f}")
    print(f"largest difference of a choice's loglikelihood: {worst:.2e} nats")
    print("agree" if math.isclose(harness, accuracy(direct, rows)) and worst < 1e-3 else "DISAGREE")


if __name__ == "__main__":
    main()
