"""Explanation worker processes: limits (busy → 503, time limit → 504 and a fresh worker), crashes,
and ``/healthz`` staying fast while an explanation runs.

The jobs below are module-level functions: a spawned worker imports this module by name to run
them (pytest puts ``tests/`` on ``sys.path``, and spawned processes inherit it). Every test here
starts worker processes (each imports torch and rebuilds the model), and several assert wall-clock
bounds or wait for a worker to die or time out: the whole module is marked slow. Every wait has a
deadline.
"""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from pneumolens.checkpoint import load_checkpoint  # noqa: E402
from pneumolens.service import ServeSettings, create_app  # noqa: E402
from pneumolens.service.dependencies import get_explain_pool  # noqa: E402
from pneumolens.service.workers import (  # noqa: E402
    ExplainBusy,
    ExplainFailed,
    ExplainInputError,
    ExplainPool,
    ExplainTimeout,
)

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.slow]


def probe_job(context: dict, payload: dict) -> dict:
    """Sleep, misbehave on request, or report the worker's pid and its model's logit for ``x``."""
    time.sleep(payload.get("sleep", 0.0))
    if payload.get("invalid"):
        raise ValueError("lime: n_samples must be positive")
    if payload.get("crash"):
        raise RuntimeError("explainer bug")
    if payload.get("die"):
        os._exit(3)
    with torch.inference_mode():
        logit = float(context["model"](torch.as_tensor(payload["x"]))[0]) if "x" in payload else None
    return {"pid": os.getpid(), "logit": logit, "threads": torch.get_num_threads(), "extra": context.get("extra")}


def explain_shaped_job(context: dict, payload: dict) -> list:
    """What run_job returns, after sleeping: lets the HTTP tests use a slow 'explanation'."""
    time.sleep(payload.get("seed", 0) / 10)
    return []


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint_path: Path):
    return load_checkpoint(tiny_checkpoint_path)


@pytest.fixture(scope="module")
def pool(checkpoint):
    p = ExplainPool(checkpoint, size=1, time_limit_s=20, threads=1, job=probe_job, extras={"extra": 7})
    p.start()
    yield p
    p.close()


def test_worker_rebuilds_the_served_model(pool, checkpoint):
    x = np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32)
    out = pool.run({"x": x})
    with torch.inference_mode():
        expected = float(checkpoint.model(torch.as_tensor(x))[0])
    assert out["logit"] == pytest.approx(expected, abs=1e-6)
    assert out["pid"] != os.getpid() and out["threads"] == 1 and out["extra"] == 7
    assert pool.run({})["pid"] == out["pid"]  # the worker is reused


def test_second_job_while_busy_is_refused_at_once(pool, wait_until):
    first = pool.run({})  # make sure the worker has started
    done: dict = {}
    t = threading.Thread(target=lambda: done.setdefault("out", pool.run({"sleep": 1.5})))
    t.start()
    wait_until(lambda: pool.busy() > 0, "the worker to take the sleeping job")
    t0 = time.perf_counter()
    with pytest.raises(ExplainBusy, match="busy"):
        pool.run({})
    assert time.perf_counter() - t0 < 0.5
    assert pool.status()["busy"] == 1
    t.join(30)
    assert not t.is_alive(), "the sleeping job did not return within 30 s"
    assert done["out"]["pid"] == first["pid"] and pool.busy() == 0


def test_refused_settings_and_crashes_keep_the_worker(pool):
    pid = pool.run({})["pid"]
    with pytest.raises(ExplainInputError, match="n_samples must be positive"):
        pool.run({"invalid": True})
    with pytest.raises(ExplainFailed, match="RuntimeError: explainer bug"):
        pool.run({"crash": True})
    assert pool.run({})["pid"] == pid


def test_a_dead_worker_is_replaced(pool):
    pid = pool.run({})["pid"]
    with pytest.raises(ExplainFailed, match="died"):
        pool.run({"die": True})
    assert pool.run({})["pid"] != pid


def test_time_limit_stops_the_worker_and_a_fresh_one_serves_next(checkpoint):
    p = ExplainPool(checkpoint, size=1, time_limit_s=1.0, threads=1, job=probe_job)
    try:
        pid = p.run({})["pid"]  # includes the worker's start
        t0 = time.perf_counter()
        with pytest.raises(ExplainTimeout, match="time limit of 1 s"):
            p.run({"sleep": 60})
        assert time.perf_counter() - t0 < 10
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the old worker is gone
        assert p.run({})["pid"] != pid
    finally:
        p.close()


def test_close_stops_every_worker(checkpoint):
    p = ExplainPool(checkpoint, size=2, job=probe_job)
    p.start()
    procs = [w.proc for w in p._workers]
    p.close()
    assert all(not proc.is_alive() for proc in procs)
    with pytest.raises(ExplainFailed, match="shutting down"):
        p.run({})


# ----------------------------------------------------------------------------- over HTTP


def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_healthz_stays_fast_and_a_second_explain_gets_503_while_one_runs(tiny_checkpoint_path, checkpoint, wait_until):
    app = create_app(
        ServeSettings(
            checkpoint=tiny_checkpoint_path, explain_prestart=False, retry_after_s=7, allowed_hosts=["testserver"]
        )
    )
    slow_pool = ExplainPool(checkpoint, size=1, time_limit_s=30, job=explain_shaped_job)
    app.dependency_overrides[get_explain_pool] = lambda: slow_pool
    try:
        with TestClient(app) as client:
            assert client.post("/v1/explain", files={"file": ("a.png", png())}).status_code == 200  # warm worker
            first: dict = {}
            t = threading.Thread(
                target=lambda: first.setdefault(
                    "r", client.post("/v1/explain", files={"file": ("a.png", png())}, data={"seed": "30"})
                )  # sleeps 3 s
            )
            t.start()
            wait_until(lambda: slow_pool.busy() > 0, "the worker to take the first explanation")
            latencies = []
            for _ in range(10):
                t0 = time.perf_counter()
                assert client.get("/healthz").status_code == 200
                latencies.append(time.perf_counter() - t0)
            busy = client.post("/v1/explain", files={"file": ("a.png", png())})
            assert client.get("/healthz").json()["explanations"]["busy"] == 1
            t.join(30)
            assert not t.is_alive(), "the first explanation did not return within 30 s"
    finally:
        slow_pool.close()
    assert max(latencies) < 0.5, latencies
    assert busy.status_code == 503 and busy.headers["retry-after"] == "7"
    assert first["r"].status_code == 200
