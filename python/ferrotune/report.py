"""The pipeline's report: per-stage metrics (JSON), curves (PNG) and one HTML page.

``OUTPUT/report/index.html`` opens from disk in any browser, no server: the images and JSON files
beside it are linked relatively and the styles are inline. The page shows, per stage, the curves,
the final metrics, the training settings and the data manifest's summary (inputs with their
hashes, counts with reasons, tokens, tokenizer, template), then the pipeline file as written. A
small script marks each image once the browser has loaded it (``data-loaded="yes"``) or failed
to (``"no"``, with a visible note), so a broken report shows itself, to a reader and to a test.
"""

from __future__ import annotations

import datetime
import html
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ferrotune import __version__
from ferrotune.train.plots import plot_panels

if TYPE_CHECKING:
    from ferrotune.pipeline_files import Pipeline, State

# The curves drawn per stage: one panel per inner list.
CURVES: dict[str, list[list[str]]] = {
    "pt": [["loss", "eval_loss"]],
    "sft": [["loss", "eval_loss"]],
    "rm": [["loss", "eval_loss"], ["accuracy", "eval_accuracy"], ["margin"]],
    "dpo": [
        ["loss", "eval_loss"],
        ["rewards/margins"],
        ["rewards/accuracies", "eval_rewards/accuracies"],
    ],
    "ppo": [["score"], ["kl"], ["loss/policy", "loss/value"]],
}
TITLES = {"pt": "Pretraining", "sft": "Supervised fine-tuning", "rm": "Reward model",
          "dpo": "DPO", "ppo": "PPO"}  # fmt: skip


def stage_history(model_dir: Path) -> list[dict[str, Any]]:
    """The logged rows of a trained stage: Trainer's ``log_history`` or PPO's history."""
    for name, pick in (("trainer_state.json", "log_history"), ("ppo_history.json", None)):
        file = model_dir / name
        if file.is_file():
            loaded = json.loads(file.read_text())
            return loaded[pick] if pick else loaded
    return []


def final_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    """Each metric's last logged value (the run summary's too: runtime, samples per second)."""
    final: dict[str, float] = {}
    for row in history:
        for key, value in row.items():
            if key not in ("step", "epoch") and isinstance(value, int | float):
                final[key] = value
    return final


def write_report(pipeline: Pipeline, state: State) -> Path:
    """Writes ``OUTPUT/report`` for every stage that has a trained model; returns the folder."""
    from ferrotune.data.manifest import read_manifest

    out = pipeline.output / "report"
    out.mkdir(parents=True, exist_ok=True)
    sections, overview = [], []
    for stage, spec in pipeline.stages.items():
        record = state.stages.get(stage, {})
        manifests = [
            read_manifest(folder)
            for folder in (pipeline.output / "data" / name for name in (stage, f"{stage}-eval"))
            if (folder / "manifest.json").is_file()
        ]
        model = Path(record.get("model", pipeline.output / "models" / stage))
        history = stage_history(model) if record.get("status") == "done" else []
        image = plot_panels(history, CURVES[stage], out / f"{stage}.png")
        metrics = {
            "stage": stage,
            "status": record.get("status", "not run"),
            "model": str(model),
            "final": final_metrics(history),
            "history": history,
            "settings": {**pipeline.train, **spec["train"]},
            "data_manifest": manifests[0] if manifests else None,
            "eval_data_manifest": manifests[1] if len(manifests) > 1 else None,
        }
        _write_atomic(out / f"{stage}.json", json.dumps(metrics, indent=1, default=str))
        sections.append(_section(stage, metrics, image))
        overview.append(_overview_row(stage, metrics))
    page = _page(pipeline, _overview(overview), sections)
    _write_atomic(out / "index.html", page)
    return out


def _write_atomic(path: Path, text: str) -> None:
    """A killed run leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _overview_row(stage: str, metrics: dict[str, Any]) -> str:
    """Stage, status, rows of data, steps, and each curve's first → last value."""
    e = html.escape
    history, manifest = metrics["history"], metrics["data_manifest"]
    rows = f"{manifest['rows']:,}" if manifest else "–"
    steps = max((row.get("step", 0) for row in history), default=0)
    moves = []
    for panel in CURVES[stage]:
        values = [row[panel[0]] for row in history if panel[0] in row and "step" in row]
        if values:
            moves.append(f"{panel[0]} {values[0]:.3g} → {values[-1]:.3g}")
    return (f'<tr><td><a href="#{stage}">{stage}</a></td><td>{e(metrics["status"])}</td>'
            f"<td>{rows}</td><td>{steps}</td><td>{e('; '.join(moves))}</td></tr>")  # fmt: skip


def _overview(rows: list[str]) -> str:
    return ("<table><tr><th>stage</th><th>status</th><th>data rows</th><th>steps</th>"
            f"<th>first → last</th></tr>{''.join(rows)}</table>")  # fmt: skip


