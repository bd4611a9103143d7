"""Explain image files end to end: what ``pneumolens explain`` does, callable from Python.

Per image it writes ``<stem>.png`` (the panel: the film in its own aspect ratio with the maps
stretched onto it, see :mod:`pneumolens.explain.render`), ``<stem>.json`` (prediction, true label
when known, per-method parameters, ``timings_s``) and, if asked, ``<stem>.<method>.npy`` (float32
maps at the model's input size); then an ``index.html`` gallery for the run.
"""

from __future__ import annotations

import html
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..errors import InvalidImageError
from ..jsonable import dumps, jsonable
from ..ood import WARNING
from .base import LogitFn
from .core import PERTURBATION, explain
from .render import display_film, prediction_title, render_panel
from .shap import background_beside, build_background, load_background

log = logging.getLogger(__name__)

#: A method parameter that is an array with more elements than this is recorded as ``"array(<shape>)"``.
MAX_PARAM_ARRAY = 64


@dataclass(frozen=True)
class MethodSpec:
    """One requested method: its label in file names and figures, its name, and its settings."""

    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)


def fast_forward(model: Any) -> LogitFn | None:
    """A faster no-gradient logit function for perturbation methods (:func:`pneumolens.backends.optimize`).

    Returns None (use the model itself) for models other than a ``CnnLstm`` on the CPU.
    """
    from ..model import CnnLstm

    if not isinstance(model, CnnLstm) or next(model.parameters()).device.type != "cpu":
        return None
    from ..backends import optimize

    return optimize(model, backend="auto")


def fast_grad_forward(model: Any) -> LogitFn | None:
    """A faster differentiable copy for ``ig`` and ``shap``: the BatchNorm-folded, channels-last CnnLstm.

    Same function (BatchNorm folded into the weights, Dropout removed: eval mode), so the same
    input gradients up to float rounding, at less cost per forward + backward on the CPU (``bench/bench_explain.py``).
    Returns None (use the model itself) for other models or devices.
    """
    from ..model import CnnLstm

    if not isinstance(model, CnnLstm) or next(model.parameters()).device.type != "cpu":
        return None
    from ..folding import FoldedCnnLstm

    return FoldedCnnLstm(model)


def fast_forwards(model: Any, names: Sequence[str] = ()) -> tuple[LogitFn | None, LogitFn | None]:
    """``(forward, grad_forward)`` for :func:`~pneumolens.explain.explain`, built only if a method in ``names`` uses it."""
    from .core import INPUT_GRADIENT

    forward = fast_forward(model) if any(n in PERTURBATION for n in names) else None
    grad = fast_grad_forward(model) if any(n in INPUT_GRADIENT for n in names) else None
    return forward, grad


def resolve_background(
    background_data: str | Path | None,
    checkpoint: str | Path | None,
    size: int,
    n: int = 32,
    seed: int = 0,
    provenance: dict[str, Any] | None = None,
    stored: np.ndarray | None = None,
    fallback_data: str | Path | None = None,
) -> tuple[np.ndarray | str, str]:
    """The SHAP background, and where it came from: the same one the web service uses, by default.

    Order: ``background_data`` (the CLI's explicit ``--background-data DIR``: ``n`` films sampled
    from the training side of the checkpoint's patient-level split of ``DIR/train``); else the
    films stored in the checkpoint (``stored``: :attr:`Checkpoint.shap_background
    <pneumolens.checkpoint.Checkpoint.shap_background>`, which the service uses too); else
    ``background.npy`` beside the checkpoint (or the shipped model); else ``fallback_data`` sampled
    like ``background_data`` (e.g. the demo's dataset); else the ``blur`` fallback, with a warning.
    No dataset is looked up on its own: the CLI and the service must explain against the same
    background.
    """
    if background_data is not None:
        prov = provenance or {}
        arr = build_background(background_data, n=n, size=size, seed=seed,
                               val_fraction=float(prov.get("val_fraction", 0.1)), split_seed=int(prov.get("split_seed", 0)))
        return arr, f"{len(arr)} training images from {background_data}/train (patient-level training side)"
    if stored is not None:
        return np.asarray(stored), f"{len(stored)} training films stored with the model"
    from ..checkpoint import SHIPPED

    beside = background_beside(checkpoint if checkpoint is not None else SHIPPED)
    if beside.is_file():
        arr = load_background(beside)
        if arr.shape[1:] == (size, size):
            return arr, str(beside)
        log.warning("%s holds %dx%d images, the model takes %d: not used", beside, arr.shape[1], arr.shape[2], size)
    if fallback_data is not None:
        return resolve_background(fallback_data, checkpoint, size, n=n, seed=seed, provenance=provenance)
    log.warning("shap: this model has no stored background (pass --background-data DIR, or store one with "
                "scripts/add_shap_background.py); using a blurred copy of each image")
    return "blur", "fallback: blurred image"


