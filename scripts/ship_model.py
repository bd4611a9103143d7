"""Ship a trained model: copy it into ``pneumolens/weights/``, evaluate and audit it, write ``MODEL_CARD.md``.

    python scripts/ship_model.py runs/default/model.pt [--data DIR] [--note TEXT] [--shift FILE]
        [--oof-threshold CV_DIR] [--cv FILE]

Evaluates on the patient-level validation split (the one the checkpoint's threshold and
calibration were chosen on) and on the official 16-image val folder, runs the shortcut audit
(``docs/audit/shipped/``) and the out-of-distribution evaluation (``docs/ood/shipped/``), then
writes the model card from the checkpoint's own provenance and those results, so every number in
the card is the output of this command. ``--shift FILE`` adds a markdown section of figures
measured elsewhere (the withheld test split's, which come back from the maintainers). Figures go
to ``docs/figures/shipped/``. ``--oof-threshold CV_DIR`` replaces the run's own threshold by the
one chosen on the pooled out-of-fold predictions of the recipe's cross-validation (5 folds of all
of ``train``, not the run's 10 % validation split); ``--cv FILE`` adds that cross-validation's
table (markdown) to the card.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from results_table import training_time_s  # scripts/ is on sys.path when this file runs as a script

from pneumolens.audit import run_audit
from pneumolens.audit.context import KINDS
from pneumolens.checkpoint import SHIPPED, load_checkpoint, save_checkpoint
from pneumolens.commands._common import data_root
from pneumolens.cv import apply_oof_threshold
from pneumolens.data import CLASS_NAMES
from pneumolens.evaluate import evaluate_split
from pneumolens.ood_eval import run_ood_eval

REPO = Path(__file__).resolve().parents[1]
FIGS = REPO / "docs" / "figures" / "shipped"


def _as_cli(command: str) -> str:
    """``/any/path/pneumolens/cli.py train ...`` or ``/any/.venv/bin/pneumolens train ...`` -> ``pneumolens train ...``.

    The recorded command is ``sys.argv``; the card shows it as a reader would type it.
    """
    first, _, rest = command.strip().partition(" ")
    if first.endswith(("pneumolens/cli.py", "/pneumolens")) or first == "pneumolens":
        return f"pneumolens {rest}".strip()
    return command.strip()


def _ci(m: dict, key: str) -> str:
    v, ci = m.get(key), (m.get("ci") or {}).get(key)
    if v is None:
        return "n/a"
    return f"{v:.3f} (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else f"{v:.3f}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _share_text(name: str, m: dict) -> str:
    """One method's summary of the audit: median share outside the lungs, per class, peaks, valid films."""
    notes = [f"{c} films {_pct(b['median'])}" for c, b in (m.get("by_class") or {}).items() if b.get("median") is not None]
    notes.append(f"peak outside on {_pct(m['peak_outside_rate'])} of films")
    text = f"{name} {_pct(m['share_outside']['median'])} ({', '.join(notes)}"
    if m["n_valid"] < m["n_films"]:
        text += f"; {m['n_valid']} of {m['n_films']} films had positive evidence"
    return text + ")"


def _calibration_text(info: dict) -> str:
    """How the card says the probability is calibrated: Platt scaling when there is a bias, else a temperature."""
    t, b = info["temperature"], info.get("bias", 0.0)
    if b:
        return f"Platt-scaled, sigmoid(logit / {t:.3f} + {b:.3f})"
    return f"after temperature scaling (T = {t:.3f})"


