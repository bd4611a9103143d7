"""What the CNN-LSTM costs on a CUDA GPU, and whether its explanations there match the CPU's.

Usage (on a machine with a GPU; the project's own figures come from the 2-core CPU scripts)::

    python bench/bench_gpu.py --json bench/results/gpu.json --md bench/results/gpu.md

Measures, on the first visible GPU:

- training images/s with the real Lightning module and the seed recipe (Adam, focal loss,
  kornia augmentation on the GPU) at batch 8, 32 and 128, as ``bench_core.py`` does on the CPU;
- inference images/s of the plain eval-mode model at batch 64 and 512 (float32), and one image's
  latency;
- each explanation method's seconds per image (median) with the shipped model, and how far its
  map on the GPU is from the map the CPU computes for the same image and seed (Pearson r and the
  largest difference relative to the map's range). Gradient methods run with cuDNN off for the
  LSTMs (``pneumolens.explain.base.gradient_scope``); random draws come from each device's own
  generator, so sampled methods agree in estimate, not bit for bit.

Images are synthetic films (the dataset does not travel to the GPU machine); costs do not
depend on the pixels.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import bench_training  # noqa: E402
from bench_explain import CASES, bench_images  # noqa: E402

from pneumolens.explain import explain  # noqa: E402


DEVICE = "cuda"


def _sync() -> None:
    if DEVICE != "cpu":
        torch.cuda.synchronize()


def bench_inference(model: torch.nn.Module, batch: int, repeats: int = 5, iters: int = 10) -> float:
    """Median images/s of the eval-mode model on ``batch`` random images already on the GPU."""
    x = torch.rand(batch, 1, 128, 128, device=DEVICE)
    rates = []
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        for _ in range(repeats):
            _sync()
            t = time.perf_counter()
            for _ in range(iters):
                model(x)
            _sync()
            rates.append(batch * iters / (time.perf_counter() - t))
    return statistics.median(rates)


def one_image_ms(model: torch.nn.Module, repeats: int = 50) -> float:
    """Median milliseconds for one image from host memory to a probability on the host."""
    x = torch.rand(1, 1, 128, 128)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 5):
            t = time.perf_counter()
            torch.sigmoid(model(x.to(DEVICE, non_blocking=True))).item()
            if i >= 5:
                times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def compare_maps(cpu: np.ndarray, gpu: np.ndarray) -> dict:
    """Pearson r and largest difference relative to the CPU map's range (two equal flat maps: r = 1)."""
    scale = float(np.ptp(cpu)) or 1.0
    if np.ptp(cpu) == 0 or np.ptp(gpu) == 0:  # e.g. Grad-CAM's ReLU zeroes a map with no pneumonia evidence
        r = 1.0 if np.allclose(cpu, gpu, atol=1e-6) else 0.0
    else:
        r = float(np.corrcoef(cpu.ravel(), gpu.ravel())[0, 1])
    return {"pearson_r": r,
            "max_abs_diff_rel": float(np.abs(cpu - gpu).max() / scale)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="model to time and explain (default: the shipped model)")
    p.add_argument("--repeats", type=int, default=3, help="images timed per explanation method (default: 3)")
    p.add_argument("--train-steps", type=int, default=40, help="timed training steps per run (default: 40)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--md", type=Path, default=None, help="write the markdown tables here")
    p.add_argument("--dry-run-on-cpu", action="store_true", help="check the script itself on a machine without a GPU")
    args = p.parse_args(argv)
    global DEVICE
    DEVICE = "cpu" if args.dry_run_on_cpu else "cuda"
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU visible (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    from pneumolens.checkpoint import load_checkpoint

    props = torch.cuda.get_device_properties(0) if DEVICE == "cuda" else None
    env = {"gpu": props.name if props else "none (dry run on the CPU)",
           "gpu_memory_gb": round(props.total_memory / 2**30, 1) if props else 0, "torch": torch.__version__,
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "cpus": os.cpu_count()}
    print(f"GPU: {env}", file=sys.stderr, flush=True)
    out: dict = {"env": env}

    films = bench_images(512, data=None)  # synthetic: the dataset does not travel
    train_images = torch.from_numpy(films).float().div_(255)[:, None]
    out["training"] = {}
    for bs in (8, 32, 128):
        r = bench_training(train_images, bs, args.train_steps, warmup=5, repeats=3,
                           accelerator="gpu" if DEVICE == "cuda" else "cpu")
        out["training"][bs] = r
        print(f"  training batch {bs}: {r['images_per_s']:.0f} img/s", file=sys.stderr, flush=True)

    ck = load_checkpoint(args.checkpoint)
    gpu_model = copy.deepcopy(ck.model).to(DEVICE).eval()
    out["inference"] = {f"batch_{b}": bench_inference(gpu_model, b) for b in (64, 512)}
    out["inference"]["one_image_ms"] = one_image_ms(gpu_model)
    print(f"  inference: {out['inference']}", file=sys.stderr, flush=True)

    images = bench_images(args.repeats + 1, data=None)
    background = bench_images(40, data=None)[8:]  # 32 other films as the SHAP background
    out["explain"] = []
    for m, (label, params, _orig, _goal) in CASES.items():
        kw = dict(params)
        if m == "shap":
            kw["background"] = background
        explain(gpu_model, images[:1], m, **kw)  # warm-up
        times, agree = [], []
        for i in range(1, args.repeats + 1):
            _sync()
            g = explain(gpu_model, images[i : i + 1], m, seed=i, **kw)
            _sync()
            times.append(g.elapsed_s)
            c = explain(ck.model, images[i : i + 1], m, seed=i, **kw)
            agree.append(compare_maps(c.maps, g.maps))
        row = {"method": m, "label": label, "gpu_median_s": statistics.median(times), "times_s": times,
               "pearson_r_min": min(a["pearson_r"] for a in agree),
               "max_abs_diff_rel_max": max(a["max_abs_diff_rel"] for a in agree)}
        out["explain"].append(row)
        print(f"  {m}: {row['gpu_median_s']:.3f} s/image, CPU agreement r >= {row['pearson_r_min']:.4f}, "
              f"max diff {row['max_abs_diff_rel_max']:.2e} of range", file=sys.stderr, flush=True)

    lines = [f"GPU: {env['gpu']} ({env['gpu_memory_gb']} GB), torch {env['torch']}, CUDA {env['cuda']}, "
             f"cuDNN {env['cudnn']}; synthetic 128x128 films.", "",
             "| work | GPU |", "|---|---:|"]
    for bs, r in out["training"].items():
        lines.append(f"| training, batch {bs} (seed recipe, Lightning), images/s | {r['images_per_s']:.0f} |")
    for b in (64, 512):
        lines.append(f"| inference, batch {b}, float32, images/s | {out['inference'][f'batch_{b}']:.0f} |")
    lines.append(f"| one image (host to probability), ms | {out['inference']['one_image_ms']:.2f} |")
    lines += ["", "| method | GPU s/image (median) | map vs CPU: Pearson r (min) | largest difference / map range |",
              "|---|---:|---:|---:|"]
    for r in out["explain"]:
        lines.append(f"| {r['label']} | {r['gpu_median_s']:.3f} | {r['pearson_r_min']:.4f} | "
                     f"{r['max_abs_diff_rel_max']:.1e} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str))
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
