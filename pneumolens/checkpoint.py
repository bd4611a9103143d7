"""One-file model checkpoint: weights plus everything needed to use them correctly.

Like TorchXRayVision's weight entries, the file carries its class names, input size and
decision threshold, so nobody downstream hard-codes 0.5 or a class list. It holds only
tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import datetime as _dt
import math
import pickle
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import preprocess_tag
from .calibrated import calibrated_probability
from .data import CLASS_NAMES
from .errors import CheckpointError
from .jsonable import jsonable
from .model import CnnLstm, ModelConfig, count_parameters
from .ood import OodGuard

FORMAT = "pneumolens-checkpoint"
FORMAT_VERSION = 1
SHIPPED = Path(__file__).resolve().parent / "weights" / "model.pt"


@dataclass
class Checkpoint:
    """A trained model and its metadata.

    Attributes:
        model: the network, in eval mode.
        config: its architecture.
        threshold: decision threshold on the PNEUMONIA probability, chosen on validation.
        threshold_rule: how the threshold was chosen (``youden``, ``f1``, ``fixed``...).
        temperature, bias: the calibration fitted on validation: the probability is
            ``sigmoid(logit / temperature + bias)`` (1.0 and 0.0 = none; temperature scaling
            fits the first, Platt scaling both). :meth:`probability` applies it.
        class_names: ``("NORMAL", "PNEUMONIA")``; index 1 is the positive class.
        preprocessing: how files become inputs (grayscale, size, resize filter, scaling).
        provenance: data manifest hash, git commit, command, date, recipe.
        metrics: validation metrics recorded at training time.
        ood: the out-of-distribution guard fitted on the training films (``None`` for a
            checkpoint written before guards existed, or by a run that could not fit one).
        shap_background: training films at the input size, uint8 (K, S, S): the background
            GradientSHAP explains against, so the CLI and the web service give the same maps
            (``None``: a checkpoint written without one).
    """

    model: CnnLstm
    config: ModelConfig
    threshold: float = 0.5
    threshold_rule: str = "fixed"
    temperature: float = 1.0
    bias: float = 0.0
    class_names: tuple[str, ...] = CLASS_NAMES
    preprocessing: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    ood: OodGuard | None = None
    shap_background: np.ndarray | None = None

    @property
    def input_size(self) -> int:
        return self.config.input_size

    def probability(self, logits: Any) -> np.ndarray:
        """Calibrated P(PNEUMONIA), float64, for raw logits (any array shape)."""
        return calibrated_probability(logits, self.temperature, self.bias)

    def info(self) -> dict[str, Any]:
        """Everything but the weights, as JSON-friendly values (``pneumolens info``)."""
        return {
            "format": f"{FORMAT}/{FORMAT_VERSION}",
            "architecture": "cnn_lstm",
            "parameters": count_parameters(self.model),
            "config": self.config.to_dict(),
            "class_names": list(self.class_names),
            "threshold": self.threshold,
            "threshold_rule": self.threshold_rule,
            "temperature": self.temperature,
            "bias": self.bias,
            "preprocessing": self.preprocessing,
            "provenance": self.provenance,
            "metrics": self.metrics,
            "ood": None if self.ood is None else {
                "method": "pca-shape+statistics/v1", "threshold": self.ood.threshold,
                "validation_flagged": self.ood.flagged_share,
            },
            "shap_background": None if self.shap_background is None else {
                "images": int(self.shap_background.shape[0]), "size": int(self.shap_background.shape[-1]),
            },
        }


def default_preprocessing(size: int) -> dict[str, Any]:
    return {"grayscale": "8-bit", "size": size, "resize": "bilinear, aspect ratio not kept", "scale": "1/255", "tag": preprocess_tag(size)}


#: ``git archive`` writes the archived commit into this file (``export-subst`` in .gitattributes), so a
#: tree unpacked from an archive, which has no .git, still knows the commit it was made from.
COMMIT_FILE = Path(__file__).resolve().parent / "COMMIT"


def archived_commit(path: Path = COMMIT_FILE) -> str | None:
    """The commit ``git archive`` wrote into ``path``; None in a checkout (the placeholder) or without it."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text if len(text) == 40 and all(c in "0123456789abcdef" for c in text) else None


