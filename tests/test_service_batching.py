"""The prediction batcher: concurrent callers share model calls and each gets exactly its own results.

Tests whose outcome depends on how fast threads run (batching happens only if requests arrive
while a batch is in the model; a lone request answered within a time) are marked slow; the
others hold whatever the scheduling, and every wait has a deadline.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pneumolens.service.batching import PredictionBatcher


class SlowPredictor:
    """Returns (name, image mean) per image after a pause, recording each call's batch size."""

    def __init__(self, pause: float = 0.05, fail_on: str | None = None) -> None:
        self.pause, self.fail_on = pause, fail_on
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def predict_arrays(self, images, names=None):
        time.sleep(self.pause)
        with self.lock:
            self.batches.append(len(images))
        if self.fail_on is not None and self.fail_on in names:
            raise RuntimeError(f"model failed on {self.fail_on}")
        return [(n, float(img.mean())) for n, img in zip(names, images)]


def images(value: int, n: int = 1) -> np.ndarray:
    return np.full((n, 4, 4), value, dtype=np.uint8)


def run_concurrently(batcher, jobs):
    """Submit each (predictor, value, n, name) at the same moment; return results (or exceptions) per job."""
    out: list = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def call(i, predictor, value, n, name):
        start.wait()
        try:
            out[i] = batcher.predict(predictor, images(value, n), [f"{name}-{k}" for k in range(n)])
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            out[i] = exc

    threads = [threading.Thread(target=call, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "a request was still waiting for its results after 10 s"
    return out


@pytest.mark.slow  # sharing needs the requests to arrive while a batch sleeps in the model
def test_concurrent_requests_share_model_calls_and_get_their_own_results() -> None:
    model = SlowPredictor()
    batcher = PredictionBatcher(max_images=64)
    try:
        jobs = [(model, v, 1 + v % 3, f"r{v}") for v in range(12)]
        out = run_concurrently(batcher, jobs)
        for (_, v, n, name), res in zip(jobs, out):
            assert res == [(f"{name}-{k}", float(v)) for k in range(n)]
        assert sum(model.batches) == sum(n for _, _, n, _ in jobs)
        assert len(model.batches) < len(jobs), f"no request was batched with another: {model.batches}"
    finally:
        batcher.close()


@pytest.mark.slow  # asserts a wall-clock bound
def test_a_lone_request_is_predicted_at_once() -> None:
    model = SlowPredictor(pause=0.0)
    batcher = PredictionBatcher()
    try:
        t = time.perf_counter()
        assert batcher.predict(model, images(7, 2), ["a", "b"]) == [("a", 7.0), ("b", 7.0)]
        assert time.perf_counter() - t < 1.0 and model.batches == [2]
    finally:
        batcher.close()


def test_batches_respect_the_image_limit_and_never_split_a_request() -> None:
    model = SlowPredictor()
    batcher = PredictionBatcher(max_images=4)
    try:
        jobs = [(model, v, 3, f"r{v}") for v in range(6)] + [(model, 99, 9, "big")]
        out = run_concurrently(batcher, jobs)
        assert all(not isinstance(r, Exception) for r in out)
        assert out[-1] == [(f"big-{k}", 99.0) for k in range(9)]
        assert all(b <= 4 or b == 9 for b in model.batches), model.batches
    finally:
        batcher.close()


def test_requests_for_different_predictors_are_never_mixed() -> None:
    a, b = SlowPredictor(), SlowPredictor()
    batcher = PredictionBatcher()
    try:
        out = run_concurrently(batcher, [(a, 1, 1, "a1"), (b, 2, 1, "b1"), (a, 3, 1, "a2"), (b, 4, 1, "b2")])
        assert out == [[("a1-0", 1.0)], [("b1-0", 2.0)], [("a2-0", 3.0)], [("b2-0", 4.0)]]
        assert sum(a.batches) == 2 and sum(b.batches) == 2
    finally:
        batcher.close()


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on() -> None:
    model = SlowPredictor(pause=0.0, fail_on="bad-0")
    batcher = PredictionBatcher()
    try:
        with pytest.raises(RuntimeError, match="model failed on bad-0"):
            batcher.predict(model, images(1), ["bad-0"])
        assert batcher.predict(model, images(5), ["good"]) == [("good", 5.0)]
    finally:
        batcher.close()


def test_close_answers_queued_requests_then_refuses_new_ones(wait_until) -> None:
    gate = threading.Event()

    class Gated(SlowPredictor):
        def predict_arrays(self, images, names=None):
            gate.wait(5)  # hold the first batch in the model until the others are queued
            return super().predict_arrays(images, names)

    model = Gated(pause=0.0)
    batcher = PredictionBatcher(max_images=1)
    out = []
    threads = [threading.Thread(target=lambda v=v: out.append(batcher.predict(model, images(v), [str(v)])))
               for v in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: batcher._queue.qsize() >= 2, "two requests queued behind the one in the model")
    closer = threading.Thread(target=batcher.close)
    closer.start()
    wait_until(lambda: batcher._closed, "the batcher to start closing")
    with pytest.raises(RuntimeError, match="closed"):
        batcher.predict(model, images(1), ["late"])
    gate.set()
    for t in [*threads, closer]:
        t.join(5)
    assert not any(t.is_alive() for t in [*threads, closer]), "requests or close() still running after 5 s"
    assert sorted(out) == [[("0", 0.0)], [("1", 1.0)], [("2", 2.0)]]


def test_names_must_match_images() -> None:
    batcher = PredictionBatcher()
    try:
        with pytest.raises(ValueError, match="2 names for 1 images"):
            batcher.predict(SlowPredictor(), images(1), ["a", "b"])
    finally:
        batcher.close()


def test_wait_until_fails_clearly_at_its_deadline(wait_until) -> None:
    calls = []
    wait_until(lambda: calls.append(1) or len(calls) >= 3, "the third call")  # true on the third poll
    assert len(calls) == 3
    with pytest.raises(pytest.fail.Exception, match="waited 0.05 s for the batcher to close; it never happened"):
        wait_until(lambda: False, "the batcher to close", timeout_s=0.05)
