"""Shared fixtures: a tiny random checkpoint, a tiny synthetic Kaggle-layout dataset, the real data.

- ``tiny_checkpoint_path``: a saved checkpoint of a small CNN-LSTM (32x32 input, same layer
  names as the real model: ``features.block1..3``, ``lstm1``, ``lstm2``, ``head.dense1/2``,
  ``head.out``), random weights (seed 0), threshold 0.5. Session-scoped: copy it before changing it.
- ``trained_tiny_checkpoint_path``: the same model trained 20 steps on synthetic films, so that
  it separates the synthetic classes (P(PNEUMONIA) higher on images with the blob).
- ``synthetic_dataset``: the root of ``train`` and ``val`` splits in the Kaggle layout, small
  grayscale JPEGs whose names follow the real patterns (several films per patient), PNEUMONIA
  images carrying a bright blob so that a model can learn something. Session-scoped, read-only.
- ``synthetic_dataset_factory``: builds another such dataset under tmp_path (other counts, sizes).
- ``real_data_root``: ``../shared/data/chest_xray`` next to the repo; skips when absent.
- ``wait_until``: ``wait_until(condition, what, timeout_s=5.0)`` polls ``condition()`` and fails the
  test, naming ``what``, when it is still false at the deadline: no test waits without one.

Under pytest-xdist (``make test-fast``, and the first half of ``make test``, run one worker per
core) each worker, and each command-line subprocess it starts, gets its share of the cores for
PyTorch's and ONNX Runtime's intra-op threads (:func:`pytest_configure`): two workers on two cores
never run four threads that spin while they wait for each other. Tests about threads pass their
thread counts explicitly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "chest_xray"


def pytest_configure(config: pytest.Config) -> None:
    """In an xdist worker: PyTorch, here and in subprocesses, uses the worker's share of the cores (at least one)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        import torch

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        share = max(1, cores // int(workerinput["workercount"]))
        os.environ["OMP_NUM_THREADS"] = str(share)  # the CLI subprocesses' default thread count
        torch.set_num_threads(share)


def tiny_model_config():
    """A fast CNN-LSTM with the real model's layer names (3 conv blocks, 2 LSTMs, 2 dense layers)."""
    from pneumolens.model import ModelConfig

    return ModelConfig(
        input_size=32, channels=(4, 8, 8), conv_dropout=(0.0, 0.0, 0.0), lstm_units=(8, 4), dense_units=(8, 8)
    )


def _synthetic_batch(n: int, size: int, seed: int):
    """(x float (n,1,size,size), y float (n,)) of synthetic films, labels alternating 0, 1."""
    import torch

    from pneumolens.inference import to_input
    from pneumolens.io import resize_square

    rng = np.random.default_rng(seed)
    labels = [i % 2 for i in range(n)]
    x = to_input(np.stack([resize_square(synthetic_xray(label, rng), size) for label in labels]))
    return x, torch.tensor(labels, dtype=torch.float32)


def _build_tiny_checkpoint(path: Path, train_steps: int) -> Path:
    """Seeded tiny model, optionally trained on synthetic films; BatchNorm statistics set from them.

    The model's Keras-like BatchNorm momentum (0.01) would leave the running statistics at
    their initial values after a few steps, and the eval-mode output nearly constant; so the
    statistics are recomputed as a plain average over one synthetic batch.
    """
    import torch

    from pneumolens.checkpoint import Checkpoint, save_checkpoint
    from pneumolens.model import CnnLstm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # far faster than 2 threads on a busy 2-core machine
    try:
        torch.manual_seed(0)
        config = tiny_model_config()
        model = CnnLstm(config)
        x, y = _synthetic_batch(64, config.input_size, seed=1)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(train_steps):
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
            opt.step()
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        with torch.no_grad():
            model(x)
        for m in norms:
            m.momentum = 0.01
        model.eval()
        return save_checkpoint(Checkpoint(model=model, config=config, threshold=0.5, threshold_rule="fixed"), path)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random (seed 0) tiny checkpoint, threshold 0.5, whose output varies with the input."""
    return _build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_ckpt") / "model.pt", train_steps=0)


@pytest.fixture(scope="session")
def trained_tiny_checkpoint_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model after 20 Adam steps on synthetic films: it tells the PNEUMONIA blob from NORMAL."""
    return _build_tiny_checkpoint(tmp_path_factory.mktemp("trained_tiny_ckpt") / "model.pt", train_steps=20)


def synthetic_xray(label: int, rng: np.random.Generator, shape: tuple[int, int] = (40, 48)) -> np.ndarray:
    """A uint8 film-like image: a vertical gradient and noise; PNEUMONIA adds a bright blob."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    img = 60 + 80 * yy / h + rng.normal(0, 12, shape)
    if label == 1:
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.25, 0.75) * w
        img += 90 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.12 * w) ** 2))
    return np.clip(img, 0, 255).astype(np.uint8)


def _names(label: int, n: int, start: int) -> list[str]:
    """Kaggle-style names, two films per patient; NORMAL alternates the IM- and NORMAL2-IM- series."""
    names = []
    for i in range(n):
        patient, film = start + i // 2, i % 2 + 1
        if label == 0:
            prefix = "NORMAL2-" if patient % 2 else ""
            names.append(f"{prefix}IM-{patient:04d}-0001" + (f"-{film:04d}" if film > 1 else "") + ".jpeg")
        else:
            kind = "virus" if patient % 3 == 0 else "bacteria"
            names.append(f"person{patient}_{kind}_{100 * patient + film}.jpeg")
    return names


def make_synthetic_dataset(
    root: Path, counts: dict[str, tuple[int, int]] | None = None, shape: tuple[int, int] = (40, 48), seed: int = 0
) -> Path:
    """Write ``root/{split}/{NORMAL,PNEUMONIA}/*.jpeg``; ``counts`` maps split -> (normal, pneumonia)."""
    counts = counts or {"train": (24, 24), "val": (4, 4)}
    rng = np.random.default_rng(seed)
    start = 1
    for split, per_class in counts.items():
        for label, (cls, n) in enumerate(zip(("NORMAL", "PNEUMONIA"), per_class)):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for name in _names(label, n, start):
                Image.fromarray(synthetic_xray(label, rng, shape)).save(folder / name, quality=95)
        start += max(per_class) + 1  # new patients in each split
    return root


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a small Kaggle-layout dataset: train 24+24 images, val 4+4 (NORMAL+PNEUMONIA)."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "chest_xray")


@pytest.fixture
def synthetic_dataset_factory(tmp_path: Path) -> Callable[..., Path]:
    """``factory(counts={"train": (n0, n1)}, shape=(h, w), seed=0)`` -> a fresh dataset root under tmp_path."""

    def factory(**kwargs) -> Path:
        return make_synthetic_dataset(tmp_path / "chest_xray", **kwargs)

    return factory


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """The real dataset at ../shared/data/chest_xray; the test is skipped when it is absent."""
    if not (REAL_DATA / "train").is_dir():
        pytest.skip(f"real dataset not found at {REAL_DATA} (Kaggle paultimothymooney/chest-xray-pneumonia)")
    return REAL_DATA


def poll_until(condition: Callable[[], object], what: str, timeout_s: float = 5.0, interval_s: float = 0.001) -> None:
    """Return as soon as ``condition()`` is true; fail the test naming ``what`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout_s:g} s for {what}; it never happened", pytrace=False)
        time.sleep(interval_s)


@pytest.fixture
def wait_until() -> Callable[..., None]:
    """:func:`poll_until`: wait for a condition with a deadline (a clear failure instead of a hang)."""
    return poll_until
