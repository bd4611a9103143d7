"""Training: ``fit`` a CNN-LSTM on the Kaggle layout's train split, or ``export_best`` of a run so far.

One job per module: :mod:`.module` (the LightningModule: loss, metrics, optimiser),
:mod:`.trainer` (the Lightning Trainer and its callbacks), :mod:`.resume` (a run's checkpoints,
read safely, metric states and log segments), :mod:`.finalize` (calibration, threshold,
``model.pt``) and :mod:`.fit` (the run from data folder to ``model.pt``).
"""

from __future__ import annotations

from .finalize import FitResult
from .fit import export_best, fit

__all__ = ["FitResult", "export_best", "fit"]
