"""Core speed benchmark: training and inference throughput, latency, memory, beside the original.

Run from the repository root::

    .venv/bin/python bench/bench_core.py            # full run, a few minutes on 2 cores
    .venv/bin/python bench/bench_core.py --quick    # short run to check that everything works

Prints a markdown report and writes ``bench/results/core.md`` and ``core.json``. What it measures
(medians of several repeats; the output names the machine, its speed, its load average and the
share of the cores other processes took):

- parameters of the CNN-LSTM;
- training images/s with the real Lightning module and Trainer of ``pneumolens train``
  (``pneumolens.training``: augmentation, forward, class-weighted focal loss, metrics, backward,
  Adam step) on decoded uint8 arrays held in memory, at batch 8 (the seed recipe) and batch 32,
  with the CPU-training accelerator (the default) and at batch 32 with stock layers alone;
- inference images/s at batch 64 on decoded arrays and including JPEG decoding of files of the
  real dataset (not from the decoded-array cache), and one-image latency, for each lever:
  plain eager, channels-last, BatchNorm folding, chunked convolutions, ``torch.compile``,
  ONNX Runtime;
- ``Predictor.predict_files`` end to end (the default backend; decoding overlapped with inference);
- JPEG decoding cost: `io.load_image` (Pillow's ``draft()``, DCT-domain downscaling of large JPEGs) vs a full decode;
- peak resident memory of a process that only predicts files.

The original's figures come from ``../shared/reference/seed_baseline.md`` (tensorflow-cpu on a
machine of the same kind); they are not re-measured here.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pneumolens.backends import optimize  # noqa: E402
from pneumolens.folding import FoldedCnnLstm  # noqa: E402
from pneumolens.inference import Predictor, to_input  # noqa: E402
from pneumolens.io import load_image, read_image, resize_square  # noqa: E402
from pneumolens.model import CnnLstm, ModelConfig, count_parameters  # noqa: E402
from pneumolens.onnx_export import onnx_available  # noqa: E402

#: The original implementation on a machine of our kind: ../shared/reference/seed_baseline.md.
ORIGINAL = {
    "source": "../shared/reference/seed_baseline.md (tensorflow-cpu 2.21, 2 AMD EPYC cores, idle, medians)",
    "parameters": {"shipped": 2_720_129, "float32": 2_720_129},
    "train_b8": {"shipped": 12.3, "float32": 22.9},
    "infer_b64_decoded": {"shipped": 85.0, "float32": 133.0},
    "infer_b64_with_decoding": {"shipped": 97.0, "float32": 99.0},
    "one_image_ms": {"shipped": 122.0, "float32": 94.0},
    "peak_rss_gb": {"shipped": 1.76, "float32": 1.76},
}
GOALS = {"train": 55.0, "train_stock": 40.0, "infer_with_decoding": 300.0, "one_image_ms": 5.0}
DEFAULT_DATA = REPO.parent / "shared" / "data" / "chest_xray"
BATCH = 64


# --------------------------------------------------------------------------- helpers


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": ort_version,
        "python": platform.python_version(),
    }


def jpeg_files(data: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` JPEG files of the real training split (a fixed random sample), or [] when absent."""
    files = sorted((data / "train").glob("*/*.jpeg"))
    random.Random(seed).shuffle(files)
    return files[:n]


def decode(paths: list[Path], size: int = 128) -> np.ndarray:
    return np.stack([load_image(p, size) for p in paths])


def full_decode(data: bytes, size: int) -> np.ndarray:
    """Decode at full size, then resize: what ``io.load_image`` did before JPEG drafting."""
    return resize_square(read_image(data), size)


def draft_decode(data: bytes, size: int, factor: int) -> np.ndarray:
    """Decode a JPEG in draft mode no smaller than ``factor`` x the input size, then resize."""
    return resize_square(read_image(data, draft_size=factor * size), size)


