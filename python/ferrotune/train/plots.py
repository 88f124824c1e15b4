"""Training curves as PNG files beside the model, from ``Trainer``'s log history."""

from __future__ import annotations

from pathlib import Path

import transformers


class LossPlot(transformers.TrainerCallback):
    """Writes ``loss.png`` (training loss, and evaluation loss if any) when training ends."""

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and getattr(args, "loss_plot", True):
            plot_history(
                state.log_history, ["loss", "eval_loss"], Path(args.output_dir) / "loss.png"
            )


def plot_history(history: list[dict], keys: list[str], path: Path) -> Path | None:
    """One line per key of ``history`` (Trainer's ``log_history``) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {
        key: [(row["step"], row[key]) for row in history if key in row and "step" in row]
        for key in keys
    }
    series = {key: points for key, points in series.items() if points}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, points in series.items():
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="." if len(steps) < 50 else None, label=key)
    ax.set_xlabel("step")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
