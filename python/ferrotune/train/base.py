"""What every ferrotune trainer adds to ``Trainer``: a stop on a NaN loss, and per-step metrics
averaged into each log line as TRL's trainers log them."""

from __future__ import annotations

from collections import defaultdict

import torch
import transformers

from ferrotune.errors import FerrotuneError
from ferrotune.train.checkpoints import complete_checkpoints
from ferrotune.train.sharding import set_up_fsdp, without_tied_copies


class FerrotuneTrainer(transformers.Trainer):
    """``Trainer`` + ``record`` (values averaged into the next log line) + the NaN stop, and
    FSDP2 on CPU processes (``sharding``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._metrics: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if set_up_fsdp(self.accelerator, self.args.fsdp_plugin_args):
            self.is_fsdp_enabled = True

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self.accelerator.unwrap_model(self.model)
        if state_dict and isinstance(model, transformers.PreTrainedModel):
            state_dict = without_tied_copies(model, state_dict)
        super()._save(output_dir, state_dict)

    def record(self, name: str, value: torch.Tensor) -> None:
        """Keep the mean of ``value`` over every process for the next log line."""
        mode = "train" if self.model.training else "eval"
        gathered = self.accelerator.gather_for_metrics(value.detach().float().reshape(-1))
        self._metrics[mode][name].append(gathered.mean().item())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        for name, values in self._metrics[mode].items():
            if values:
                logs[prefix + name] = sum(values) / len(values)
        self._metrics[mode].clear()
        if "train_loss" in logs and getattr(self, "_initial_global_step", 0):
            logs["train_loss"] = self._whole_run_loss(logs["train_loss"])
        super().log(logs, start_time)

    def _whole_run_loss(self, resumed_mean: float) -> float:
        """The run summary's ``train_loss`` over every step, as an unbroken run reports it.

        After a resume, Trainer averages only the steps this call trained. The steps before
        are in the restored ``log_history``: each logged ``loss`` is the mean since the log
        before; the steps after the last log are what this call's mean leaves over. Exact when
        checkpoints fall on logging steps (so no unlogged loss was lost with the killed run)."""
        start, end = self._initial_global_step, self.state.global_step
        before = total = 0.0
        last = 0
        for row in self.state.log_history:
            if "loss" in row and "step" in row:
                total += row["loss"] * (row["step"] - last)
                before += row["loss"] * (row["step"] - last) if row["step"] <= start else 0.0
                last = row["step"]
        unlogged = resumed_mean * (end - start) - (total - before)
        return (total + unlogged) / max(end, 1)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation as training computes it: the loss (and the metrics ``compute_loss``
        records, logged with an ``eval_`` prefix). Trainer's own would skip the loss of batches
        without ``labels`` (reward pairs) and gather every batch's outputs for nothing."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach().mean(), None, None

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(self.state.global_step + 1, float(loss), self.args.output_dir)
        return loss


class NonFiniteLossError(FerrotuneError, RuntimeError):
    """The loss became NaN or inf: training stops; the checkpoints written before stay.

    The loss of step ``s`` is computed with the weights after step ``s - 1``, so the last good
    checkpoint is the newest one at step ``s - 2`` or before (its weights gave a finite loss).
    """

    def __init__(self, step: int, loss: float, output_dir: str | None) -> None:
        self.step = step
        self.checkpoint = _last_good_checkpoint(output_dir, step)
        where = (
            f"the last good checkpoint is {self.checkpoint} "
            f"(resume_from_checkpoint={self.checkpoint}, perhaps with a lower learning_rate)"
            if self.checkpoint
            else "no checkpoint was saved before it"
        )
        super().__init__(f"step {step}: the loss is {loss}; training stopped; {where}")


def _last_good_checkpoint(output_dir: str | None, step: int) -> str | None:
    good = [path for number, path in complete_checkpoints(output_dir) if number <= step - 2]
    return str(good[-1]) if good else None