def section(title: str) -> None:
    print(f"\n== {title}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- training


def fit_steps(
    images: torch.Tensor,
    batch_size: int,
    max_steps: int,
    callbacks: list,
    seed: int = 0,
    accelerator: str = "cpu",
    accelerate: bool = True,
) -> None:
    """Run ``max_steps`` real training steps of the seed recipe (no validation) on ``accelerator``.

    The LightningModule and the Trainer are ``pneumolens train``'s own
    (:func:`pneumolens.training.trainer.build_trainer` without a run folder: no files, no
    validation); ``accelerate=False`` trains the stock layers alone, as ``--no-accel`` does.
    """
    from pneumolens.config import load_config
    from pneumolens.datamodule import ResumableBatches
    from pneumolens.training.module import PneumoniaClassifier
    from pneumolens.training.trainer import build_trainer

    class Module(PneumoniaClassifier):
        def configure_optimizers(self):  # the recipe's optimiser, without the val-loss scheduler (no validation here)
            return super().configure_optimizers()["optimizer"]

    config = load_config("seed", overrides={"batch_size": batch_size, "accelerate": accelerate})
    labels = (torch.arange(len(images)) % 2).float()
    trainer = build_trainer(config, None, accelerator=accelerator, progress=False, max_steps=max_steps,
                            extra_callbacks=callbacks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Module(config, class_weight=(1.486, 0.514)),
                    train_dataloaders=ResumableBatches(images, labels, batch_size, seed=seed))


def bench_training(
    images: torch.Tensor,
    batch_size: int,
    steps: int,
    warmup: int,
    repeats: int,
    accelerator: str = "cpu",
    accelerate: bool = True,
) -> dict:
    """Images/s of real Lightning training steps (median over ``repeats`` runs of ``steps`` steps)."""
    import lightning as L

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, *args) -> None:
            self._mark()

        def on_train_end(self, *args) -> None:
            self._mark()

        def _mark(self) -> None:
            if accelerator != "cpu":
                torch.cuda.synchronize()  # GPU work is asynchronous: time what has finished
            self.starts.append(time.perf_counter())

    rates = []
    for r in range(repeats):
        timer = Timer()
        fit_steps(images, batch_size, warmup + steps, [timer], seed=r, accelerator=accelerator, accelerate=accelerate)
        t = timer.starts
        rates.append(steps * batch_size / (t[-1] - t[warmup]))
    return {"images_per_s": statistics.median(rates), "runs": rates, "steps": steps, "batch_size": batch_size,
            "accelerate": accelerate}


#: Where a training step's time goes: aten operator names, or the ``pneumolens::`` profiler scope
#: they run in (pneumolens.accel.conv's weight gradients, pneumolens.accel.lstm's unrolled layer)
#: -> the part of the network they serve.
PROFILE_GROUPS = (
    ("convolutions (forward and backward)", ("convolution", "pneumolens::conv")),
    ("LSTMs (forward and backward)", ("rnn", "lstm")),
    ("BatchNorm (forward and backward)", ("batch_norm",)),
    ("ReLU, max-pool, dropout masks", ("threshold", "clamp", "relu", "max_pool", "bernoulli", "dropout")),
    ("augmentation warp", ("grid_sampler", "affine_grid")),
)
OTHER = "everything else (Adam, loss, copies)"


def profile_training(images: torch.Tensor, batch_size: int, steps: int = 4, warmup: int = 2) -> dict:
    """Share of self CPU time per part of the network over ``steps`` Lightning training steps."""
    import lightning as L
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU])

    class Window(L.Callback):
        def on_train_batch_start(self, trainer, *args) -> None:
            if trainer.global_step == warmup:
                prof.start()

        def on_train_end(self, *args) -> None:
            prof.stop()

    fit_steps(images, batch_size, warmup + steps, [Window()])

    def scope(e) -> str:
        """The event's own name, or that of the ``pneumolens::`` scope it ran in."""
        p = e
        while p is not None:
            if p.name.startswith("pneumolens::"):
                return p.name
            p = p.cpu_parent
        return e.name

    events = [(scope(e), e.self_cpu_time_total) for e in prof.events() if e.name.startswith("aten::")]
    total = sum(t for _, t in events) or 1.0
    shares: dict[str, float] = {}
    other: dict[str, float] = {}
    for key, t in events:
        group = next((g for g, keys in PROFILE_GROUPS if any(k in key for k in keys)), OTHER)
        shares[group] = shares.get(group, 0.0) + t / total
        if group == OTHER:
            other[key] = other.get(key, 0.0) + t / total
    return {"batch_size": batch_size, "steps": steps, "shares": dict(sorted(shares.items(), key=lambda kv: -kv[1])),
            "largest_other": dict(sorted(other.items(), key=lambda kv: -kv[1])[:6])}


