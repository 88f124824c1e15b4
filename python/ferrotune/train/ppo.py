"""PPO: roll out answers to prepped prompts, score them, and update actor and critic.

Four models: the actor (trained, from the SFT model), the reference (frozen, the SFT model), the
reward model (frozen) or a reward function, and the critic (trained; a one-label classifier whose
score head reads every position, initialised from the reward model). Each iteration:

1. rollout: ``generate`` answers (temperature, top-p, ``response_length``), stopping at EOS;
2. score: the reward model at the last real token, or ``reward_fn(queries, responses,
   references)``; ``missing_eos_penalty`` is taken off answers that never ended;
3. per-token log-probs of actor and reference (``linear_token_logprobs``: no full log-softmax),
   rewards = -kl_coef * KL (k1 or k3) with the score added at the last token, values from the
   critic, GAE(gamma, lam), whitened advantages;
4. ``ppo_epochs`` passes over ``num_mini_batches`` minibatches: clipped policy loss, clipped value
   loss (``vf_coef``), optional entropy bonus (``entropy_coef``).

Under DDP each process rolls out its own prompts; whitening and every mean are taken over the
global batch (sums reduced across processes), so N processes with B prompts each train as one
process with N*B. ``resume_from_checkpoint`` restores optimizers, RNGs and the prompt order, so a
resumed run repeats the unbroken one's later steps.

The arithmetic lives in ``ppo_math``; this module is the loop around it.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer

from ferrotune.errors import ConfigError
from ferrotune.train.base import NonFiniteLossError
from ferrotune.train.checkpoints import PPO_STATE
from ferrotune.train.config import PpoConfig
from ferrotune.train.model_io import head_output, last_real
from ferrotune.train.models import load_causal_lm, load_reward_model, model_access
from ferrotune.train.plots import plot_history
from ferrotune.train.ppo_math import gae, masked_mean, masked_whiten, policy_loss, token_rewards
from ferrotune.train.ppo_math import value_loss as clipped_value_loss
from ferrotune.train.sharding import set_up_fsdp, without_tied_copies
from ferrotune_kernels import linear_token_logprobs

STATE = PPO_STATE  # optimizers, step and history: one file, written by the main process, last
RANK_STATE = "rng-{rank}.pt"  # each process's RNGs and pending prompts
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>")
RewardFn = Callable[[list[str], list[str], list[Any]], list[float]]


def load_reward_fn(spec: str) -> RewardFn:
    """``module.path:function``: a rule-based reward, called with decoded texts."""
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"reward_fn {spec!r}: expected module.path:function ({e})") from e


def left_pad(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts right-aligned for generation: ``(input_ids, attention_mask)``."""
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, longest - len(row) :] = row
        mask[i, longest - len(row) :] = 1
    return ids, mask


def response_mask(
    responses: torch.Tensor, stop_ids: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """1 on each answer's tokens up to and including its first stop token; and whether it ended."""
    stops = torch.isin(responses, torch.tensor(stop_ids, device=responses.device))
    ended = stops.any(dim=1)
    first = torch.where(ended, stops.float().argmax(dim=1), responses.shape[1] - 1)
    positions = torch.arange(responses.shape[1], device=responses.device)
    return (positions[None, :] <= first[:, None]).long(), ended


def positions_of(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding, as ``generate`` numbers them."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def response_logprobs(
    model, ids, mask, prompt_length: int, rmask: torch.Tensor, temperature: float, entropy: bool
):
    """(B, R) log-probs (and entropies) of the response tokens, at the sampling temperature,
    made in the lm_head's call (``model_io``)."""
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :prompt_length] = -100

    def logps(hidden, weight, bias):
        return linear_token_logprobs(
            hidden, weight, labels, bias=bias, temperature=temperature, return_entropy=entropy
        )

    out = head_output(model, logps, _inputs(ids, mask))
    if entropy:
        return out[0][:, prompt_length:], out[1][:, prompt_length:]
    return out[:, prompt_length:] * rmask


