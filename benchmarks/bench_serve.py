"""Serving on CPU: ONNX Runtime vs torch eager, and a real `posetune serve` under 8 concurrent clients.

1. Engines in-process, model only (input already preprocessed): latency at batch 1 (median of 30)
   and throughput at batch 32, for the same weights in torch eager and in ONNX Runtime.
2. `posetune serve RUN --engine E` as a subprocess on loopback, for E in onnx and torch: 200 POSTs of
   640x480 JPEG photos from 8 client threads (keep-alive connections); every answer counted, client-side
   p50/p95/p99 latency and requests/s, and the server's own model latency.

Run: PYTHONPATH=src python benchmarks/bench_serve.py [--run RUN] [--requests 200] [--clients 8]
Without --run it makes an efficientnet_lite0 run at 224 px (offline weights, linear head on a few
synthetic images: the timing does not depend on how well it was trained). Writes benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import http.client
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

import numpy as np


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2)


def make_run(root: Path) -> Path:
    import posetune

    posetune.synth(root / "data", per_class=4, test_per_class=2, size=256)
    posetune.train(root / "data", backbone="efficientnet_lite0", strategy="linear", epochs=2, out=str(root / "run"),
                   val_fraction=0.25)
    return root / "run"


def bench_engines(run: Path, onnx_file: Path, reps: int = 30, big_batch: int = 32) -> dict:
    import onnxruntime as ort
    import torch

    import posetune
    from posetune.predict.onnx_engine import OnnxClassifier

    torch_clf = posetune.load(run, device="cpu")
    onnx_clf = OnnxClassifier(onnx_file)
    size = onnx_clf.preprocess.size
    x = np.random.default_rng(0).standard_normal((big_batch, 3, size, size)).astype(np.float32)

    def torch_logits(batch: np.ndarray) -> None:
        with torch.inference_mode():
            torch_clf.model(torch.from_numpy(batch))

    results = {}
    for name, fn in (("torch_eager", torch_logits), ("onnxruntime", onnx_clf.logits)):
        one = x[:1]
        for _ in range(5):
            fn(one)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn(one)
            times.append((time.perf_counter() - t0) * 1000)
        fn(x)  # warm the batch-32 shapes
        t0 = time.perf_counter()
        n_big = 4
        for _ in range(n_big):
            fn(x)
        dt = time.perf_counter() - t0
        results[name] = {"batch1_ms_p50": percentile(times, 50), "batch1_ms_p95": percentile(times, 95),
                         f"batch{big_batch}_images_per_s": round(n_big * big_batch / dt, 1)}
    results["torch_threads"] = torch.get_num_threads()
    results["onnxruntime_version"] = ort.__version__
    results["torch_version"] = torch.__version__
    results["input"] = [3, size, size]
    results["speedup_batch1"] = round(results["torch_eager"]["batch1_ms_p50"] / results["onnxruntime"]["batch1_ms_p50"], 2)
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photos(n: int = 8) -> list[bytes]:
    from posetune.data.synth import KAGGLE_POSES, render_pose

    out = []
    for i in range(n):
        img = render_pose(KAGGLE_POSES[i % 5], np.random.default_rng(i), 480).resize((640, 480))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def load_test(run: Path, engine: str, n_requests: int, clients: int, images: list[bytes]) -> dict:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "posetune", "serve", str(run), "--engine", engine, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        t_start = time.perf_counter()
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"posetune serve failed: {proc.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.1)
        startup_s = time.perf_counter() - t_start
        # Warm-up: first requests pay for lazy init in the engines.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for img in images[:3]:
            conn.request("POST", "/predict", body=img, headers={"Content-Type": "image/jpeg"})
            conn.getresponse().read()

        latencies: list[float] = []
        server_ms: list[float] = []
        statuses: dict[int, int] = {}
        lock = threading.Lock()
        counter = iter(range(n_requests))

        def client() -> None:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                c.request("POST", "/predict", body=images[i % len(images)], headers={"Content-Type": "image/jpeg"})
                r = c.getresponse()
                body = r.read()
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    latencies.append(dt)
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                    if r.status == 200:
                        server_ms.append(json.loads(body)["latency_ms"])

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        return {"engine": engine, "requests": n_requests, "clients": clients, "answered_200": statuses.get(200, 0),
                "statuses": {str(k): v for k, v in sorted(statuses.items())},
                "client_ms_p50": percentile(latencies, 50), "client_ms_p95": percentile(latencies, 95),
                "client_ms_p99": percentile(latencies, 99), "requests_per_s": round(n_requests / wall, 1),
                "server_model_ms_p50": percentile(server_ms, 50) if server_ms else None,
                "server_startup_s": round(startup_s, 2), "wall_s": round(wall, 2)}
    finally:
        proc.terminate()
        proc.wait(15)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="Run folder to serve (default: make an efficientnet_lite0 run at 224 px).")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "serve.json"))
    args = ap.parse_args()

    import posetune

    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = Path(args.run) if args.run else make_run(tmp)
        # A dynamic-batch export beside, for batch 32; the server uses RUN/model.onnx (batch 1), made if missing.
        dyn = posetune.export(run, format="onnx", dynamic_batch=True, out=tmp / "dynamic.onnx", n_random=2, n_images=4)
        if not (run / "model.onnx").exists():
            posetune.export(run, format="onnx", n_random=2, n_images=4)
        meta = json.loads((run / "model.json").read_text())
        engines = bench_engines(run, tmp / "dynamic.onnx")
        images = photos()
        served = [load_test(run, e, args.requests, args.clients, images) for e in ("onnx", "torch")]
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "model": {"backbone": meta["backbone"], "arch": meta["arch"], "input": meta["preprocessing"]["input_size"],
                  "onnx_export_parity": dyn["parity"]},
        "engines_model_only": engines,
        "serve_loopback": served,
        "photo": "640x480 JPEG (synthetic yoga render), raw body POST /predict",
        "bench_seconds": round(time.perf_counter() - t_all, 1),
    }
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
