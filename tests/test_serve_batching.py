"""Request batching: the worker on its own, then concurrent requests through the app in both engines, with a
fixed batch-1 ONNX export and a dynamic one. Every wait is bounded; nothing leaves the process."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import posetune
from posetune.serve.app import create_app
from posetune.serve.batching import Batcher


def jpeg_bytes(size=(120, 90), seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
        buf, "JPEG", quality=90)
    return buf.getvalue()


# --------------------------------------------------------------------------- the worker alone


class Recorder:
    """``run`` for a Batcher: doubles each item, records batch sizes, can hold the first call at a gate."""

    def __init__(self, gate: bool = False):
        self.sizes: list[int] = []
        self.gate, self.entered = threading.Event(), threading.Event()
        if not gate:
            self.gate.set()

    def __call__(self, items: list) -> list:
        self.entered.set()
        assert self.gate.wait(30)
        self.sizes.append(len(items))
        return [x * 2 for x in items]


def wait_until(check, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.005)
    return check()


def test_queued_items_share_a_run_up_to_max_batch() -> None:
    run = Recorder(gate=True)
    batcher = Batcher(run, max_batch=4, wait_s=0.05)
    try:
        first = batcher.ticket().submit(0)
        assert run.entered.wait(10)  # the worker is busy with item 0: the next 9 queue up behind it
        futures = [batcher.ticket().submit(i) for i in range(1, 10)]
        assert batcher.depth == 9
        run.gate.set()
        results = [f.result(10) for f in [first, *futures]]
    finally:
        batcher.close()
    assert [r.value for r in results] == [2 * i for i in range(10)]  # each its own answer, in its own order
    assert run.sizes == [1, 4, 4, 1] and max(run.sizes) <= 4
    assert [r.batch_size for r in results] == [1, 4, 4, 4, 4, 4, 4, 4, 4, 1]
    assert all(r.run_s >= 0 and r.queued_s >= 0 for r in results)


def test_a_forming_batch_waits_for_requests_still_decoding_and_only_for_them() -> None:
    run = Recorder()
    batcher = Batcher(run, max_batch=8, wait_s=2.0)
    try:
        t0 = time.perf_counter()
        assert batcher.ticket().submit(1).result(10).batch_size == 1
        assert time.perf_counter() - t0 < 1.0, "a lone request waited for company that was not coming"

        tickets = [batcher.ticket() for _ in range(3)]  # three requests announced, still decoding
        futures = [tickets[0].submit(10)]
        time.sleep(0.05)
        futures += [t.submit(v) for t, v in zip(tickets[1:], (20, 30))]
        assert [f.result(10).batch_size for f in futures] == [3, 3, 3] and run.sizes[-1] == 3

        late = batcher.ticket()  # announced, then its decoding fails: the batch stops waiting for it
        with batcher.ticket() as ticket:
            future = ticket.submit(5)
        t0 = time.perf_counter()
        threading.Timer(0.1, late.__exit__, (None, None, None)).start()
        assert future.result(10).value == 10 and time.perf_counter() - t0 < 1.5
    finally:
        batcher.close()


def test_max_batch_one_is_one_at_a_time() -> None:
    run = Recorder(gate=True)
    batcher = Batcher(run, max_batch=1, wait_s=0.05)
    try:
        futures = [batcher.ticket().submit(0)]
        assert run.entered.wait(10)
        futures += [batcher.ticket().submit(i) for i in range(1, 5)]
        run.gate.set()
        assert [f.result(10).value for f in futures] == [0, 2, 4, 6, 8]
    finally:
        batcher.close()
    assert run.sizes == [1] * 5


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on() -> None:
    calls = []

    def run(items):
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("model exploded")
        return items

    batcher = Batcher(run, max_batch=4, wait_s=0.0)
    try:
        with pytest.raises(RuntimeError, match="exploded"):
            batcher.ticket().submit("a").result(10)
        assert batcher.ticket().submit("b").result(10).value == "b"
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher.ticket().submit("c").result(10)


def test_cancelled_requests_are_skipped() -> None:
    run = Recorder(gate=True)
    batcher = Batcher(run, max_batch=8, wait_s=0.0)
    try:
        first = batcher.ticket().submit(1)
        assert run.entered.wait(10)
        gone, kept = batcher.ticket().submit(2), batcher.ticket().submit(3)
        assert gone.cancel()  # the client went away while it was queued
        run.gate.set()
        assert first.result(10).value == 2 and kept.result(10).value == 6 and kept.result(10).batch_size == 1
    finally:
        batcher.close()
    assert run.sizes == [1, 1]


# --------------------------------------------------------------------------- through the app, both engines


class Counting:
    """A classifier that counts its forward passes and can hold the first one at a gate."""

    def __init__(self, inner):
        self.inner, self.sizes = inner, []
        self.gate, self.entered = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def probabilities(self, decoded):
        self.entered.set()
        assert self.gate.wait(30)
        self.sizes.append(len(decoded))
        return self.inner.probabilities(decoded)


def expected_probabilities(clf, images: list[bytes]) -> list[float]:
    """Each image alone, decoded the way the server decodes it."""
    return [clf.predict([Image.open(io.BytesIO(b)).convert("RGB")], top_k=1, batch_size=1)[0].probability
            for b in images]


def concurrent_requests(onnx_run: Path, counting: Counting, images: list[bytes], **options) -> list[dict]:
    app = create_app(onnx_run, engine=counting.engine, classifier=counting, **options)
    service = app.state.service
    with TestClient(app) as client, ThreadPoolExecutor(len(images)) as pool:
        first = pool.submit(client.post, "/predict", content=images[0])
        assert counting.entered.wait(30)  # the model is busy with the first: the rest decode and queue
        rest = [pool.submit(client.post, "/predict", content=b) for b in images[1:]]
        assert wait_until(lambda: service.batcher.depth == len(images) - 1, 30), service.batcher.depth
        counting.gate.set()
        responses = [f.result(60) for f in [first, *rest]]
    assert [r.status_code for r in responses] == [200] * len(images), [r.text for r in responses]
    return [r.json() for r in responses]


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_concurrent_requests_share_forward_passes(onnx_run: Path, engine: str) -> None:
    clf = posetune.load(onnx_run, engine=engine)
    images = [jpeg_bytes(seed=i) for i in range(9)]
    counting = Counting(clf)
    answers = concurrent_requests(onnx_run, counting, images, max_batch=4, batch_wait_ms=50)
    assert counting.sizes == [1, 4, 4] and len(counting.sizes) < len(images)
    assert [a["batch_size"] for a in answers] == [1] + [4] * 8
    # Each answer is its own image's: the same probability as that image predicted alone.
    assert [a["probability"] for a in answers] == pytest.approx(expected_probabilities(clf, images), abs=1e-4)
    assert all(a["engine"] == engine and a["queue_ms"] >= 0 for a in answers)


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_batching_off_runs_one_request_per_forward_pass(onnx_run: Path, engine: str) -> None:
    clf = posetune.load(onnx_run, engine=engine)
    images = [jpeg_bytes(seed=10 + i) for i in range(5)]
    counting = Counting(clf)
    answers = concurrent_requests(onnx_run, counting, images, max_batch=1)
    assert counting.sizes == [1] * 5 and {a["batch_size"] for a in answers} == {1}
    assert [a["probability"] for a in answers] == pytest.approx(expected_probabilities(clf, images), abs=1e-4)


class SessionCalls:
    """Counts ONNX Runtime session runs and the batch each one got."""

    def __init__(self, session):
        self.session, self.batches = session, []

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, outputs, feeds):
        self.batches.append(len(next(iter(feeds.values()))))
        return self.session.run(outputs, feeds)


@pytest.fixture(scope="module")
def dynamic_onnx(onnx_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dynamic") / "model-dynamic.onnx"
    posetune.export(onnx_run, format="onnx", dynamic_batch=True, out=out, n_random=2, n_images=2)
    return out


@pytest.mark.parametrize("export", ["fixed batch 1", "dynamic batch"])
def test_onnx_exports_of_either_batch_serve_batches(onnx_run: Path, dynamic_onnx: Path, export: str) -> None:
    """A batch-1 export still serves batched requests (run through it one by one, padded to its batch); a
    dynamic-batch export runs each batch in one session run."""
    model = onnx_run if export == "fixed batch 1" else dynamic_onnx
    clf = posetune.load(model, engine="onnx")
    assert clf.fixed_batch == (1 if export == "fixed batch 1" else None)
    calls = clf.session = SessionCalls(clf.session)
    images = [jpeg_bytes(seed=20 + i) for i in range(5)]
    counting = Counting(clf)
    app_info = create_app(model, engine="onnx", classifier=counting).state.info
    assert app_info["model_batch"] == (1 if export == "fixed batch 1" else "any")
    expected = expected_probabilities(clf, images)
    calls.batches.clear()
    answers = concurrent_requests(model, counting, images, max_batch=8, batch_wait_ms=50)
    assert counting.sizes == [1, 4]
    assert calls.batches == ([1] * 5 if export == "fixed batch 1" else [1, 4])
    assert [a["probability"] for a in answers] == pytest.approx(expected, abs=1e-5)


def test_a_lone_request_does_not_wait_for_a_batch(onnx_run: Path) -> None:
    client = TestClient(create_app(onnx_run, engine="onnx", batch_wait_ms=1000))
    client.post("/predict", content=jpeg_bytes())  # warm
    t0 = time.perf_counter()
    r = client.post("/predict", content=jpeg_bytes(seed=3))
    assert r.status_code == 200 and r.json()["batch_size"] == 1
    assert time.perf_counter() - t0 < 0.8  # far below the 1 s batch wait


def test_batching_settings_are_checked_and_shown(onnx_run: Path) -> None:
    from posetune.errors import UsageError

    for bad in ({"max_batch": 0}, {"batch_wait_ms": -1}):
        with pytest.raises(UsageError, match="--max-batch"):
            create_app(onnx_run, engine="onnx", **bad)
    client = TestClient(create_app(onnx_run, engine="onnx", max_batch=8, batch_wait_ms=2))
    info = client.get("/info").json()
    assert (info["max_batch"], info["batch_wait_ms"], info["model_batch"]) == (8, 2, 1)
    assert client.get("/health").json()["batching"] == {"waiting": 0, "max_batch": 8}
    # Between the worker's runs ONNX Runtime's threads sleep: spinning would take the cores that decode uploads.
    options = client.app.state.classifier.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
