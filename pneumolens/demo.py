"""The main job of ``make demo``: evaluate the model on validation, explain a few films, summarise.

Uses the shipped model when there is one; otherwise trains a short model first (a couple of
minutes) so the demo still shows the whole pipeline end to end.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from .checkpoint import SHIPPED
from .data import find_split, resolve_data_root
from .jsonable import dumps

log = logging.getLogger(__name__)

DEMO_METHODS = ("gradcam", "shap", "lime")


def _fmt_ci(m: dict[str, Any], key: str) -> str:
    v, ci = m.get(key), (m.get("ci") or {}).get(key)
    if v is None:
        return "n/a"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


def run_demo(
    data: str | Path | None = None,
    out: str | Path = "runs/demo",
    checkpoint: str | Path | None = None,
    n_explain: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate on the patient-level validation split and the official val folder, explain
    ``n_explain`` official-val films (half of each class), and write ``out/summary.md``."""
    from .evaluate import evaluate_split

    t0 = time.time()
    root = resolve_data_root(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if checkpoint is None and not SHIPPED.exists():
        from .config import load_config
        from .training import fit

        log.warning("no shipped model in this install: training a short demo model first (about 2-5 minutes)")
        checkpoint = fit(load_config("debug"), root, out / "model", max_images=300, progress=progress, preset="debug").model_path
    summary: dict[str, Any] = {"checkpoint": str(checkpoint or SHIPPED), "data": str(root), "splits": {}}
    splits = ["validation", "val"] + (["test"] if (root / "test").is_dir() else [])
    for split in splits:
        m = evaluate_split(checkpoint, root, split, out / split, progress=progress)
        summary["splits"][split] = {k: m.get(k) for k in ("n", "accuracy", "recall", "specificity", "roc_auc", "threshold", "ci")}

    if n_explain > 0:
        summary["explanations"] = _explain_examples(root, checkpoint, out / "explanations", n_explain, progress)
    summary["wall_s"] = round(time.time() - t0, 1)
    (out / "summary.json").write_text(dumps(summary, indent=2) + "\n")
    _write_summary_md(out, summary)
    return summary


def _explain_examples(root: Path, checkpoint: str | Path | None, out: Path, n: int, progress: bool) -> dict[str, Any]:
    from .explain.runner import MethodSpec, explain_files, fast_forwards, resolve_background
    from .inference import Predictor

    records = find_split(root, "val")
    per_class = max(1, n // 2)
    files = [r.path for r in records if r.label == 0][:per_class] + [r.path for r in records if r.label == 1][:per_class]
    predictor = Predictor(checkpoint)
    background, source = resolve_background(None, checkpoint, predictor.size, provenance=predictor.checkpoint.provenance,
                                            stored=predictor.checkpoint.shap_background, fallback_data=root)
    methods = [MethodSpec(m, m) for m in DEMO_METHODS]
    forward, grad_forward = fast_forwards(predictor.model, DEMO_METHODS)
    recs = explain_files(
        files, predictor, methods, out, background=background, background_source=source,
        forward=forward, grad_forward=grad_forward, progress=progress, save_maps=True,
    )
    return {"folder": str(out), "files": [r["file"] for r in recs], "timings_s": [r["timings_s"] for r in recs]}


def _write_summary_md(out: Path, s: dict[str, Any]) -> None:
    lines = [
        "# PneumoLens demo",
        "",
        f"Model: `{s['checkpoint']}` · data: `{s['data']}` · {s['wall_s']} s.",
        "Research and education use only: not a medical device.",
        "",
        "| split | n | accuracy | recall | specificity | ROC AUC | threshold |",
        "|---|---:|---|---|---|---|---:|",
    ]
    names = {"validation": "validation (patient-level, from train)", "val": "official val (16 images)", "test": "official test"}
    for split, m in s["splits"].items():
        lines.append(
            f"| [{names.get(split, split)}]({split}/report.md) | {m['n']} | {_fmt_ci(m, 'accuracy')} | {_fmt_ci(m, 'recall')} "
            f"| {_fmt_ci(m, 'specificity')} | {_fmt_ci(m, 'roc_auc')} | {m['threshold']:.3f} |"
        )
    if "explanations" in s:
        lines += ["", f"Explanations ({', '.join(DEMO_METHODS)}): [gallery](explanations/index.html)", ""]
        for f in s["explanations"]["files"]:
            stem = Path(f).stem
            lines.append(f"![{stem}](explanations/{stem}.png)")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