def git_commit() -> str | None:
    """The commit of the working tree this code runs from: a git checkout's HEAD, else the commit of
    the ``git archive`` it was unpacked from (:func:`archived_commit`), else None."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return archived_commit()


def base_provenance(**extra: Any) -> dict[str, Any]:
    return {
        "git_commit": git_commit(),
        "command": " ".join(sys.argv),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        **extra,
    }


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> Path:
    """Write the checkpoint atomically (a temp file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in ckpt.model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": state,
        "config": ckpt.config.to_dict(),
        "threshold": float(ckpt.threshold),
        "threshold_rule": ckpt.threshold_rule,
        "temperature": float(ckpt.temperature),
        "bias": float(ckpt.bias),
        "class_names": list(ckpt.class_names),
        "preprocessing": jsonable(ckpt.preprocessing or default_preprocessing(ckpt.config.input_size)),
        "provenance": jsonable(ckpt.provenance),
        "metrics": jsonable(ckpt.metrics),
    }
    if ckpt.ood is not None:
        payload["ood"] = ckpt.ood.state()
    if ckpt.shap_background is not None:
        payload["shap_background"] = torch.from_numpy(
            np.ascontiguousarray(_checked_background(ckpt.shap_background, ckpt.config.input_size, path)))
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def _checked_background(value: Any, size: int, path: Path) -> np.ndarray:
    """A SHAP background as uint8 (K, size, size), or a CheckpointError naming the file."""
    arr = value.numpy() if torch.is_tensor(value) else np.asarray(value)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1:] != (size, size):
        raise CheckpointError(f"{path}: shap_background must be uint8 (K, {size}, {size}) images at the model's "
                              f"input size, got {arr.dtype} {tuple(arr.shape)}")
    return arr


def _load_failure(exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words.

    Never torch's own advice for a pickle: it suggests turning the weights-only guard off, which
    would run whatever code the file carries.
    """
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "weights only load failed" in text.lower():
        return ("it holds Python objects besides tensors and plain values, which PneumoLens never loads: "
                "not a file PneumoLens wrote, or one altered since")
    first = text.strip().splitlines()[0] if text.strip() else exc.__class__.__name__
    return first if len(first) <= 200 else first[:197] + "..."


def load_checkpoint(path: str | Path | None = None, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`; ``None`` means the shipped model.

    Raises:
        CheckpointError: missing file, corrupt file, or a file that is not a PneumoLens checkpoint.
    """
    if path is None:
        path = SHIPPED
        if not path.exists():
            raise CheckpointError(
                f"{path}: no model is shipped in this install yet; train one with "
                "`pneumolens train --out DIR` and pass --checkpoint DIR/model.pt"
            )
    path = Path(path)
    if path.is_dir() and (path / "model.pt").exists():
        path = path / "model.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable PneumoLens checkpoint ({_load_failure(exc)})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a PneumoLens checkpoint (no '{FORMAT}' marker; a Lightning .ckpt? use model.pt)")
    try:
        version = int(payload.get("format_version", 0))
        threshold = float(payload.get("threshold", 0.5))
        temperature = float(payload.get("temperature", 1.0))
        bias = float(payload.get("bias", 0.0))
        class_names = tuple(str(c) for c in payload.get("class_names", CLASS_NAMES))
        meta = {k: dict(payload.get(k) or {}) for k in ("preprocessing", "provenance", "metrics")}
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is malformed ({exc})") from exc
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version} is newer than this PneumoLens reads")
    if len(class_names) != 2:
        raise CheckpointError(
            f"{path}: the checkpoint has {len(class_names)} classes ({', '.join(class_names)}); PneumoLens models "
            f"have exactly 2 ({', '.join(CLASS_NAMES)})"
        )
    if not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0:
        raise CheckpointError(f"{path}: the decision threshold {threshold} is not a probability in [0, 1]")
    if not math.isfinite(temperature) or not temperature > 0.0:
        raise CheckpointError(f"{path}: the temperature {temperature} is not a finite positive number")
    if not math.isfinite(bias):
        raise CheckpointError(f"{path}: the calibration bias {bias} is not a finite number")
    state_dict = payload.get("state_dict")
    if isinstance(state_dict, dict):
        bad = [k for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise CheckpointError(f"{path}: the weights hold NaN or infinite values ({', '.join(bad[:3])}{more})")
    ood = None
    if payload.get("ood") is not None:
        if not isinstance(payload["ood"], dict):
            raise CheckpointError(f"{path}: out-of-distribution guard is malformed")
        try:
            ood = OodGuard.from_state(payload["ood"])
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    try:
        config = ModelConfig.from_dict(payload["config"])
        model = CnnLstm(config)
        model.load_state_dict(payload["state_dict"])
    except Exception as exc:
        raise CheckpointError(f"{path}: weights do not match the architecture ({str(exc).splitlines()[0][:200]})") from exc
    model.eval()
    background = None
    if payload.get("shap_background") is not None:
        background = _checked_background(payload["shap_background"], config.input_size, path).copy()
    return Checkpoint(
        model=model,
        config=config,
        threshold=threshold,
        threshold_rule=str(payload.get("threshold_rule", "fixed")),
        temperature=temperature,
        bias=bias,
        class_names=class_names,
        ood=ood,
        shap_background=background,
        **meta,
    )
