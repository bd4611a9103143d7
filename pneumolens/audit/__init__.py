"""Shortcut audit: does a pasted marker, a replaced border or a text annotation change the answer,
and where does the explanations' evidence fall relative to the lungs?

::

    from pneumolens.audit import run_audit, marker_flip_rate
    metrics = run_audit(split="validation", out="runs/audit")          # what `pneumolens audit` does
    rate = marker_flip_rate(predictor.probabilities, images, labels, predictor.threshold)

Modules: :mod:`~pneumolens.audit.probes` (the perturbations), :mod:`~pneumolens.audit.scoring`
(flips, Δp, specificity and sensitivity), :mod:`~pneumolens.audit.lungs` (approximate lung
fields, share of attribution outside them), :mod:`~pneumolens.audit.attribution` (explanations
on a subset), :mod:`~pneumolens.audit.run` (the pipeline), :mod:`~pneumolens.audit.figures` and
:mod:`~pneumolens.audit.markdown` (the outputs).
"""

from __future__ import annotations

from .lungs import LungMask, lung_mask, outside_share, peak_outside
from .probes import FAMILIES, Probe, default_probes, quick_marker_probes
from .run import run_audit
from .scoring import marker_flip_rate, marker_probe, predict_probed, summarize


__all__ = [
    "FAMILIES",
    "LungMask",
    "Probe",
    "default_probes",
    "lung_mask",
    "marker_flip_rate",
    "marker_probe",
    "outside_share",
    "peak_outside",
    "predict_probed",
    "quick_marker_probes",
    "run_audit",
    "summarize",
]
