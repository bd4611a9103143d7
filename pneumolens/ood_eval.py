"""Fit the out-of-distribution guard for a checkpoint, and measure it against images that are not films.

``fit_guard`` rebuilds the checkpoint's own training / validation split (from its provenance),
fits :class:`~pneumolens.ood.OodGuard` on the training films and chooses its threshold on the
validation films. ``evaluate_guard`` scores the validation films (in distribution) against sets
built here without downloads — constant images, noise, gradients, scikit-image's sample
photographs, CT / MR / ultrasound slices from pydicom's test files, and corrupted validation films
(half-black, rotated 90°, inverted grey scale, heavy JPEG artefacts, heavy blur) — and reports the
AUROC of the score and the share flagged per set. ``pneumolens ood-eval`` writes metrics.json,
report.md and a figure.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from .cache import load_images
from .checkpoint import Checkpoint
from .errors import DatasetError
from .evaluate import training_split
from .io import read_image, resize_square
from .jsonable import dumps
from .ood import WARNING, OodGuard

log = logging.getLogger(__name__)

#: What each out-of-distribution set holds (report.md and metrics.json).
SET_DESCRIPTIONS = {
    "constant": "uniform images from black to white (32 levels)",
    "noise": "uniform noise, and Gaussian noise at several means and spreads",
    "gradients": "linear gradients at 16 angles and radial gradients",
    "photographs": "scikit-image's bundled sample images (skimage.data), in grey",
    "ct_mr_us": "CT, MR and ultrasound slices from pydicom's bundled test files",
    "half_black": "validation films with their lower half set to black",
    "rotated_90": "validation films rotated by 90 degrees",
    "inverted": "validation films with inverted grey scale",
    "jpeg_q5": "validation films re-saved as JPEG at quality 5 (heavy block artefacts)",
    "blurred": "validation films under a Gaussian blur of 2 % of their width",
}

#: skimage.data images bundled with the package (others are downloaded on first use: skipped).
PHOTOGRAPHS = (
    "astronaut", "brick", "camera", "cat", "checkerboard", "clock", "coffee", "coins", "colorwheel",
    "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms",
    "moon", "page", "retina", "rocket", "text", "chelsea",
)  # fmt: skip


def fit_guard(checkpoint: Checkpoint, root: str | Path, progress: bool = True, max_flagged: float = 0.01) -> OodGuard:
    """Fit the guard on the checkpoint's training films; threshold on its validation films."""
    train, val = training_split(root, checkpoint.provenance)
    size = checkpoint.input_size
    x_train = load_images([r.path for r in train], size, progress=progress, desc="training films").images
    x_val = load_images([r.path for r in val], size, progress=progress, desc="validation films").images
    return OodGuard.fit(x_train, x_val, max_flagged=max_flagged)