# --------------------------------------------------------------------------- inference levers


Builder = Callable[[int], Callable[[torch.Tensor], torch.Tensor]]  # threads -> forward


def levers(model: CnnLstm, compile_: bool) -> list[tuple[str, str, Builder]]:
    """(name, what it adds, builder) for each inference lever, cumulative from the plain model."""

    def plain(threads: int):
        m = copy.deepcopy(model).eval()
        return lambda x: m(x)

    def channels_last(threads: int):
        m = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
        return lambda x: m(x.contiguous(memory_format=torch.channels_last))

    out = [
        ("eager", "plain CnnLstm in eval mode", plain),
        ("channels-last", "+ NHWC memory layout", channels_last),
        (
            "BN-folded",
            "+ BatchNorm folded into weights, Dropout dropped, pool before ReLU",
            lambda threads: FoldedCnnLstm(model, conv_chunk=0),
        ),
        ("chunked", "+ conv stage 8 images at a time (the `eager` backend)", lambda threads: optimize(model, "eager")),
    ]
    if compile_:
        out.append(("compile", "torch.compile of the folded model", lambda threads: optimize(model, "compile")))
    if onnx_available():
        out.append(
            ("onnx", "ONNX Runtime on the folded graph", lambda threads: optimize(model, "onnx", threads=threads))
        )
    return out


def cpu_rate(build: Builder, decoded: torch.Tensor, repeats: int) -> float:
    """Images per CPU-second on one thread: the work per image, much steadier than wall time on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fn = build(1)
        with torch.inference_mode():
            fn(decoded)
            times = []
            for _ in range(repeats):
                t0 = time.thread_time()
                fn(decoded)
                times.append(time.thread_time() - t0)
    finally:
        torch.set_num_threads(threads)
    return len(decoded) / statistics.median(times)


def bench_lever(
    build: Builder, files: list[Path], decoded: torch.Tensor, repeats: int, latency_runs: int, cpu_check: bool
) -> dict:
    t0 = time.perf_counter()
    fn = build(torch.get_num_threads())
    setup = time.perf_counter() - t0
    with torch.inference_mode():
        t0 = time.perf_counter()
        fn(decoded)  # first call: compiles / warms up
        first = time.perf_counter() - t0
        batch_s = median_time(lambda: fn(decoded), repeats)
        one = decoded[:1]
        latency = median_time(lambda: fn(one), latency_runs, warmup=2)
        with_dec = None
        if files:
            chunks = [files[i : i + BATCH] for i in range(0, len(files) - BATCH + 1, BATCH)]
            times = []
            for chunk in chunks[:repeats]:
                t0 = time.perf_counter()
                fn(to_input(decode(chunk)))
                times.append(time.perf_counter() - t0)
            with_dec = BATCH / statistics.median(times)
    return {
        "setup_s": setup,
        "first_call_s": first,
        "decoded_images_per_s": BATCH / batch_s,
        "with_decoding_images_per_s": with_dec,
        "one_image_ms": 1000 * latency,
        "backend": getattr(fn, "backend", None),
        "one_thread_images_per_cpu_s": cpu_rate(build, decoded, repeats) if cpu_check else None,
    }


def bench_predictor(ckpt_path: Path, files: list[Path], repeats: int) -> dict:
    """``Predictor.predict_files`` end to end (default fast backend), and one file via predict_bytes."""
    predictor = Predictor(ckpt_path)
    predictor.predict_files(files[:BATCH], progress=False)  # builds the fast copy
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        preds, _ = predictor.predict_files(files, progress=False)
        rates.append(len(preds) / (time.perf_counter() - t0))
    data = files[0].read_bytes()
    one = median_time(lambda: predictor.predict_bytes(data, "x.jpeg"), 30, warmup=3)
    return {
        "backend": predictor.fast_model.backend if predictor.fast_model else "plain",
        "files": len(files),
        "images_per_s": statistics.median(rates),
        "runs": rates,
        "one_file_ms": 1000 * one,
    }


def bench_decoding(files: list[Path], size: int = 128) -> dict:
    """Per-image decode+resize cost, full decode vs draft mode, on dataset files and a large JPEG."""
    from PIL import Image, ImageFilter

    datas = [p.read_bytes() for p in files]
    full = median_time(lambda: [full_decode(d, size) for d in datas], 3) / len(datas)
    draft = median_time(lambda: [load_image(d, size) for d in datas], 3) / len(datas)
    a = np.stack([full_decode(d, size) for d in datas]).astype(int)
    b = np.stack([load_image(d, size) for d in datas]).astype(int)
    b1 = np.stack([draft_decode(d, size, factor=1) for d in datas]).astype(int)
    rng = np.random.default_rng(0)
    ramp = np.linspace(40, 210, 2400)[None, :]  # structure, so the decode is not refused as blank
    film = Image.fromarray((ramp + rng.normal(0, 40, (2000, 2400))).clip(0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(3)
    )
    buf = io.BytesIO()
    film.save(buf, "JPEG", quality=90)
    big = buf.getvalue()
    big_full = median_time(lambda: full_decode(big, size), 5)
    big_draft = median_time(lambda: load_image(big, size), 5)
    return {
        "dataset_full_ms": 1000 * full,
        "dataset_draft_ms": 1000 * draft,
        "dataset_draft_mean_abs_diff": float(np.abs(a - b).mean()),
        "dataset_draft_max_abs_diff": int(np.abs(a - b).max()),
        "dataset_draft_images_changed": float((np.abs(a - b).reshape(len(a), -1).max(1) > 0).mean()),
        "dataset_draft_1x_images_changed": float((np.abs(a - b1).reshape(len(a), -1).max(1) > 0).mean()),
        "dataset_draft_1x_max_abs_diff": int(np.abs(a - b1).max()),
        "large_2400x2000_full_ms": 1000 * big_full,
        "large_2400x2000_draft_ms": 1000 * big_draft,
        "large_draft_max_abs_diff": int(np.abs(full_decode(big, size).astype(int) - load_image(big, size)).max()),
        "large_2400x2000_draft_1x_ms": 1000 * median_time(lambda: draft_decode(big, size, factor=1), 5),
        "large_draft_1x_max_abs_diff": int(
            np.abs(full_decode(big, size).astype(int) - draft_decode(big, size, factor=1)).max()
        ),
    }


PEAK_SCRIPT = """
import resource, sys
sys.path.insert(0, {repo!r})
from pneumolens.inference import Predictor
paths = {paths!r}
preds, _ = Predictor({ckpt!r}).predict_files(paths, progress=False)
# VmHWM: this process's own peak. ru_maxrss would not do: Linux carries the spawning process's
# peak over into it at exec, so it reported this benchmark's own footprint (~1 GB) instead.
try:
    with open("/proc/self/status") as f:
        peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(preds), peak_kb)
