"""Load test of the web service on loopback: N concurrent /v1/predict clients for a fixed time.

Two phases of ``--duration`` seconds each, against a real ``pneumolens serve`` subprocess:

1. ``predict``: N clients post an X-ray to /v1/predict in a loop;
2. ``predict+explain``: the same, while explanation requests (``--explain-methods``, LIME by
   default) run back to back, and a prober checks that /healthz stays fast.

Reports requests/s, p50 / p99 latency and errors per phase (goal: 0 errors and p99 < 200 ms
at 8 clients on 2 cores). The clients run in this process, so they share the CPU with the
server: the numbers are for the whole machine, as a user on the same box would see them.

    python bench/bench_service.py --clients 8 --duration 10
    python bench/bench_service.py --checkpoint runs/train/model.pt --image some.jpeg --out bench/results/service.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic_jpeg(h: int = 1000, w: int = 1200, seed: int = 0) -> bytes:
    """A 1200x1000 grayscale JPEG, about the size of an original Kaggle film, so decoding costs what it would."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy = np.mgrid[0:h, 0:w][0]
    img = np.clip(60 + 120 * yy / h + rng.normal(0, 18, (h, w)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def random_checkpoint(folder: Path) -> Path:
    """A full-size CnnLstm with random weights: speed does not depend on the weights."""
    import torch

    from pneumolens.checkpoint import Checkpoint, save_checkpoint
    from pneumolens.model import CnnLstm, ModelConfig

    torch.manual_seed(0)
    return save_checkpoint(Checkpoint(model=CnnLstm(ModelConfig()).eval(), config=ModelConfig()), folder / "model.pt")


def start_server(checkpoint: Path, port: int, workers: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "pneumolens.cli",
        "serve",
        "--checkpoint",
        str(checkpoint),
        "--port",
        str(port),
        "--explain-workers",
        str(workers),
    ]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(base + "/healthz", timeout=2).json().get("status") == "ok":
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"server not ready after {timeout:.0f} s")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_clients(base: str, image: bytes, clients: int, duration: float, server_pid: int | None = None) -> dict:
    """``clients`` threads posting to /v1/predict until ``duration`` has passed.

    With ``server_pid``, also the server's CPU time per request: unlike latency, it hardly
    depends on what else the machine is doing, so it compares runs on a busy machine.
    """
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + duration

    def client() -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    r = c.post("/v1/predict", files={"file": ("film.jpeg", image, "image/jpeg")})
                    ok = r.status_code == 200 and r.json()["results"][0]["probability"] is not None
                    err = None if ok else f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    err = exc.__class__.__name__
                dt = time.perf_counter() - t0
                with lock:
                    (errors.append(err) if err else latencies.append(dt))

    cpu0 = cpu_seconds(server_pid) if server_pid else None
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu1 = cpu_seconds(server_pid) if server_pid else None
    cpu_ms = 1000 * (cpu1 - cpu0) / len(latencies) if cpu0 is not None and cpu1 is not None and latencies else None
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(1000 * percentile(latencies, 50), 1),
        "p99_ms": round(1000 * percentile(latencies, 99), 1),
        "max_ms": round(1000 * max(latencies), 1) if latencies else None,
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "server_cpu_ms_per_request": None if cpu_ms is None else round(cpu_ms, 1),
    }


class Background(threading.Thread):
    """Explanations back to back, and a /healthz probe every 100 ms, until stopped."""

    def __init__(self, base: str, image: bytes, methods: str) -> None:
        super().__init__(daemon=True)
        self.base, self.image, self.methods = base, image, methods
        self.stop = threading.Event()
        self.explain: list[tuple[int, float]] = []
        self.health: list[float] = []

    def run(self) -> None:
        prober = threading.Thread(target=self._probe, daemon=True)
        prober.start()
        with httpx.Client(base_url=self.base, timeout=600) as c:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                r = c.post(
                    "/v1/explain",
                    files={"file": ("film.jpeg", self.image, "image/jpeg")},
                    data={"methods": self.methods},
                )
                self.explain.append((r.status_code, time.perf_counter() - t0))
        prober.join()

    def _probe(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as c:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                c.get("/healthz")
                self.health.append(time.perf_counter() - t0)
                time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="model to serve (default: a random full-size one)")
    ap.add_argument("--image", type=Path, default=None, help="the X-ray to post (default: a synthetic 1200x1000 JPEG)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent /v1/predict clients (default: 8)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per phase (default: 10, at most 120)")
    ap.add_argument("--explain-methods", default="lime", help="methods of the background explanations (default: lime)")
    ap.add_argument("--explain-workers", type=int, default=1, help="the server's explanation workers (default: 1)")
    ap.add_argument("--skip-explain", action="store_true", help="run the predict phase only")
    ap.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                    help="a setting for the server, e.g. PNEUMOLENS_BATCH_PREDICTIONS=false (repeatable)")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args(argv)
    server_env = {}
    for item in args.server_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("PNEUMOLENS_"):
            ap.error(f"--server-env expects PNEUMOLENS_NAME=VALUE, got {item!r}")
        server_env[name] = value
    duration = min(max(args.duration, 1.0), 120.0)

    image = args.image.read_bytes() if args.image else synthetic_jpeg()
    with tempfile.TemporaryDirectory(prefix="pneumolens-bench-") as tmp:
        checkpoint = args.checkpoint or random_checkpoint(Path(tmp))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_server(checkpoint, port, args.explain_workers, server_env)
        try:
            wait_ready(base, proc)
            # warm up: the first requests pay for lazy initialisation; the explain warms its worker
            run_clients(base, image, min(args.clients, 2), 1.0)
            if not args.skip_explain:
                httpx.post(
                    base + "/v1/explain", files={"file": ("w.jpeg", image)}, data={"methods": "gradcam"}, timeout=600
                ).raise_for_status()
            results = {"predict": run_clients(base, image, args.clients, duration, proc.pid)}
            if not args.skip_explain:
                bg = Background(base, image, args.explain_methods)
                bg.start()
                time.sleep(0.5)  # let the first explanation start
                phase = run_clients(base, image, args.clients, duration, proc.pid)
                bg.stop.set()
                bg.join()
                phase["explanations"] = [{"status": s, "seconds": round(t, 2)} for s, t in bg.explain]
                phase["healthz_p99_ms"] = round(1000 * percentile(bg.health, 99), 1)
                phase["healthz_max_ms"] = round(1000 * max(bg.health), 1) if bg.health else None
                results["predict+explain"] = phase
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
        "load_avg_at_end": os.getloadavg(),
        "image_bytes": len(image),
        "duration_s": duration,
        "explain_methods": None if args.skip_explain else args.explain_methods,
        "server_env": server_env,
    }
    print(
        f"{'phase':<16} {'clients':>7} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'cpu ms/req':>10}  notes"
    )
    for name, r in results.items():
        notes = ""
        if "explanations" in r:
            notes = (
                f"{len(r['explanations'])} explanation(s) {[e['seconds'] for e in r['explanations']]} s, "
                f"healthz p99 {r['healthz_p99_ms']} ms"
            )
        row = f"{name:<16} {r['clients']:>7} {r['requests_per_s']:>7} {r['p50_ms']:>8} {r['p99_ms']:>8}"
        print(f"{row} {r['errors']:>6} {r['server_cpu_ms_per_request'] or '-':>10}  {notes}")
    print(f"machine: {meta['machine']}; load average at end: {meta['load_avg_at_end']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