def unique_stems(files: Sequence[str | Path]) -> list[str]:
    """File stems made safe for file names and unique within the run (``a``, ``a-2``, ...)."""
    out, seen = [], {}
    for f in files:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(f).stem) or "image"
        n = seen.get(stem, 0) + 1
        seen[stem] = n
        out.append(stem if n == 1 else f"{stem}-{n}")
    return out


def label_from_layout(path: str | Path, class_names: Sequence[str]) -> str | None:
    """The true label a dataset's folder layout gives a file: its folder's name when that is a
    class name (``.../NORMAL/x.jpeg`` → ``NORMAL``, any case), else None."""
    folder = Path(path).parent.name.upper()
    return next((c for c in class_names if c.upper() == folder), None)


def _true_label(true_labels: Mapping[str, str] | None, file: str) -> str | None:
    """``file``'s entry in ``true_labels``, by the name as given or by its resolved path."""
    if not true_labels:
        return None
    return true_labels.get(file) or true_labels.get(str(Path(file).resolve()))


def film_for_display(path: str | Path, fallback: np.ndarray) -> np.ndarray:
    """The decoded film shrunk for the panel (:func:`~pneumolens.explain.render.display_film`);
    ``fallback`` (the model input) if the file no longer decodes."""
    from ..errors import PneumoLensError
    from ..io import read_image
    from .render import DISPLAY_SIDE

    try:
        return display_film(read_image(path, draft_size=DISPLAY_SIDE))
    except (PneumoLensError, OSError) as exc:
        log.warning("%s: drawing the model input instead of the film (%s)", path, exc)
        return fallback


def safe_label(label: str) -> str:
    """A method label usable in a file name (``gradcam:layer=a.b`` → ``gradcam_layer_a.b``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label)


def explain_files(
    files: Sequence[str | Path],
    predictor: Any,
    methods: Sequence[MethodSpec],
    out: str | Path,
    seed: int = 0,
    save_maps: bool = False,
    skip_bad: bool = False,
    background: np.ndarray | str | None = None,
    background_source: str = "",
    forward: LogitFn | None = None,
    grad_forward: LogitFn | None = None,
    progress: bool = True,
    on_skip: Callable[[str], None] | None = None,
    overwrite: bool = False,
    true_labels: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Explain every file with every method; returns the per-image records (as written to JSON).

    An image already explained in ``out`` by an earlier run with the same file, model output,
    seed and methods (its JSON, panel and maps on disk) is kept, not redone: an interrupted run
    over a large folder continues where it stopped.

    Args:
        files: image paths.
        predictor: a :class:`~pneumolens.inference.Predictor` (model, threshold, temperature, input size).
        methods: what to run, in panel order.
        out: output folder (created).
        seed: seeds every method. Default: 0.
        save_maps: also write ``<stem>.<method>.npy``.
        skip_bad: report unreadable files through ``on_skip`` instead of raising.
        background: SHAP background (training images, or a fallback name).
        background_source: where the background came from, for the JSON.
        forward, grad_forward: fast logit functions for perturbation and input-gradient methods
            (see :func:`fast_forwards`). Default: the model itself.
        overwrite: redo images that an earlier run already explained.
        true_labels: file (as given in ``files``, or its resolved path) → its true class name (e.g.
            from a labels CSV: :func:`pneumolens.labels.read_labels`);
            a file not in it takes its folder's name when that is a class name (the dataset's
            layout, :func:`label_from_layout`). Shown in the panel's title and kept in the JSON.

    Raises:
        InvalidImageError: the first unreadable file, unless ``skip_bad``; or no readable file at all.
    """
    from ..cache import load_images

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [str(f) for f in files]
    loaded = load_images(files, predictor.size, use_cache=False, progress=False)
    if loaded.bad and not skip_bad:
        raise InvalidImageError(f"{loaded.bad[0][1]} (pass --skip-bad to explain the other files)")
    for _, reason in loaded.bad:
        if on_skip is not None:
            on_skip(reason)
    if not loaded.kept:
        raise InvalidImageError(f"none of the {len(files)} files could be read; nothing to explain")
    kept = [files[i] for i in loaded.kept]
    predictions = predictor.predict_arrays(loaded.images, kept)
    stems = unique_stems(kept)
    class_names = tuple(getattr(getattr(predictor, "checkpoint", None), "class_names", ("NORMAL", "PNEUMONIA")))
    records = []
    bar = tqdm(total=len(kept), desc="explaining", unit="img", disable=not progress)
    reused = 0
    for image, pred, stem in zip(loaded.images, predictions, stems):
        done = None if overwrite else _earlier_record(out, stem, pred, seed, methods, save_maps)
        if done is not None:
            records.append(done)
            reused += 1
            bar.update()
            continue
        maps, record = {}, {
            "file": pred.file,
            "panel": f"{stem}.png",
            "prediction": pred.to_dict(),
            "input_size": int(predictor.size),
            "seed": int(seed),
            "methods": {},
            "timings_s": {},
        }
        truth = _true_label(true_labels, pred.file) or label_from_layout(pred.file, class_names)
        if truth is not None:
            record["true_label"] = truth
        for spec in methods:
            params = dict(spec.params)
            if spec.name == "shap":
                params.setdefault("background", background)
            att = explain(predictor.model, image[None], spec.name, seed=seed, forward=forward,
                          grad_forward=grad_forward, **params)
            amap = att.maps[0]
            maps[spec.label] = amap
            entry = {"params": jsonable(att.params, max_array=MAX_PARAM_ARRAY), "min": float(amap.min()),
                     "max": float(amap.max())}
            if spec.name == "shap" and background_source:
                entry["params"]["background_source"] = background_source
            if save_maps:
                name = f"{stem}.{safe_label(spec.label)}.npy"
                np.save(out / name, amap.astype(np.float32))
                entry["map"] = name
            record["methods"][spec.label] = entry
            record["timings_s"][spec.label] = round(att.elapsed_s, 4)
        title = prediction_title(Path(pred.file).name, pred.probability, pred.label, pred.threshold,
                                 pred.in_distribution, true_label=truth)
        render_panel(film_for_display(pred.file, image), maps, out / record["panel"], title=title,
                     flagged=pred.in_distribution is False)
        (out / f"{stem}.json").write_text(dumps(record, indent=2) + "\n", encoding="utf-8")
        records.append(record)
        bar.update()
    bar.close()
    if reused:
        log.info("%d of %d image(s) were already explained in %s by an earlier run: kept", reused, len(kept), out)
    write_index(out, records, [m.label for m in methods])
    return records


