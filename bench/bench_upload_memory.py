"""Server memory under concurrent uploads of images that are small files but large decodes.

Starts a real ``pneumolens serve`` subprocess for each payload, records its resident memory
(``VmRSS`` from ``/proc``, sampled every few milliseconds) at idle, while ``--clients`` threads
post the payload to /v1/predict at the same time (``--rounds`` times each), and a moment after
the last answer (memory the process kept). Payloads, all generated here:

* ``png16-7999``: a 16-bit 7999x7999 PNG of about 124 KB (under the 64-megapixel cap; issue 17
  item 9: it cost ~730 MB per request);
* ``png16-5656``: a 16-bit 5656x5656 PNG, just under the 16-bit decode budget;
* ``png8-7999``: an 8-bit 7999x7999 PNG (64 MP, the largest 8-bit image accepted).

Goal: 8 concurrent requests stay under 1 GB above idle. ``--code DIR`` runs another copy of the
package (e.g. ``git archive HEAD | tar -x -C /tmp/old``) for a before/after comparison.

    python bench/bench_upload_memory.py --out bench/results/upload-memory.json
    python bench/bench_upload_memory.py --code /tmp/old --out bench/results/upload-memory-before.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from bench_service import cpu_seconds, free_port, random_checkpoint  # noqa: E402

PAYLOADS = {"png16-7999": (7999, 16), "png16-5656": (5656, 16), "png8-7999": (7999, 8)}


def payload(kind: str, cache: Path) -> bytes:
    """A smooth square PNG (compresses to a small file), cached in ``cache``."""
    from PIL import Image

    path = cache / f"{kind}.png"
    if not path.is_file():
        side, bits = PAYLOADS[kind]
        ramp = (np.arange(side, dtype=np.uint32) * (60000 if bits == 16 else 250) // side).astype(
            np.uint16 if bits == 16 else np.uint8
        )
        Image.fromarray(np.broadcast_to(ramp[:, None], (side, side)).copy()).save(path, optimize=True)
    return path.read_bytes()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(code: Path, checkpoint: Path, data: bytes, clients: int, rounds: int) -> dict:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(code), "PNEUMOLENS_EXPLAIN_PRESTART": "false"}
    cmd = [sys.executable, "-m", "pneumolens.cli", "serve", "-c", str(checkpoint), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited: {proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(base + "/healthz", timeout=2).json().get("status") == "ok":
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server not ready")
            time.sleep(0.25)
        httpx.post(base + "/v1/predict", files={"file": ("warm.png", _small_png())}, timeout=60)
        time.sleep(1.0)
        idle = rss_mb(proc.pid)
        peak, stop = [idle], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak.append(rss_mb(proc.pid))
                time.sleep(0.005)

        statuses: list[int] = []
        lock = threading.Lock()
        start = threading.Barrier(clients)

        def client() -> None:
            with httpx.Client(timeout=300) as http:
                start.wait()
                for _ in range(rounds):
                    code_ = http.post(base + "/v1/predict", files={"file": ("big.png", data, "image/png")}).status_code
                    with lock:
                        statuses.append(code_)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall, cpu1 = time.perf_counter() - t0, cpu_seconds(proc.pid)
        time.sleep(2.0)
        stop.set()
        sampler.join()
        held = rss_mb(proc.pid)
        return {
            "idle_rss_mb": round(idle, 1),
            "peak_above_idle_mb": round(max(peak) - idle, 1),
            "held_above_idle_mb": round(held - idle, 1),
            "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
            "wall_s": round(wall, 2),
            "server_cpu_s": None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 2),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _small_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=REPO, help="the copy of the package to serve (default: this one)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--payloads", default=",".join(PAYLOADS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = random_checkpoint(Path(tmp))
        cache = Path(tempfile.gettempdir()) / "pneumolens-bench-upload-memory"
        cache.mkdir(exist_ok=True)
        report = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
            "code": str(args.code),
            "clients": args.clients,
            "rounds": args.rounds,
            "results": {},
        }
        for kind in args.payloads.split(","):
            data = payload(kind, cache)
            result = measure(args.code, checkpoint, data, args.clients, args.rounds)
            result["file_kb"] = round(len(data) / 1024, 1)
            report["results"][kind] = result
            print(kind, json.dumps(result), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