def _gray(arr: np.ndarray) -> np.ndarray:
    """Any sample image → 2-D uint8 stretched to 0..255."""
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    while a.ndim > 2 and a.shape[-1] not in (3, 4):
        a = a[a.shape[0] // 2]  # middle frame of a multi-frame volume
    if a.ndim == 3:
        a = a[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    a = a.astype(np.float64)
    span = a.max() - a.min()
    return np.zeros(a.shape, np.uint8) if span == 0 else ((a - a.min()) / span * 255).round().astype(np.uint8)


def synthetic_sets(size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Constant images, noise and gradients, uint8 (N, size, size)."""
    rng = np.random.default_rng(seed)
    side = 256
    constant = [np.full((side, side), v, np.uint8) for v in np.linspace(0, 255, 32).round()]
    noise = [rng.integers(0, 256, (side, side)).astype(np.uint8) for _ in range(16)]
    noise += [
        np.clip(rng.normal(m, s, (side, side)), 0, 255).astype(np.uint8) for m in (64, 128, 192) for s in (10, 40, 80)
    ]
    yy, xx = np.mgrid[0:side, 0:side] / (side - 1)
    gradients = [_gray(np.cos(a) * xx + np.sin(a) * yy) for a in np.linspace(0, np.pi, 16)]
    r = np.hypot(xx - 0.5, yy - 0.5) * 2
    gradients += [_gray(np.clip(1 - r / (1 + k / 4), 0, 1)) for k in range(8)]
    return {
        name: np.stack([resize_square(a, size) for a in images])
        for name, images in (("constant", constant), ("noise", noise), ("gradients", gradients))
    }


def photograph_set(size: int) -> np.ndarray:
    """scikit-image's bundled sample photographs, uint8 (N, size, size)."""
    import skimage.data

    out = []
    for name in PHOTOGRAPHS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = getattr(skimage.data, name)()
        except Exception as exc:  # noqa: BLE001 - a sample that needs a download: skip it
            log.debug("skimage.data.%s unavailable: %s", name, exc)
            continue
        out.append(resize_square(_gray(img), size))
    return np.stack(out) if out else np.zeros((0, size, size), np.uint8)


def medical_set(size: int) -> np.ndarray:
    """CT, MR and ultrasound slices among pydicom's bundled test files, uint8 (N, size, size)."""
    import pydicom
    from pydicom.data import get_testdata_files

    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = get_testdata_files("*.dcm")
    out = []
    for f in sorted(files):
        try:
            with warnings.catch_warnings():  # pydicom warns about the odd encodings its test files exercise
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(f)
                if getattr(ds, "Modality", "") not in ("CT", "MR", "US"):
                    continue
                out.append(resize_square(_gray(ds.pixel_array), size))
        except Exception as exc:  # noqa: BLE001 - a test file this install cannot decode: skip it
            log.debug("%s: %s", f, exc)
    return np.stack(out) if out else np.zeros((0, size, size), np.uint8)


def _jpeg(arr: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))


def corrupted_sets(films: list[np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Corrupted copies of full-resolution films (uint8 2-D arrays), each resized to the model input."""
    makers: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "half_black": lambda a: np.where(np.arange(a.shape[0])[:, None] < a.shape[0] // 2, a, 0).astype(np.uint8),
        "rotated_90": lambda a: np.ascontiguousarray(np.rot90(a)),
        "inverted": lambda a: 255 - a,
        "jpeg_q5": lambda a: _jpeg(a, 5),
        "blurred": lambda a: np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(0.02 * a.shape[1]))),
    }
    return {name: np.stack([resize_square(make(f), size) for f in films]) for name, make in makers.items()}


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(score of an outside image > score of an inside one), ties counted half (Mann-Whitney)."""
    inside, outside = np.asarray(inside, float), np.asarray(outside, float)
    both = np.concatenate([inside, outside])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    for v in np.unique(both):  # average ranks of ties
        tie = both == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    r_out = ranks[len(inside) :].sum()
    return float((r_out - len(outside) * (len(outside) + 1) / 2) / (len(inside) * len(outside)))


def evaluate_guard(guard: OodGuard, inside: np.ndarray, sets: dict[str, np.ndarray]) -> dict[str, Any]:
    """AUROC and flagged share per set; the in-distribution films' flagged share."""
    s_in = guard.score(inside)
    result: dict[str, Any] = {
        "threshold": guard.threshold,
        "in_distribution": {"n": len(inside), "flagged": float(np.mean(s_in > guard.threshold)),
                            "score_median": float(np.median(s_in)), "score_p99": float(np.percentile(s_in, 99))},
        "sets": {},
    }  # fmt: skip
    for name, images in sets.items():
        if len(images) == 0:
            result["sets"][name] = {"n": 0, "auroc": None, "flagged": None, "description": SET_DESCRIPTIONS.get(name, "")}
            continue
        s = guard.score(images)
        result["sets"][name] = {
            "n": len(images),
            "auroc": auroc(s_in, s),
            "flagged": float(np.mean(s > guard.threshold)),
            "score_median": float(np.median(s)),
            "description": SET_DESCRIPTIONS.get(name, ""),
        }
    return result


def run_ood_eval(
    checkpoint: Checkpoint,
    root: str | Path,
    out: str | Path,
    n_films: int = 100,
    guard: OodGuard | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score validation films against the out-of-distribution sets; write metrics.json, report.md, ood.png.

    Args:
        checkpoint: the model whose guard is measured (``checkpoint.ood``); without one, a guard
            is fitted here first (and reported as such).
        root: the dataset root (its ``train`` split).
        out: output folder.
        n_films: validation films corrupted for the corrupted-film sets. Default: 100.
        guard: measure this guard instead of the checkpoint's.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = checkpoint.input_size
    fitted_here = False
    guard = guard or getattr(checkpoint, "ood", None)
    if guard is None:
        log.info("the checkpoint has no out-of-distribution guard: fitting one on its training films")
        guard, fitted_here = fit_guard(checkpoint, root, progress=progress), True
    _, val = training_split(root, checkpoint.provenance)
    inside = load_images([r.path for r in val], size, progress=progress, desc="validation films").images
    if len(inside) == 0:
        raise DatasetError(f"{root}: no readable validation films")
    films = []
    for r in val[: max(0, n_films)]:
        try:
            films.append(read_image(r.path))
        except Exception as exc:  # noqa: BLE001 - unreadable film: it is not corrupted, just absent
            log.warning("%s: skipped (%s)", r.path, exc)
    sets = {**synthetic_sets(size), "photographs": photograph_set(size), "ct_mr_us": medical_set(size)}
    if films:
        sets.update(corrupted_sets(films, size))
    result = evaluate_guard(guard, inside, sets)
    try:
        official = load_images([r.path for r in _official_val(root)], size, progress=False).images
        if len(official):
            result["official_val"] = {"n": len(official), "flagged": float(np.mean(guard.score(official) > guard.threshold))}
    except DatasetError:
        pass
    result["guard"] = {"method": "pca-shape+statistics/v1", "fitted_here": fitted_here,
                       "flagged_share_at_fit": guard.flagged_share}  # fmt: skip
    (out / "metrics.json").write_text(dumps(result, indent=2) + "\n")
    _figure(guard, inside, sets, out / "ood.png")
    (out / "report.md").write_text(_report(result))
    return result


def _official_val(root: str | Path) -> list:
    from .data import find_split

    return find_split(root, "val")


def _figure(guard: OodGuard, inside: np.ndarray, sets: dict[str, np.ndarray], path: Path) -> None:
    """Score distributions per set beside the threshold, and one example of each set."""
    from matplotlib.figure import Figure

    names = ["validation films"] + [n for n, x in sets.items() if len(x)]
    scores = [guard.score(inside)] + [guard.score(sets[n]) for n in names[1:]]
    fig = Figure(figsize=(11, 6), layout="constrained")
    grid = fig.add_gridspec(2, len(names), height_ratios=(3, 1))
    ax = fig.add_subplot(grid[0, :])
    rng = np.random.default_rng(0)
    for i, s in enumerate(scores):
        ax.scatter(i + rng.uniform(-0.25, 0.25, len(s)), s, s=6, alpha=0.5,
                   color="tab:blue" if i == 0 else "tab:red")  # fmt: skip
    ax.axhline(guard.threshold, color="k", ls="--", lw=1, label=f"threshold ({guard.threshold:.2f}): above = flagged")
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], rotation=20, ha="right")
    ax.set_ylabel("OOD score (higher = less like the training films)")
    ax.set_title("Out-of-distribution score: validation films (blue) against images that are not films (red)")
    ax.legend(loc="lower right", frameon=False)
    ax.margins(y=0.08)
    examples = [inside[0]] + [sets[n][0] for n in names[1:]]
    for i, (name, img) in enumerate(zip(names, examples)):
        a = fig.add_subplot(grid[1, i])
        a.imshow(img, cmap="gray", vmin=0, vmax=255)
        a.set_title(name.replace("_", " "), fontsize=8)
        a.axis("off")
    fig.savefig(path, dpi=110)


def _report(result: dict[str, Any]) -> str:
    ind = result["in_distribution"]
    lines = [
        "# Out-of-distribution guard",
        "",
        f"A flagged prediction keeps its probability and label and carries the warning: *{WARNING}*.",
        "Score: the largest of three standardised distances from the training films (shape residual,",
        "shape typicality, image statistics; see `pneumolens/ood.py`).",
        f"Threshold {result['threshold']:.3f}, chosen so that at most 1 % of the validation films are flagged.",
        "",
        f"Validation films (in distribution): {ind['n']}, flagged {ind['flagged']:.1%}.",
    ]
    if "official_val" in result:
        ov = result["official_val"]
        lines.append(f"Official val folder (never used for fitting): {ov['n']} films, flagged {ov['flagged']:.1%}.")
    if result["guard"]["fitted_here"]:
        lines.append("The checkpoint carried no guard: this one was fitted for the report.")
    lines += ["", "| set | images | AUROC | flagged | what it is |", "|---|---:|---:|---:|---|"]
    for name, m in result["sets"].items():
        if m["n"] == 0:
            lines.append(f"| {name} | 0 | n/a | n/a | {m['description']} (none available here) |")
        else:
            lines.append(f"| {name} | {m['n']} | {m['auroc']:.4f} | {m['flagged']:.1%} | {m['description']} |")
    lines += ["", "AUROC: the probability that an image of the set scores above a validation film.", "",
              "![scores](ood.png)", ""]  # fmt: skip
    return "\n".join(lines)