def _section(stage: str, metrics: dict[str, Any], image: Path | None) -> str:
    e = html.escape
    parts = [f'<section id="{stage}"><h2>{e(TITLES[stage])} <small>({e(stage)}: '
             f'{e(metrics["status"])})</small></h2>']  # fmt: skip
    if image is not None:
        parts.append(f'<img src="{e(image.name)}" alt="{e(stage)} curves">')
    final = metrics["final"]
    if final:
        rows = "".join(f"<tr><td>{e(k)}</td><td>{_number(v)}</td></tr>" for k, v in final.items())
        parts.append(f"<h3>Final metrics</h3><table>{rows}</table>")
    parts.append(f'<p>Model: <code>{e(metrics["model"])}</code> · metrics: '
                 f'<a href="{stage}.json">{stage}.json</a></p>')  # fmt: skip
    settings = "".join(
        f"<tr><td>{e(str(k))}</td><td>{e(str(v))}</td></tr>" for k, v in metrics["settings"].items()
    )
    parts.append(f"<details><summary>Training settings</summary><table>{settings}</table>"
                 "</details>")  # fmt: skip
    for title, key in (("Data", "data_manifest"), ("Evaluation data", "eval_data_manifest")):
        if metrics.get(key) is not None:
            parts.append(_data_summary(title, metrics[key]))
    parts.append("</section>")
    return "\n".join(parts)


def _data_summary(title: str, manifest: dict[str, Any]) -> str:
    e = html.escape
    counts, tokens, tokenizer = manifest["counts"], manifest["tokens"], manifest["tokenizer"]
    dropped = ", ".join(
        f"{reason} {n:,}"
        for group in ("dropped_by_reason", "rejected_by_reason")
        for reason, n in counts.get(group, {}).items()
    )
    rows = [
        ("rows written", f"{manifest['rows']:,} in {len(manifest['shards'])} shard(s)"),
        ("records", f"{counts['read']:,} read = {counts['written']:,} written + "
                    f"{counts.get('empty', 0):,} empty + {counts['rejected']:,} rejected + "
                    f"{counts.get('dropped', 0):,} dropped" + (f" ({dropped})" if dropped else "")),
        ("tokens", f"{tokens['written']:,} written, {tokens.get('labels', 0):,} learned"),
        ("tokenizer", f"{tokenizer['path']} (sha256 {tokenizer['sha256'][:12]}…, "
                      f"vocabulary {tokenizer['vocab_size']:,})"),
        ("template", (manifest.get("template") or {}).get("name", "none")),
    ]  # fmt: skip
    table = "".join(f"<tr><td>{e(k)}</td><td>{e(str(v))}</td></tr>" for k, v in rows)
    inputs = "".join(
        f"<tr><td><code>{e(i['path'])}</code></td><td>{i['records']:,}</td>"
        f"<td><code>{e(i['sha256'][:12])}…</code></td></tr>"
        for i in manifest["inputs"]
    )
    return (
        f"<h3>{e(title)} ({e(manifest['stage'])})</h3><table>{table}</table>"
        f"<details><summary>Inputs</summary><table><tr><th>file</th><th>records</th>"
        f"<th>sha256</th></tr>{inputs}</table></details>"
    )


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:.6g}"


def _page(pipeline: Pipeline, overview: str, sections: list[str]) -> str:
    e = html.escape
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    nav = " · ".join(f'<a href="#{s}">{s}</a>' for s in pipeline.stages)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>ferrotune pipeline report</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1d1d1f; }}
h1 {{ margin-bottom: 0.2em; }} h2 {{ border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }}
small {{ color: #666; font-weight: normal; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }}
td, th {{ border: 1px solid #ddd; padding: 2px 8px; text-align: left; vertical-align: top; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
.missing {{ color: #b00; font-weight: bold; }}
</style></head>
<body data-images="pending">
<h1>ferrotune pipeline report</h1>
<p>{e(str(pipeline.source))} → <code>{e(str(pipeline.output))}</code> · written {e(when)} ·
ferrotune {e(__version__)}</p>
<p>{nav} · <a href="#config">configuration</a></p>
{overview}
{"".join(sections)}
<section id="config"><h2>Configuration</h2><pre>{e(pipeline.text)}</pre></section>
<script>
window.addEventListener("load", () => {{
  let loaded = 0;
  const images = document.querySelectorAll("img");
  for (const img of images) {{
    const ok = img.complete && img.naturalWidth > 0;
    img.dataset.loaded = ok ? "yes" : "no";
    if (ok) {{ loaded += 1; continue; }}
    const note = document.createElement("p");
    note.className = "missing";
    note.textContent = "image missing: " + img.getAttribute("src");
    img.after(note);
  }}
  document.body.dataset.images = loaded + "/" + images.length;
}});
</script>
</body></html>
"""