"""


def peak_rss_predict(ckpt_path: Path, files: list[Path]) -> float | None:
    """Peak RSS (GB) of a fresh process that loads the model and predicts ``files``."""
    script = PEAK_SCRIPT.format(repo=str(REPO), paths=[str(f) for f in files], ckpt=str(ckpt_path))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return None
    return int(out.stdout.split()[-1]) / 1e6  # kB


# --------------------------------------------------------------------------- report


def fmt(v: float | None, digits: int = 0) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def speed_lines(r: dict) -> list[str]:
    """The report's paragraph on the machine's speed (none for results written before it was measured)."""
    two, one = r.get("reference_gflops"), r.get("reference_gflops_one_thread")
    if not two:
        return []
    text = (
        "Machine speed (`reference_gflops`: a 1024x1024 float32 matrix product on all threads): "
        f"{two['start']:.0f} GFLOP/s at the start, {two['end']:.0f} at the end — compare runs by it."
    )
    if one:
        text += (
            f" On one thread: {one['start']:.0f} and {one['end']:.0f} GFLOP/s, so all threads together gave "
            f"x{two['start'] / one['start']:.2f} and x{two['end'] / one['end']:.2f} one thread's speed."
        )
    return [text, ""]


def report(r: dict) -> str:
    m, load = r["machine"], r["load"]
    o = ORIGINAL
    lev = {x["name"]: x for x in r["inference"]["levers"]}
    best = max(r["inference"]["levers"], key=lambda x: x["decoded_images_per_s"])
    fastest = min(r["inference"]["levers"], key=lambda x: x["one_image_ms"])
    pf = r["inference"].get("predict_files") or {}
    tr = r.get("training") or {}
    other = r.get("other_cpu_share")
    # Without the CPU accounting, judged by the load average at the start (by the end it mostly
    # counts this benchmark's own threads; at the start it may still count a run just finished).
    busy = other > 0.05 if other is not None else load["start"][0] > 0.5
    lines = [
        "# PneumoLens core benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"onnxruntime {m['onnxruntime'] or 'not installed'}, Python {m['python']}. "
        f"Command: `{r['command']}`; {r['date']}; {r['wall_s']:.0f} s.",
        "",
        f"Load average (1/5/15 min) at start {'/'.join(f'{x:.2f}' for x in load['start'])}, "
        f"at end {'/'.join(f'{x:.2f}' for x in load['end'])}"
        + (f"; other processes used {100 * other:.1f} % of the cores during the run" if other is not None else "")
        + ": "
        + (
            "**the machine was busy with other work: these numbers are depressed and noisy.**"
            if busy
            else "idle machine."
        ),
        "",
        *speed_lines(r),
        "| figure | original, as shipped | original, float32 | PneumoLens | goal |",
        "|---|---:|---:|---:|---:|",
        f"| parameters | {o['parameters']['shipped']:,} (Keras count) | {o['parameters']['float32']:,} | "
        f"{r['parameters']:,} (PyTorch count) | |",
    ]
    if tr:
        lines.append(
            f"| training, batch 8 (seed recipe), images/s | {o['train_b8']['shipped']} | {o['train_b8']['float32']} | "
            f"{fmt(tr['b8']['images_per_s'], 1)} | |"
        )
        lines.append(
            f"| training, batch 32, images/s | — | — | {fmt(tr['b32']['images_per_s'], 1)} | ≥ {GOALS['train']:.0f} |"
        )
        if "b32_stock" in tr:
            lines.append(
                f"| training, batch 32, stock layers (`--no-accel`), images/s | — | — | "
                f"{fmt(tr['b32_stock']['images_per_s'], 1)} | ≥ {GOALS['train_stock']:.0f} |"
            )
    lines += [
        f"| inference, batch 64, decoded, images/s | {o['infer_b64_decoded']['shipped']:.0f} | "
        f"{o['infer_b64_decoded']['float32']:.0f} | {fmt(best['decoded_images_per_s'])} ({best['name']}) | |",
        f"| inference, batch 64, incl. JPEG decoding, images/s | {o['infer_b64_with_decoding']['shipped']:.0f} | "
        f"{o['infer_b64_with_decoding']['float32']:.0f} | "
        f"{fmt(pf.get('images_per_s'))} (`predict_files`, {pf.get('backend', '—')}) | "
        f"≥ {GOALS['infer_with_decoding']:.0f} |",
        f"| one image, model only, ms | {o['one_image_ms']['shipped']:.0f} | {o['one_image_ms']['float32']:.0f} | "
        f"{fmt(fastest['one_image_ms'], 1)} ({fastest['name']}) | ≤ {GOALS['one_image_ms']:.0f} |",
        f"| one file, `predict_bytes` incl. decoding, ms | — | — | {fmt(pf.get('one_file_ms'), 1)} | |",
        f"| peak memory, predicting {r['memory'].get('files', 0)} files, GB | {o['peak_rss_gb']['shipped']} | "
        f"{o['peak_rss_gb']['float32']} | {fmt(r['memory'].get('predict_peak_rss_gb'), 2)} | |",
        f"| peak memory of this benchmark process, GB | — | — | {fmt(r['memory']['bench_peak_rss_gb'], 2)} | |",
        "",
        f"Original: {o['source']}.",
        "",
        "## Inference levers (batch 64; cumulative from the plain model)",
        "",
        "| lever | what it adds | decoded, images/s | incl. decoding, images/s | one image, ms | setup + first call, s "
        "| 1 thread, images per CPU-s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    base = lev["eager"]["decoded_images_per_s"]
    for x in r["inference"]["levers"]:
        rate = x["decoded_images_per_s"]
        lines.append(
            f"| {x['name']} | {x['what']} | {fmt(rate)} (×{rate / base:.1f}) | {fmt(x['with_decoding_images_per_s'])} "
            f"| {fmt(x['one_image_ms'], 1)} | {x['setup_s'] + x['first_call_s']:.1f} "
            f"| {fmt(x['one_thread_images_per_cpu_s'])} |"
        )
    lines += [
        "",
        "The last column runs each lever on one thread and counts CPU time, not wall time: the work per image, "
        "which other processes on the machine disturb far less than the wall-clock figures.",
    ]
    d = r.get("decoding")
    if d:
        lines += [
            "",
            "## JPEG decoding + resize to 128x128, per image",
            "",
            "| source | full decode, ms | `io.load_image` (JPEG draft, >= 2x the input size), ms "
            "| draft vs full, pixel difference |",
            "|---|---:|---:|---|",
            f"| dataset files (mostly 224x224 or ~256 high) | {d['dataset_full_ms']:.2f} "
            f"| {d['dataset_draft_ms']:.2f} | "
            f"mean {d['dataset_draft_mean_abs_diff']:.2f}, max {d['dataset_draft_max_abs_diff']}, "
            f"{100 * d['dataset_draft_images_changed']:.0f} % of images changed |",
            f"| a 2400x2000 JPEG | {d['large_2400x2000_full_ms']:.1f} | {d['large_2400x2000_draft_ms']:.1f} | "
            f"max {d['large_draft_max_abs_diff']} |",
            "",
            f"Drafting straight to the input size (1x) instead: {d['large_2400x2000_draft_1x_ms']:.1f} ms on the large "
            f"JPEG, max difference {d['large_draft_1x_max_abs_diff']}; on the dataset it changes "
            f"{100 * d['dataset_draft_1x_images_changed']:.0f} % of images (max difference "
            f"{d['dataset_draft_1x_max_abs_diff']} grey levels), which 2x avoids.",
        ]
    if tr:
        lines += [
            "",
            f"Training: the real `PneumoniaClassifier` training step (augmentation, forward, focal loss, metrics, "
            f"backward, Adam) under `pneumolens train`'s Lightning Trainer (`build_trainer`, deterministic=True), "
            f"{tr['b8']['steps']} timed steps after warm-up, median of runs; data are decoded uint8 arrays in memory.",
        ]
        prof = tr.get("profile")
        if prof:
            lines += ["", f"Where a training step's time goes (batch {prof['batch_size']}, torch.profiler, "
                      f"self CPU time of {prof['steps']} steps):", "", "| part | share |", "|---|---:|"]
            lines += [f"| {k} | {100 * v:.0f} % |" for k, v in prof["shares"].items()]
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def cpu_snapshot() -> dict | None:
    """CPU seconds the whole machine and this process (with its finished children) have used so far.

    The difference of two snapshots tells how much of the cores *other* processes took during a
    run, which the load average cannot: its 1-minute average still counts a benchmark that has
    just finished. ``None`` where ``/proc/stat`` is missing (not Linux).
    """
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system
    return {"busy_s": busy / os.sysconf("SC_CLK_TCK"), "own_s": own, "wall_s": time.monotonic()}


def other_cpu_share(start: dict | None, end: dict | None) -> float | None:
    """Share of all cores that processes other than this benchmark used between two snapshots."""
    if not start or not end:
        return None
    capacity = (end["wall_s"] - start["wall_s"]) * (os.cpu_count() or 1)
    other = (end["busy_s"] - start["busy_s"]) - (end["own_s"] - start["own_s"])
    return max(0.0, other) / capacity if capacity > 0 else None


def reference_gflops(n: int = 1024, repeats: int = 7, threads: int | None = None) -> float:
    """The machine's speed right now: GFLOP/s of an n x n float32 matrix product (all threads, or ``threads``).

    This VM's speed drifts by up to a third within minutes (the same code, idle); measured at the
    start and end of a run, it tells a slow quarter hour from a slower program. Measured on one
    thread as well, it tells how much the second core adds: on this VM, often far less than 2x.
    """
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(3):  # thread pool and caches warm
            torch.mm(a, b)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(saved)
    return 2 * n**3 / statistics.median(times) / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short run: fewer repeats and steps (a sanity check)")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("PNEUMOLENS_DATA", DEFAULT_DATA)))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="where core.md and core.json go")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--no-train", action="store_true", help="skip the training measurements")
    ap.add_argument(
        "--compile",
        dest="compile_",
        action="store_true",
        default=None,
        help="measure torch.compile (default: full runs only)",
    )
    ap.add_argument("--no-compile", dest="compile_", action="store_false")
    args = ap.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no GPU/TPU banners and tips
    quick = args.quick
    compile_ = (not quick) if args.compile_ is None else args.compile_
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    t_start = time.time()
    load_start, cpu_start = os.getloadavg(), cpu_snapshot()
    gflops_start, gflops1_start = reference_gflops(), reference_gflops(threads=1)
    repeats, latency_runs = (3, 10) if quick else (7, 30)

    files = jpeg_files(args.data, (4 if quick else 8) * BATCH) if (args.data / "train").is_dir() else []
    if not files:
        print(f"note: no dataset at {args.data}; figures that include decoding are skipped", file=sys.stderr)

    torch.manual_seed(0)
    model = CnnLstm(ModelConfig()).eval()  # costs do not depend on the weights
    decoded = to_input(decode(files[:BATCH])) if files else torch.rand(BATCH, 1, 128, 128)
    result: dict = {
        "command": " ".join(["bench/bench_core.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "quick": quick,
        "parameters": count_parameters(model),
        "original": ORIGINAL,
        "goals": GOALS,
    }

    section("inference levers")
    lever_results = []
    for name, what, build in levers(model, compile_):
        res = bench_lever(build, files, decoded, repeats, latency_runs, cpu_check=name != "compile")
        res.update(name=name, what=what)
        lever_results.append(res)
        print(
            f"{name:14s} {res['decoded_images_per_s']:7.1f} img/s decoded, "
            f"{fmt(res['with_decoding_images_per_s'], 1):>7s} incl. decoding, {res['one_image_ms']:6.1f} ms one image",
            file=sys.stderr,
            flush=True,
        )
    result["inference"] = {"batch_size": BATCH, "levers": lever_results}

    memory: dict = {}
    if files:
        import tempfile

        from pneumolens.checkpoint import Checkpoint, save_checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            ckpt = save_checkpoint(Checkpoint(model=model, config=model.config), Path(tmp) / "model.pt")
            section("Predictor.predict_files")
            result["inference"]["predict_files"] = pf = bench_predictor(ckpt, files, repeats)
            print(
                f"predict_files {pf['images_per_s']:.1f} img/s ({pf['backend']}), one file {pf['one_file_ms']:.1f} ms",
                file=sys.stderr,
                flush=True,
            )
            section("peak memory")
            memory = {"files": len(files), "predict_peak_rss_gb": peak_rss_predict(ckpt, files)}
        section("decoding")
        result["decoding"] = bench_decoding(files[: 2 * BATCH])

    if not args.no_train:
        from pneumolens.accel import keep_freed_memory

        # As `pneumolens train` does, and only for training: inference above ran with glibc's
        # defaults, as `predict` and `serve` do (pneumolens/accel/memory.py).
        keep_freed_memory()
        images = (
            torch.from_numpy(decode(files[: 4 * BATCH]))
            if files
            else torch.randint(0, 256, (256, 128, 128), dtype=torch.uint8)
        )
        steps, warmup, runs = (8, 2, 1) if quick else (40, 5, 3)
        result["training"] = {}
        for key, bs, accelerate in (("b8", 8, True), ("b32", 32, True), ("b32_stock", 32, False)):
            kind = "" if accelerate else ", stock layers (--no-accel)"
            section(f"training, batch {bs}{kind}")
            result["training"][key] = res = bench_training(
                images, bs, steps if bs == 8 else max(4, steps // 2), warmup, runs, accelerate=accelerate
            )
            print(f"training batch {bs}{kind}: {res['images_per_s']:.1f} img/s", file=sys.stderr, flush=True)
        section("training step profile, batch 8")
        result["training"]["profile"] = profile_training(images, 8)

    memory["bench_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    result["memory"] = memory
    result["load"] = {"start": list(load_start), "end": list(os.getloadavg())}
    result["other_cpu_share"] = other_cpu_share(cpu_start, cpu_snapshot())
    result["reference_gflops"] = {"start": gflops_start, "end": reference_gflops()}
    result["reference_gflops_one_thread"] = {"start": gflops1_start, "end": reference_gflops(threads=1)}
    result["wall_s"] = time.time() - t_start
    text = report(result)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "core-quick" if quick else "core"
    (args.out / f"{stem}.md").write_text(text, encoding="utf-8")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out / (stem + '.md')} and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