def audit_section(audit: dict | None, ood: dict | None) -> str:
    """The card's shortcut-audit and out-of-distribution sections from their metrics.json."""
    parts = []
    if ood:
        sets = [m for m in ood["sets"].values() if m.get("n")]
        parts.append(
            "## Out-of-distribution guard\n"
            f"Every prediction carries `ood_score` and `in_distribution`; threshold {ood['threshold']:.3f}, chosen so that "
            f"{_pct(ood['in_distribution']['flagged'])} of the validation films are flagged. Against {len(sets)} sets of "
            f"images that are not paediatric chest films, the lowest AUROC is {min(m['auroc'] for m in sets):.4f} and the "
            f"lowest flagged share {_pct(min(m['flagged'] for m in sets))} (`pneumolens ood-eval`, "
            "[report](../../docs/ood/shipped/report.md))."
        )
    if audit:
        fam = audit["probes"]["families"]
        names = {"marker": "laterality letter pasted in a corner", "border": "outer border band replaced",
                 "annotation": "text line or ruler burnt in"}  # fmt: skip
        rows = "\n".join(
            f"| {names.get(k, k)} | {_pct(m['flip_rate'])} ({m['flips_to_pneumonia']} → PNEUMONIA, "
            f"{m['flips_to_normal']} → NORMAL) | {m['specificity']['clean']:.3f} → {m['specificity']['probed']:.3f} |"
            for k, m in fam.items()
        )
        methods = (audit.get("explanations") or {}).get("methods") or {}
        shares = "; ".join(
            _share_text(name, m) for name, m in methods.items() if m.get("n_valid")
        )
        chance = next((m.get("uniform_share") for m in methods.values() if m.get("uniform_share") is not None), None)
        where = (
            f"\n\nMedian share of each explanation's positive evidence outside the approximate lung fields, on "
            f"{(audit.get('explanations') or {}).get('n_films')} films: {shares}"
            + (f"; an evenly spread map: {_pct(chance)}." if chance is not None else ".")
            if shares else ""
        )
        context = audit.get("context_swap") or {}
        if context.get("follow_rate") is not None:
            lungs = {name: CLASS_NAMES[lungs_of] for name, lungs_of, _ in KINDS}
            by_kind = ", ".join(f"{_pct(k['follow_rate'])} with {lungs[key]} lungs"
                                for key, k in context["kinds"].items() if k.get("follow_rate") is not None)
            where += (
                f"\n\nContext swap ({context['pairs']} NORMAL/PNEUMONIA pairs crossed both ways: the lung fields of one "
                "film set into the other): the label follows the lungs' film on "
                f"**{_pct(context['follow_rate'])}** of {context['informative']} informative composites ({by_kind}); "
                "100 % = the answer rests on the lungs, 0 % = on the surroundings, 50 % = a coin between them."
            )
        parts.append(
            "## Shortcut audit\n"
            f"`pneumolens audit --split validation` on {audit['n_films']} films ([report](../../docs/audit/shipped/report.md)):\n\n"
            "| probe family | (film, probe) pairs that flip label | specificity, clean → probed |\n|---|---:|---|\n" + rows
            + where
        )
    return "\n\n".join(parts) + ("\n\n" if parts else "")


