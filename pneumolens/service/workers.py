"""Explanation workers: separate processes that compute explanations under a count and a time limit.

Why processes and not threads:

* **a real time limit**: a thread cannot be stopped, a process can. At the limit the worker
  is killed (and a fresh one started), so a runaway LIME call cannot hold a CPU for minutes;
* **isolation**: Captum hooks the model it explains; a private copy of the model in another
  process can never fire those hooks inside a concurrent ``/v1/predict`` call, and a crash in
  an explainer cannot take the service down;
* **fair CPU**: each worker runs with ``explain_threads`` torch threads (default 1), leaving
  the other cores to predictions, and ``/healthz`` never waits for the GIL of an explainer.

Each worker owns one pipe and runs one job at a time; the pool hands out idle workers and
refuses (``ExplainBusy`` → 503) when none is idle instead of queueing without bound.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from ..errors import PneumoLensError

log = logging.getLogger(__name__)

#: ``job(context, payload) -> result``, where ``context`` holds ``model`` (the rebuilt network),
#: ``threads`` and the pool's ``extras``. Must be importable by name (it is sent to a new
#: process); an optional ``job.warm_up(context)`` runs once when a worker starts.
Job = Callable[[dict, dict], Any]


class ExplainBusy(PneumoLensError):
    """Every explanation worker is busy (→ 503 with Retry-After)."""


class ExplainTimeout(PneumoLensError):
    """An explanation ran past the time limit; its worker was stopped (→ 504)."""


class ExplainInputError(PneumoLensError):
    """The explainer refused the request's settings (unknown method, bad parameter) (→ 422)."""


class ExplainFailed(PneumoLensError):
    """The explainer crashed, or its worker died or did not start (→ 500)."""


def model_spec(checkpoint: Any, extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a worker needs: the model's config and weights as plain NumPy arrays, plus ``extras``."""
    state = {k: v.detach().cpu().numpy() for k, v in checkpoint.model.state_dict().items()}
    return {"config": checkpoint.config.to_dict(), "state": state, "extras": dict(extras or {})}


def _build_model(spec: dict[str, Any]) -> Any:
    import torch

    from ..model import CnnLstm, ModelConfig

    model = CnnLstm(ModelConfig.from_dict(spec["config"]))
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in spec["state"].items()})
    return model.eval()