def _earlier_record(
    out: Path, stem: str, pred: Any, seed: int, methods: Sequence[MethodSpec], save_maps: bool
) -> dict[str, Any] | None:
    """The record an earlier run wrote for this image, if it is complete and made the same way."""
    try:
        record = json.loads((out / f"{stem}.json").read_text(encoding="utf-8"))
        same = (
            record["file"] == pred.file
            and record["seed"] == int(seed)
            and list(record["methods"]) == [m.label for m in methods]
            and abs(record["prediction"]["probability"] - pred.probability) < 1e-6
            and record["prediction"].get("in_distribution") == pred.in_distribution  # and the guard's flag
            and (out / record["panel"]).is_file()
        )
        if same and save_maps:
            same = all(e.get("map") and (out / e["map"]).is_file() for e in record["methods"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return record if same else None


def write_index(out: Path, records: Sequence[dict[str, Any]], methods: Sequence[str]) -> Path:
    """An ``index.html`` gallery: one card per image (panel, prediction, JSON link)."""
    cards = []
    for r in records:
        p = r["prediction"]
        name = html.escape(Path(r["file"]).name)
        stem = html.escape(Path(r["panel"]).stem)
        timings = ", ".join(f"{html.escape(k)} {v:.2f} s" for k, v in r["timings_s"].items())
        warning = (f'<br><strong class="ood">Warning: this image {html.escape(WARNING)}</strong>'
                   if p.get("in_distribution") is False else "")
        cards.append(
            f'<figure><a href="{html.escape(r["panel"])}"><img src="{html.escape(r["panel"])}" alt="{name}" loading="lazy"></a>'
            f"<figcaption><b>{name}</b> — {html.escape(p['label'])}, p(pneumonia) = {p['probability']:.3f} "
            f"(threshold {p['threshold']:.3f})"
            + (f"; true label {html.escape(r['true_label'])}" if r.get("true_label") else "")
            + f"{warning}"
            f"<br><small>{timings} · <a href=\"{stem}.json\">JSON</a></small>"
            "</figcaption></figure>"
        )
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>PneumoLens explanations</title>
<style>body{{font-family:sans-serif;margin:1.5em}} figure{{margin:0 0 2em}} img{{max-width:100%;border:1px solid #ccc}}
figcaption{{margin-top:.3em}} .ood{{color:#b00020}}</style></head><body>
<h1>PneumoLens explanations</h1>
<p>{len(records)} image(s); methods: {html.escape(', '.join(methods))}. Red = evidence for pneumonia, blue = against
(Grad-CAM: brighter = more evidence). Research and education use only: not a medical device.</p>
{''.join(cards)}
</body></html>
"""
    path = out / "index.html"
    path.write_text(doc, encoding="utf-8")
    return path
