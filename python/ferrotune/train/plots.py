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
    return plot_panels(history, [keys], path)


def plot_panels(history: list[dict], panels: list[list[str]], path: Path) -> Path | None:
    """Side-by-side panels, one line per key, against the step; keys never logged are left out
    (and a panel with none of its keys, and the file when nothing at all was logged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = []
    for keys in panels:
        series = {
            key: [(row["step"], row[key]) for row in history if key in row and "step" in row]
            for key in keys
        }
        series = {key: points for key, points in series.items() if points}
        if series:
            drawn.append(series)
    if not drawn:
        return None
    fig, axes = plt.subplots(1, len(drawn), figsize=(4.2 * len(drawn) + 1.8, 3.5), squeeze=False)
    for ax, series in zip(axes[0], drawn, strict=True):
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