def card(
    info: dict,
    val: dict,
    official: dict,
    note: str,
    trained_s: tuple[float, int] | None = None,
    extra: str = "",
) -> str:
    p, cfg = info["provenance"], info["provenance"].get("train_config", {})
    if trained_s:
        took = f" in {trained_s[0] / 3600:.1f} h of training in {trained_s[1]} segment(s) (threads: see the command)"
    else:
        took = "" if p.get("interim") else f" in {p.get('wall_s', 0) / 3600:.1f} h of wall time"
    tc = p.get("train_counts", ["?", "?"])
    vc = p.get("validation_counts", ["?", "?"])
    rows = "\n".join(
        f"| {name} | {_ci(val, k)} | {_ci(official, k)} |"
        for name, k in [("ROC AUC", "roc_auc"), ("accuracy", "accuracy"), ("recall (sensitivity)", "recall"),
                        ("specificity", "specificity"), ("precision", "precision"), ("F1", "f1"), ("Brier score", "brier"),
                        ("ECE", "ece")]
    )
    cmd = _as_cli(p.get("training_command") or p.get("command", ""))
    note = f"{note}\n\n" if note else ""
    bg = info.get("shap_background")
    background = (
        f"- SHAP background: {bg['images']} prototype films, the k-means centroids of the training-side films "
        "(`scripts/add_shap_background.py`; each the mean of many films, so no patient's film is stored), used by "
        "`shap` in the CLI, the Python API and the web service alike.\n"
        if bg else ""
    )
    rule = (cfg.get("select_epoch") or "val_loss")
    kept = ("the last epoch" if rule == "last" else "the lowest validation loss") + ", counted from 0"
    oof = p.get("threshold_from")
    if oof:
        chosen_on = (
            f"the pooled out-of-fold predictions of the recipe's {len(oof['folds'])}-fold patient-level "
            f"cross-validation of `train` ({oof['n']} films, `{oof['cv_dir']}`, each fold's predictions "
            f"calibrated as this model is, {oof.get('calibrate', 'temperature')}; the run's own validation "
            f"split would have given {oof['run_threshold']:.3f})"
        )
    else:
        chosen_on = "the patient-level validation split"
    threshold_step = (
        f"The shipped threshold: `python scripts/ship_model.py OUT/model.pt --oof-threshold {oof['cv_dir']}` "
        f"(the run alone takes {oof['run_threshold']:.3f} from its validation split).\n"
        if oof else ""
    )
    return f"""# Model card: PneumoLens CNN-LSTM (shipped model)

{note}**Research and education use only — not a medical device.** Do not use it to diagnose, treat or
triage patients.

## What it is
- Architecture: the original project's CNN-LSTM — three conv blocks (32/64/128 filters), the
  {info['config']['input_size'] // 8}x{info['config']['input_size'] // 8}x128 map read as a sequence of rows by LSTM(256) and LSTM(128), two dense layers,
  one PNEUMONIA logit. {info['parameters']:,} parameters. Input: 8-bit grayscale resized to
  {info['config']['input_size']}x{info['config']['input_size']} (aspect ratio not kept), scaled to [0, 1].
- Output: probability of PNEUMONIA, {_calibration_text(info)}, fitted on validation;
  label PNEUMONIA when the probability is ≥ **{info['threshold']:.3f}** (rule: `{info['threshold_rule']}`, chosen on
  {chosen_on} — never on a test set).
{background}
## Training data
Kermany et al. 2018 (Cell 172(5):1122-1131, doi:10.1016/j.cell.2018.02.010), CC BY 4.0, via the Kaggle
dataset `paultimothymooney/chest-xray-pneumonia`: the official **train** split only. Paediatric
(1-5 years) anterior-posterior chest films from one hospital (Guangzhou Women and Children's Medical
Center). Validation: {p.get('val_fraction', 0.1):.0%} of the training *patients*, stratified by class, split seed
{p.get('split_seed', 0)} — no child has films on both sides. Train: {tc[0]} NORMAL + {tc[1]} PNEUMONIA images;
validation: {vc[0]} NORMAL + {vc[1]} PNEUMONIA. Data manifest hash `{p.get('data_manifest')}`.

## Recipe and how to reproduce it
Recipe `{p.get('recipe')}`; {p.get('epochs_run')} epochs run, weights of epoch {p.get('best_epoch')} ({kept});
trained on a 2-core CPU{took}. Command:

```
{cmd}
```

(then `--resume` after any interruption; resuming is exact, tested, from commit cd58101 on). Same command, same seed, same thread count ⇒ the same weights on CPU (torch {p.get('torch')}, commit
`{p.get('git_commit')}` at the export). Full configuration: `pneumolens info --json` → `provenance.train_config`.
{threshold_step}
## Quality
Patient-level validation split (n = {val['n']}) and the official 16-image val folder (n = {official['n']}; too small
for conclusions, reported because it is official). 95% CIs: bootstrap over patients, 1000 resamples.
The official test split (624 images) is withheld from the developers and evaluated separately.

| metric | validation (patient-level) | official val (16) |
|---|---|---|
{rows}

Validation confusion matrix at the threshold: {val['confusion']}. Recall by subtype:
{json.dumps(val.get('subtype_recall', {}))}.

Figures (from this command): `docs/figures/shipped/` — ROC, PR, reliability, confusion matrix.

{extra}## Limits
- One hospital, one population (young children), one view (AP). No adult films, no lateral views, no
  other findings: anything that is not "normal vs pneumonia" in a child is out of scope.
- The dataset's test films are known to differ from its training films; models that score highly on
  a validation split of `train` often lose several points on `test`. Validation figures here are
  therefore optimistic estimates of performance on new data.
- Bacterial vs viral pneumonia is not predicted.
- Explanations (Grad-CAM, SHAP, LIME, ...) show what drives the model, not where disease is.

## How to cite
Cite the dataset (Kermany et al., Cell 2018) and this repository.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description="copy a model into the package, evaluate it, write MODEL_CARD.md")
    ap.add_argument("checkpoint", type=Path,
                    help="the trained model.pt (with a SHAP background: scripts/add_shap_background.py)")
    ap.add_argument("--data", help="the chest_xray folder (default: as the CLI finds it)")
    ap.add_argument("--note", default="", help="a line at the top of the card (e.g. an interim model)")
    ap.add_argument("--shift", type=Path, help="markdown section with figures measured elsewhere (withheld test split)")
    ap.add_argument("--skip-audit", action="store_true", help="no audit / OOD evaluation (quick re-ship of the card)")
    ap.add_argument("--oof-threshold", type=Path, metavar="CV_DIR",
                    help="threshold from the pooled out-of-fold predictions of this cross-validation (pneumolens cv)")
    ap.add_argument("--cv", type=Path, metavar="FILE", help="markdown section: the cross-validation that chose the recipe")
    args = ap.parse_args()
    for given in (args.checkpoint, args.cv, args.shift):  # before the shipped file is replaced
        if given is not None and not given.is_file():
            raise SystemExit(f"{given}: no such file")
    if load_checkpoint(args.checkpoint).shap_background is None:  # the CLI, API and web page explain SHAP against it
        raise SystemExit(f"{args.checkpoint}: no SHAP background; add one first: "
                         f"python scripts/add_shap_background.py {args.checkpoint}")
    root = data_root(args.data)  # as the CLI finds it
    SHIPPED.parent.mkdir(parents=True, exist_ok=True)
    if args.oof_threshold:
        apply_oof_threshold(args.checkpoint, args.oof_threshold, SHIPPED)
    else:
        shutil.copyfile(args.checkpoint, SHIPPED)
    ck = load_checkpoint(SHIPPED)
    val = evaluate_split(SHIPPED, root, "validation", FIGS / "validation", progress=False)
    if args.oof_threshold:  # the checkpoint's own validation figures, at the threshold it now carries
        shipped = load_checkpoint(SHIPPED)
        keep = shipped.metrics.get("validation_at_run_threshold") or val  # the same figures training stores
        shipped.metrics = {**shipped.metrics, "validation": {k: val[k] for k in keep if k in val}}
        save_checkpoint(shipped, SHIPPED)
        ck = shipped
    official = evaluate_split(SHIPPED, root, "val", FIGS / "val", progress=False)
    trained = training_time_s(args.checkpoint.parent)  # None when the run folder has no TensorBoard events
    audit = ood = None
    if not args.skip_audit:
        audit = run_audit(SHIPPED, root, split="validation", out=REPO / "docs" / "audit" / "shipped", progress=False,
                          command="pneumolens audit --checkpoint pneumolens/weights/model.pt --split validation")  # fmt: skip
        ood = run_ood_eval(load_checkpoint(SHIPPED), root, REPO / "docs" / "ood" / "shipped", progress=False)
    extra = audit_section(audit, ood) + "".join(
        f.read_text().strip() + "\n\n" for f in (args.cv, args.shift) if f is not None
    )
    (SHIPPED.parent / "MODEL_CARD.md").write_text(card(ck.info(), val, official, args.note, trained, extra))
    print(f"shipped {args.checkpoint} -> {SHIPPED}; validation AUC {val['roc_auc']:.4f}, accuracy {val['accuracy']:.4f}")


if __name__ == "__main__":
    main()
