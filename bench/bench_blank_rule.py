"""How far the real films lie from the corrupt-decode rules of :mod:`pneumolens.io`.

For every film of the official train and val splits: the decode's grey-level spread (standard
deviation) and its dominant share (pixels within ``DOMINANT_HALF_WIDTH`` levels of one
value), against :data:`~pneumolens.io.MIN_CONTENT_STD` and :data:`~pneumolens.io.MAX_DOMINANT_SHARE`;
whether the decode's bottom row is libjpeg's grey fill; and how many films ``load_image`` refuses
(must be none).

    .venv/bin/python bench/bench_blank_rule.py [--data DIR] [--size 128] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pneumolens import io  # noqa: E402
from pneumolens.errors import InvalidImageError  # noqa: E402


def dominant_share(image: np.ndarray) -> float:
    hist = np.bincount(image.ravel(), minlength=256).astype(np.float64)
    return float(np.convolve(hist, np.ones(2 * io.DOMINANT_HALF_WIDTH + 1), mode="same").max()) / image.size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "chest_xray")
    ap.add_argument("--size", type=int, nargs="+", default=[128, 224], help="model input sizes to check")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    files = sorted(p for split in ("train", "val") for p in (args.data / split).rglob("*") if p.is_file())
    if not files:
        sys.exit(f"no films under {args.data}/train and /val")
    t0 = time.perf_counter()
    result: dict = {"films": len(files), "data": str(args.data), "sizes": {}}
    fill_rows = 0
    refused: list[str] = []
    for size in args.size:
        stds, shares = [], []
        for f in files:
            gray = io.read_image(f, draft_size=io.DRAFT_FACTOR * size)
            if size == args.size[0]:
                fill_rows += bool(np.all(gray[-1] == io.JPEG_FILL))
            stds.append(float(gray.std()))  # the rule reads the decode (in draft mode for a large JPEG)
            shares.append(dominant_share(gray))
            try:
                io.load_image(f, size)
            except InvalidImageError as exc:
                refused.append(str(exc))
        s, d = np.array(stds), np.array(shares)
        result["sizes"][size] = {
            "std_min": float(s.min()), "std_min_file": files[int(s.argmin())].name,
            "std_p1": float(np.percentile(s, 1)),
            "dominant_share_max": float(d.max()), "dominant_share_max_file": files[int(d.argmax())].name,
            "dominant_share_p99": float(np.percentile(d, 99)),
        }
    result.update(bottom_row_is_jpeg_fill=fill_rows, refused=refused, seconds=round(time.perf_counter() - t0, 1),
                  min_content_std=io.MIN_CONTENT_STD, max_dominant_share=io.MAX_DOMINANT_SHARE)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "blank-rule.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Corrupt-decode rules against the real films",
        "",
        f"`bench/bench_blank_rule.py`: {len(files)} films of {args.data} (train + val), "
        f"{result['seconds']} s.",
        "",
        f"Rules (`pneumolens.io`): blank when the decode's standard deviation < {io.MIN_CONTENT_STD} grey "
        f"levels or >= {io.MAX_DOMINANT_SHARE:.0%} of its pixels lie within ±{io.DOMINANT_HALF_WIDTH} levels "
        f"of one value; a JPEG is truncated when its bottom row is all {io.JPEG_FILL} (libjpeg's fill).",
        "",
        "| input size (decode drafted for it) | min std (film) | 1st pct std | max dominant share (film) | 99th pct share |",
        "|---|---|---|---|---|",
    ]
    for size, r in result["sizes"].items():
        lines.append(f"| {size} | {r['std_min']:.2f} ({r['std_min_file']}) | {r['std_p1']:.2f} | "
                     f"{r['dominant_share_max']:.3f} ({r['dominant_share_max_file']}) | "
                     f"{r['dominant_share_p99']:.3f} |")
    examples = f" ({'; '.join(refused[:5])})" if refused else ""
    lines += ["", f"Films whose bottom row is all {io.JPEG_FILL}: {fill_rows}. "
              f"Films `load_image` refuses: {len(refused)}{examples}."]
    (args.out / "blank-rule.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