def _worker_main(conn: Connection, spec: dict[str, Any], job: Job, threads: int) -> None:
    """Worker process: build the model, say ready, then answer jobs until told to stop."""
    import torch

    torch.set_num_threads(threads)
    try:
        context = {"model": _build_model(spec), "threads": threads, **spec.get("extras", {})}
        warm = getattr(job, "warm_up", None)
        if warm is not None:
            warm(context)  # e.g. import the explanation library before the first request
    except Exception as exc:  # reported to the parent, which raises ExplainFailed
        conn.send(("failed", f"worker could not start: {exc.__class__.__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            payload = conn.recv()
        except (EOFError, OSError):
            return
        if payload is None:
            return
        try:
            conn.send(("ok", job(context, payload)))
        except (PneumoLensError, ValueError) as exc:
            conn.send(("invalid", str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__))
        except Exception as exc:
            log.exception("explanation failed")
            conn.send(("failed", f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))


class _Worker:
    """One worker process and its pipe. Used by one request at a time (the pool sees to it)."""

    def __init__(self, ctx: Any, spec: dict[str, Any], job: Job, threads: int, start_timeout_s: float) -> None:
        self._ctx, self._spec, self._job, self._threads = ctx, spec, job, threads
        self._start_timeout_s = start_timeout_s
        self.proc: Any = None
        self.conn: Connection | None = None
        self.ready = False
        self.closed = False

    def start(self) -> None:
        if self.closed:
            raise ExplainFailed("the explanation service is shutting down")
        parent, child = self._ctx.Pipe()
        self.proc = self._ctx.Process(
            target=_worker_main,
            args=(child, self._spec, self._job, self._threads),
            daemon=True,
            name="pneumolens-explain",
        )
        self.proc.start()
        child.close()
        self.conn, self.ready = parent, False

    def stop(self, grace_s: float = 2.0, final: bool = False) -> None:
        self.closed = self.closed or final
        if self.proc is None:
            return
        if self.conn is not None and self.ready:  # a worker still starting cannot listen: kill it
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                pass
            self.proc.join(grace_s)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(grace_s)
        if self.conn is not None:
            self.conn.close()
        self.proc, self.conn, self.ready = None, None, False

    def restart(self) -> None:
        if self.proc is not None:
            self.proc.kill()
        self.stop(grace_s=2.0)
        self.start()

    def _wait_ready(self) -> None:
        if self.ready:
            return
        assert self.conn is not None
        if not self.conn.poll(self._start_timeout_s):
            self.restart()
            raise ExplainFailed(f"explanation worker did not start within {self._start_timeout_s:.0f} s")
        kind, value = self._recv()
        if kind != "ready":
            self.stop()
            raise ExplainFailed(str(value))
        self.ready = True

    def _recv(self) -> tuple[str, Any]:
        assert self.conn is not None
        try:
            return self.conn.recv()
        except (EOFError, OSError) as exc:
            code = None
            if self.proc is not None:
                self.proc.join(1.0)
                code = self.proc.exitcode
            self.restart()
            raise ExplainFailed(f"explanation worker died (exit code {code})") from exc

    def call(self, payload: dict, time_limit_s: float) -> Any:
        if self.proc is None or not self.proc.is_alive():
            self.stop()
            self.start()
        self._wait_ready()
        assert self.conn is not None
        try:
            self.conn.send(payload)
            answered = self.conn.poll(time_limit_s)
        except (OSError, ValueError) as exc:  # the pool closed this worker meanwhile (shutdown)
            raise ExplainFailed("the explanation service is shutting down") from exc
        if not answered:
            self.restart()  # the only way to stop a computation for sure
            raise ExplainTimeout(f"explanation exceeded the time limit of {time_limit_s:g} s and was stopped")
        kind, value = self._recv()
        if kind == "ok":
            return value
        if kind == "invalid":
            raise ExplainInputError(value)
        raise ExplainFailed(f"explanation failed: {value}")


class ExplainPool:
    """A fixed number of explanation worker processes.

    Args:
        checkpoint: the served :class:`~pneumolens.checkpoint.Checkpoint` (each worker gets a copy).
        size: workers, i.e. explanations computed at once. Default: 1.
        time_limit_s: wall-clock limit of one job, not counting a worker's start. Default: 120.
        threads: torch threads per worker. Default: 1.
        job: the function a worker runs, ``job(context, payload) -> result``; must be importable
            by name. Default: :func:`pneumolens.service.explaining.run_job`.
        start_timeout_s: how long to wait for a worker to start. Default: 120.
        extras: more values for each worker's context (e.g. ``background`` images for SHAP).
    """

    def __init__(
        self,
        checkpoint: Any,
        size: int = 1,
        time_limit_s: float = 120.0,
        threads: int = 1,
        job: Job | None = None,
        start_timeout_s: float = 120.0,
        extras: dict[str, Any] | None = None,
    ) -> None:
        if job is None:
            from .explaining import run_job

            job = run_job
        ctx = mp.get_context("spawn")  # never fork a process that runs torch threads
        spec = model_spec(checkpoint, extras)
        self.size = size
        self.time_limit_s = time_limit_s
        self._workers = [_Worker(ctx, spec, job, threads, start_timeout_s) for _ in range(size)]
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for w in self._workers:
            self._idle.put(w)
        self._lock = threading.Lock()
        self._started = False
        self._closed = False

    def start(self) -> None:
        """Start every worker process now (they load in the background)."""
        with self._lock:
            if self._started or self._closed:
                return
            for w in self._workers:
                if w.proc is None:
                    w.start()
            self._started = True

    def busy(self) -> int:
        return self.size - self._idle.qsize()

    def status(self) -> dict[str, Any]:
        return {"workers": self.size, "busy": self.busy(), "time_limit_s": self.time_limit_s}

    def run(self, payload: dict) -> Any:
        """Run one job on an idle worker, waiting at most the time limit.

        Raises:
            ExplainBusy: no worker is idle.
            ExplainTimeout: the job ran past the time limit (its worker was restarted).
            ExplainInputError: the job refused its input.
            ExplainFailed: the job crashed or its worker died or did not start.
        """
        if self._closed:
            raise ExplainFailed("the explanation service is shutting down")
        try:
            worker = self._idle.get_nowait()
        except queue.Empty:
            raise ExplainBusy(
                f"all {self.size} explanation worker{'s are' if self.size > 1 else ' is'} busy; retry later"
            ) from None
        t0 = time.perf_counter()
        try:
            return worker.call(payload, self.time_limit_s)
        finally:
            log.debug("explanation job took %.2f s", time.perf_counter() - t0)
            self._idle.put(worker)

    def close(self) -> None:
        """Stop every worker (waits briefly for a running job, then kills it)."""
        self._closed = True
        for w in self._workers:
            w.stop(final=True)
