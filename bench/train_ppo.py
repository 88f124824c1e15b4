"""PPO step time and memory: per-token log-probs through ``linear_token_logprobs`` (ferrotune's
loop as it is) against a full log-softmax gather over the logits (the eager way), same run.

Both contenders run ``ferrotune train ppo``'s loop (``PpoRun``) on the same prompts (MedicalGPT's
SFT questions, ``prep ppo`` with the real Qwen tokenizer), the same tiny Qwen2 (4 layers, hidden
256, the Qwen vocabulary, fp32, one seed) as actor, reference and critic, and the same rule
reward (``reference_overlap``); only ``ppo.response_logprobs`` differs. Each runs in its own
subprocess, so peak RSS (VmHWM) is its own. Per step: rollout time (generate, scores, log-probs
of actor and reference, values, GAE) and update time (``ppo_epochs`` minibatch passes).

    python bench/train_ppo.py                 # 6 steps x 8 prompts, 32 new tokens, ~2-4 min
    python bench/train_ppo.py --steps 10 --batch 16

Writes bench/out/train_ppo.csv and prints the table with ratios.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ferrotune.bench.corpora import qwen_tokenizer_dir

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
DATA = Path(os.environ.get("FERROTUNE_MEDICALGPT", REPO.parent / "shared" / "data" / "medicalgpt"))
CONTENDERS = ("ferrotune", "full-log-softmax")
TINY_QWEN = {
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}


def full_log_softmax_logprobs(model, ids, mask, prompt_length, rmask, temperature, entropy):
    """The eager way: the whole (B, T, V) logits, an fp32 log-softmax, a gather."""
    import torch

    from ferrotune.train.ppo import positions_of

    out = model(
        input_ids=ids, attention_mask=mask, position_ids=positions_of(mask), use_cache=False
    )
    logits = out.logits[:, prompt_length - 1 : -1].float() / temperature  # (B, R, V)
    log_probs = torch.log_softmax(logits, dim=-1)
    targets = ids[:, prompt_length:]
    logp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * rmask
    if entropy:
        return logp, -(log_probs.exp() * log_probs).sum(-1)
    return logp


def child(args: argparse.Namespace) -> None:
    """One contender: prepare, run the PPO loop, print one JSON line of figures."""
    import torch

    from ferrotune.data.manifest import read_manifest
    from ferrotune.data.shards import ShardDataset
    from ferrotune.train import ppo
    from ferrotune.train.config import PpoConfig

    torch.set_num_threads(os.cpu_count() or 1)
    if args.child == "full-log-softmax":
        ppo.response_logprobs = full_log_softmax_logprobs
    config = PpoConfig(
        output_dir=str(OUT / f"train-ppo-{args.child}"),
        model=str(OUT / "train-ppo-model.json"),
        data=str(OUT / "train-ppo-prompts"),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        per_device_train_batch_size=args.batch,
        response_length=args.new_tokens,
        max_steps=args.steps,
        reward_fn="ferrotune.train.rewards:reference_overlap",
        learning_rate=1e-5,
        seed=0,
    )
    run = ppo.PpoRun(config, ShardDataset(config.data), read_manifest(config.data))
    timings: dict[str, list[float]] = {"rollout": [], "update": []}
    for name in timings:
        method = getattr(run, name)

        def timed(*a, _method=method, _name=name, **k):
            start = time.perf_counter()
            result = _method(*a, **k)
            timings[_name].append(time.perf_counter() - start)
            return result

        setattr(run, name, timed)
    run.train()
    status = Path("/proc/self/status").read_text()
    peak_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    print(
        json.dumps(
            {
                "contender": args.child,
                "rollout_s": sum(timings["rollout"]) / len(timings["rollout"]),
                "update_s": sum(timings["update"]) / len(timings["update"]),
                "peak_rss_mb": peak_kb / 1024,
                "first_score": run.history[0]["score"],
                "tokens": sum(row["response_length"] for row in run.history) * args.batch,
            }
        )
    )


def prepare(args: argparse.Namespace) -> None:
    from ferrotune.data import prep_ppo

    OUT.mkdir(parents=True, exist_ok=True)
    source = DATA / "sft" / "medical_sft_1K_format.jsonl"
    if not source.is_file():
        sys.exit(f"MedicalGPT sample data not found at {DATA} (set FERROTUNE_MEDICALGPT)")
    lines = source.read_text(encoding="utf-8").splitlines()[: args.steps * args.batch]
    (OUT / "train-ppo-prompts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prep_ppo(
        qwen_tokenizer_dir(),
        OUT / "train-ppo-prompts.jsonl",
        OUT / "train-ppo-prompts",
        max_prompt_length=args.prompt_length,
        overwrite=True,
    )
    (OUT / "train-ppo-model.json").write_text(json.dumps(TINY_QWEN))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="PPO iterations")
    parser.add_argument("--batch", type=int, default=8, help="prompts per iteration")
    parser.add_argument("--new-tokens", type=int, default=32, help="response_length")
    parser.add_argument("--prompt-length", type=int, default=128, help="max prompt tokens")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    prepare(args)
    rows = []
    for contender in CONTENDERS:
        done = subprocess.run(
            [sys.executable, __file__, "--child", contender, "--steps", str(args.steps),
             "--batch", str(args.batch), "--new-tokens", str(args.new_tokens)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            sys.exit(f"{contender} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    ours, eager = rows
    print(
        f"{os.cpu_count()} CPUs; {args.steps} steps x {args.batch} prompts "
        f"x {args.new_tokens} new tokens"
    )
    print(
        f"{'contender':18} {'rollout s':>10} {'update s':>10} {'peak RSS MB':>12} {'1st score':>10}"
    )
    for row in rows:
        print(
            f"{row['contender']:18} {row['rollout_s']:10.2f} {row['update_s']:10.2f} "
            f"{row['peak_rss_mb']:12.0f} {row['first_score']:10.4f}"
        )
    print(
        f"ferrotune vs full log-softmax: rollout {eager['rollout_s'] / ours['rollout_s']:.2f}x, "
        f"update {eager['update_s'] / ours['update_s']:.2f}x faster, "
        f"peak RSS {ours['peak_rss_mb'] / eager['peak_rss_mb']:.2f}x"
    )
    with (OUT / "train_ppo.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {OUT / 'train_ppo.csv'}")


if __name__ == "__main__":
    main()