def critic_values(critic, ids, mask, prompt_length: int) -> torch.Tensor:
    """(B, R) values: the critic's score head at the position before each response token."""
    values = head_output(critic, None, _inputs(ids, mask)).squeeze(-1).float()
    return values[:, prompt_length - 1 : -1]


@torch.no_grad()
def reward_model_scores(reward_model, ids, mask) -> torch.Tensor:
    """(B,) reward-model scores at each sequence's last real token."""
    scores = head_output(reward_model, None, _inputs(ids, mask)).squeeze(-1)
    return last_real(scores, mask).float()


def _inputs(ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions_of(mask)}


class PpoRun:
    """One PPO training run: models, prompts, and the loop (``train``)."""

    def __init__(self, config: PpoConfig, prompts, manifest: dict) -> None:
        if not config.reward_model and not config.reward_fn:
            raise ConfigError("PPO needs reward_model=PATH or reward_fn=module:function")
        if config.deepspeed or os.environ.get("ACCELERATE_USE_DEEPSPEED", "") == "true":
            raise ConfigError(
                "PPO under DeepSpeed is not supported yet (its loop holds four models, which "
                "accelerate's DeepSpeed integration does not prepare one by one): shard it with "
                "fsdp=true fsdp_config=examples/sharding/fsdp2.json",
                option="deepspeed",
            )
        self.config = config
        self.prompts = prompts
        self.accelerator = _accelerator(config)
        self.device = self.accelerator.device
        tokenizer_info = manifest["tokenizer"]
        self.pad_id = (tokenizer_info.get("pad") or tokenizer_info.get("eos") or {"id": 0})["id"]
        self.tokenizer = _tokenizer(config.model, tokenizer_info)
        stops = {i for t in END_OF_TURN if (i := self.tokenizer.token_to_id(t)) is not None}
        if tokenizer_info.get("eos"):
            stops.add(tokenizer_info["eos"]["id"])
        self.stop_ids = sorted(stops)
        torch.manual_seed(config.seed)
        resume = Path(config.resume_from_checkpoint) if config.resume_from_checkpoint else None
        if resume is not None and not (resume / STATE).is_file():
            raise ConfigError(
                f"resume_from_checkpoint={resume}: no {STATE} there (not a PPO checkpoint)",
                option="resume_from_checkpoint",
            )
        self.actor = load_causal_lm(
            str(resume or config.model), seed=config.seed, **model_access(config)
        )
        self.reference = _frozen(
            load_causal_lm(
                config.reference or config.model, seed=config.seed, **model_access(config)
            )
        )
        critic_from = config.critic or config.reward_model or config.model
        if resume is not None:
            critic_from = str(resume / "critic")
        self.critic = load_reward_model(
            critic_from, seed=config.seed, pad_id=self.pad_id, **model_access(config)
        )
        self.reward_model = None
        self.reward_fn = None
        if config.reward_fn:
            self.reward_fn = load_reward_fn(config.reward_fn)
        else:
            self.reward_model = _frozen(
                load_reward_model(
                    config.reward_model,
                    seed=config.seed,
                    pad_id=self.pad_id,
                    **model_access(config),
                )
            )
        self.actor_optimizer = torch.optim.AdamW(
            self.actor.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.critic_optimizer = torch.optim.AdamW(
            self.critic.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        # One model per prepare: accelerate's FSDP2 shards one model (the last) per call.
        self.actor, self.actor_optimizer = self.accelerator.prepare(
            self.actor, self.actor_optimizer
        )
        self.critic, self.critic_optimizer = self.accelerator.prepare(
            self.critic, self.critic_optimizer
        )
        self.sharded = self.accelerator.is_fsdp2
        self.reference = self._frozen_on_device(self.reference)
        if self.reward_model is not None:
            self.reward_model = self._frozen_on_device(self.reward_model)
        self.history: list[dict[str, float]] = []
        # Two streams, so that the prompt order does not depend on the minibatch size.
        self.prompt_rng = torch.Generator().manual_seed(config.seed)
        self.minibatch_rng = torch.Generator().manual_seed(config.seed + 1)
        self.pending: list[int] = []
        world = self.accelerator.num_processes
        if len(self.prompts) < world:
            raise ConfigError(f"{len(self.prompts)} prompts cannot feed {world} processes")
        if resume is not None:
            self.load_state(resume)

    def _frozen_on_device(self, model):
        """A frozen model on this process's device; sharded like the actor under FSDP2 (DDP
        has nothing to do for a model without gradients)."""
        return self.accelerator.prepare(model) if self.sharded else model.to(self.device)

    def total(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over all processes."""
        return self.accelerator.reduce(value.detach().clone(), reduction="sum")

    def next_prompts(self) -> list[dict]:
        """The next batch: each rank its own slice of a reshuffled order, passes chained (so a
        batch larger than the prompt set still fills)."""
        size = self.config.per_device_train_batch_size
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        while len(self.pending) < size:
            order = torch.randperm(len(self.prompts), generator=self.prompt_rng).tolist()
            self.pending += order[rank::world]
        batch, self.pending = self.pending[:size], self.pending[size:]
        return [self.prompts[i] for i in batch]

    @torch.no_grad()
    def rollout(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        config = self.config
        prompt_ids, prompt_mask = left_pad(
            [torch.as_tensor(r["input_ids"]) for r in rows], self.pad_id
        )
        prompt_ids, prompt_mask = prompt_ids.to(self.device), prompt_mask.to(self.device)
        actor = self.accelerator.unwrap_model(self.actor)
        actor.eval()
        sequences = actor.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            max_new_tokens=config.response_length,
            do_sample=True,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=0,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
        )
        actor.train()
        length = prompt_ids.shape[1]
        responses = sequences[:, length:]
        rmask, ended = response_mask(responses, self.stop_ids)
        mask = torch.cat([prompt_mask, rmask], dim=1)
        if self.reward_fn is not None:
            texts = [
                self.tokenizer.decode(r[m.bool()].tolist())
                for r, m in zip(responses, rmask, strict=True)
            ]
            scores = torch.tensor(
                self.reward_fn(
                    [r["query"] for r in rows], texts, [r.get("reference") for r in rows]
                ),
                dtype=torch.float32,
                device=self.device,
            )
        else:
            scores = reward_model_scores(self.reward_model, sequences, mask)
        scores = scores - config.missing_eos_penalty * (~ended).float()
        temperature = config.temperature
        logp = response_logprobs(self.actor, sequences, mask, length, rmask, temperature, False)
        ref_logp = response_logprobs(
            self.reference, sequences, mask, length, rmask, temperature, False
        )
        values = critic_values(self.critic, sequences, mask, length) * rmask
        rmask_f = rmask.float()
        rewards, kl = token_rewards(
            scores, logp, ref_logp, rmask_f, kl_coef=config.kl_coef, kl_kind=config.kl_estimator
        )
        if config.whiten_rewards:
            rewards = masked_whiten(rewards, rmask_f, shift_mean=False, total=self.total)
        advantages, returns = gae(rewards, values, rmask_f, gamma=config.gamma, lam=config.lam)
        advantages = masked_whiten(advantages, rmask_f, total=self.total)
        return {
            "sequences": sequences,
            "mask": mask,
            "rmask": rmask_f,
            "prompt_length": torch.tensor(length),
            "logp": logp,
            "values": values,
            "advantages": advantages,
            "returns": returns,
            "scores": scores,
            "kl": kl,
        }

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """``ppo_epochs`` passes over minibatches of one rollout; the stats averaged."""
        config = self.config
        size = batch["sequences"].shape[0]
        minibatch = max(1, size // config.num_mini_batches)
        length = int(batch["prompt_length"])
        stats: dict[str, list[float]] = {}
        world = self.accelerator.num_processes
        for _ in range(config.ppo_epochs):
            order = torch.randperm(size, generator=self.minibatch_rng)
            for start in range(0, size, minibatch):
                pick = order[start : start + minibatch].to(self.device)
                part = {k: v[pick] for k, v in batch.items() if v.dim() > 0}
                rmask = part["rmask"]
                share = self.total(rmask.sum()).clamp(min=1) / world  # see masked_mean
                logp, entropy = response_logprobs(
                    self.actor,
                    part["sequences"],
                    part["mask"],
                    length,
                    rmask,
                    config.temperature,
                    True,
                )
                values = critic_values(self.critic, part["sequences"], part["mask"], length)
                old_logp, advantages = part["logp"], part["advantages"]
                pg_loss, pg_stats = policy_loss(
                    logp, old_logp, advantages, rmask, cliprange=config.cliprange, count=share
                )
                old_values, returns = part["values"], part["returns"]
                clip = config.cliprange_value
                vf_loss, vf_clipfrac = clipped_value_loss(
                    values, old_values, returns, rmask, cliprange_value=clip, count=share
                )
                mean_entropy = masked_mean(entropy, rmask, share)
                loss = pg_loss + config.vf_coef * vf_loss - config.entropy_coef * mean_entropy
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(len(self.history) + 1, float(loss), config.output_dir)
                self.actor_optimizer.zero_grad()
                self.critic_optimizer.zero_grad()
                self.accelerator.backward(loss)
                if config.max_grad_norm:
                    self.accelerator.clip_grad_norm_(self.actor.parameters(), config.max_grad_norm)
                    self.accelerator.clip_grad_norm_(self.critic.parameters(), config.max_grad_norm)
                self.actor_optimizer.step()
                self.critic_optimizer.step()
                for name, value in {
                    "loss/policy": pg_loss,
                    "loss/value": vf_loss,
                    "policy/entropy": mean_entropy,
                    "policy/clipfrac": pg_stats["clipfrac"],
                    "policy/approx_kl": pg_stats["approx_kl"],
                    "value/clipfrac": vf_clipfrac,
                }.items():
                    stats.setdefault(name, []).append(float(self.total(value)) / world)
        return {name: sum(values) / len(values) for name, values in stats.items()}

    def train(self) -> Path:
        config = self.config
        out = Path(config.output_dir)
        writer = _tensorboard(config, out)
        steps = config.max_steps if config.max_steps > 0 else 1
        for step in range(len(self.history) + 1, steps + 1):
            batch = self.rollout(self.next_prompts())
            row = {"step": step, **self.update(batch)}
            rmask = batch["rmask"]
            tokens = self.total(rmask.sum())
            rows = self.total(torch.tensor(rmask.shape[0], device=self.device))
            row.update(
                {
                    "score": float(self.accelerator.gather(batch["scores"]).mean()),
                    "kl": float(self.accelerator.gather((batch["kl"] * rmask).sum(1)).mean()),
                    "returns": float(self.total((batch["returns"] * rmask).sum()) / tokens),
                    "response_length": float(tokens / rows),
                }
            )
            self.history.append(row)
            if self.accelerator.is_main_process:
                print(json.dumps({k: round(v, 5) for k, v in row.items()}), flush=True)
                if writer is not None:
                    for name, value in row.items():
                        if name != "step":
                            writer.add_scalar(name, value, step)
            if (
                config.save_strategy == "steps"
                and config.save_steps
                and step % int(config.save_steps) == 0
            ):
                self.save(out / f"checkpoint-{step}")
        if writer is not None:
            writer.close()
        self.save(out)
        return out

    def save(self, folder: Path) -> None:
        """Actor in ``folder``, critic in ``folder/critic``, both HF format; history and plot;
        the state a resumed run needs (``RANK_STATE`` from every process, then ``STATE``, written
        last: a checkpoint without it is incomplete, see ``checkpoints``)."""
        self.accelerator.wait_for_everyone()
        folder.mkdir(parents=True, exist_ok=True)
        _save_atomic(
            {
                "pending": self.pending,
                "prompt_rng": self.prompt_rng.get_state(),
                "minibatch_rng": self.minibatch_rng.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            folder / RANK_STATE.format(rank=self.accelerator.process_index),
        )
        self.accelerator.wait_for_everyone()  # every RANK_STATE is whole before STATE says so
        # Collectives under FSDP2 (every process gathers), then the main process writes.
        models = {"": self.actor, "critic": self.critic}
        weights = {name: self.accelerator.get_state_dict(m) for name, m in models.items()}
        optimizers = {
            "actor_optimizer": self._optimizer_state(self.actor, self.actor_optimizer),
            "critic_optimizer": self._optimizer_state(self.critic, self.critic_optimizer),
        }
        if self.accelerator.is_main_process:
            for name, model in models.items():
                plain = self.accelerator.unwrap_model(model)
                plain.save_pretrained(
                    folder / name, state_dict=without_tied_copies(plain, weights[name])
                )
            (folder / "ppo_history.json").write_text(json.dumps(self.history, indent=1))
            plot_history(self.history, ["score", "kl"], folder / "ppo.png")
            _save_atomic(
                {
                    **optimizers,
                    "history": self.history,
                    "world_size": self.accelerator.num_processes,
                },
                folder / STATE,
            )
        self.accelerator.wait_for_everyone()

    def load_state(self, folder: Path) -> None:
        """Optimizers, history and each process's RNGs from a checkpoint ``save`` wrote."""
        state = torch.load(folder / STATE, weights_only=False)
        if state["world_size"] != self.accelerator.num_processes:
            raise ConfigError(
                f"resume_from_checkpoint={folder}: saved by {state['world_size']} processes, "
                f"resumed by {self.accelerator.num_processes}",
                option="resume_from_checkpoint",
            )
        self._load_optimizer_state(self.actor, self.actor_optimizer, state["actor_optimizer"])
        self._load_optimizer_state(self.critic, self.critic_optimizer, state["critic_optimizer"])
        self.history = state["history"]
        mine = torch.load(
            folder / RANK_STATE.format(rank=self.accelerator.process_index), weights_only=False
        )
        self.pending = mine["pending"]
        self.prompt_rng.set_state(mine["prompt_rng"])
        self.minibatch_rng.set_state(mine["minibatch_rng"])
        torch.set_rng_state(mine["torch"])
        if mine["cuda"]:
            torch.cuda.set_rng_state_all(mine["cuda"])

    def _optimizer_state(self, model, optimizer) -> dict:
        """The optimizer's state; under FSDP2 gathered whole (a collective), so that a checkpoint
        is one file as without sharding."""
        if not self.sharded:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(model, optimizer, options=options)

    def _load_optimizer_state(self, model, optimizer, state: dict) -> None:
        if not self.sharded:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(model, optimizer, state, options=options)


def _accelerator(config: PpoConfig):
    """accelerate's Accelerator for the run, with an FSDP plugin when ``fsdp`` asks for one
    (``TrainingArguments`` turns ``fsdp_config`` into its arguments), on CPU processes too."""
    from accelerate import Accelerator
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin_args = config.fsdp_plugin_args
    plugin = FullyShardedDataParallelPlugin(**plugin_args) if plugin_args else None
    accelerator = Accelerator(cpu=config.use_cpu, fsdp_plugin=plugin)
    set_up_fsdp(accelerator, plugin_args)
    return accelerator


def _save_atomic(obj, path: Path) -> None:
    """``torch.save`` through a temporary file: a killed run leaves the old file or none."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _frozen(model):
    return model.eval().requires_grad_(False)


def _tokenizer(model: str, info: dict) -> Tokenizer:
    """The tokenizer to decode answers and find stop tokens: the model's, else the data's."""
    for candidate in (Path(model) / "tokenizer.json", Path(info["path"])):
        file = candidate / "tokenizer.json" if candidate.is_dir() else candidate
        if file.is_file():
            return Tokenizer.from_file(str(file))
    raise ConfigError(f"no tokenizer.json beside --model {model} nor at {info['path']}")


def _tensorboard(config: PpoConfig, out: Path):
    if "tensorboard" not in (config.report_to or []):
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(out / "runs"))


def train_ppo(config: PpoConfig, prompts, manifest: dict) -> Path:
    """Run PPO as ``config`` says on prepped prompts; returns the output folder."""
    transformers.set_seed(config.seed)
    if not math.isfinite(config.kl_coef):
        raise ConfigError("kl_coef must be finite", option="kl_coef")
    return PpoRun(config, prompts, manifest).train()
