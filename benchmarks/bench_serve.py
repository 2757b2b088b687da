"""Serving on CPU: ONNX Runtime vs torch, and a real `posetune serve` under concurrent clients, request batching
off and on.

1. Engines in-process, model only (input already preprocessed): latency at batch 1 (median of 30), throughput at
   batch 32 and at batch 1..32 (what batching can gain in the forward pass alone), torch and ONNX Runtime.
2. `posetune serve RUN --engine E` as a subprocess on loopback, for E in onnx and torch: 200 POSTs of 640x480
   JPEG photos from 8 client threads (keep-alive connections); every answer counted, client-side p50/p95/p99
   latency and requests/s, and the server's own model latency (``serve_loopback``, the serve defaults).
3. Request batching (``serve_batching``): onnx (RUN/model.onnx, batch 1: export's default), onnx_dynamic (an
   export with --dynamic-batch) and torch, each with --max-batch 1 (off) and the defaults (on), at 1, 8 and 32
   clients (60, 200, 320 requests), the two servers side by side and measured in turn, twice, after a warm-up at
   each level; also the server's CPU time per request. The summary compares images/s at 32 clients and p95 at 8.

Run: PYTHONPATH=src python benchmarks/bench_serve.py [--run RUN] [--levels 1:60,8:200,32:320] [--note TEXT]
Without --run it makes an efficientnet_lite0 run at 224 px (offline weights, linear head on a few
synthetic images: the timing does not depend on how well it was trained). Writes benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2)


def make_run(root: Path) -> Path:
    import posetune

    posetune.synth(root / "data", per_class=4, test_per_class=2, size=256)
    posetune.train(root / "data", backbone="efficientnet_lite0", strategy="linear", epochs=2, out=str(root / "run"),
                   val_fraction=0.25)
    return root / "run"


def bench_engines(run: Path, onnx_file: Path, reps: int = 30, big_batch: int = 32,
                  batches: tuple[int, ...] = ()) -> dict:
    """Model-only latency at batch 1 and throughput at ``big_batch``; ``batches``: images/s at each of those
    batch sizes too (what request batching can gain from the forward pass alone)."""
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

    def rate(fn, batch: np.ndarray, rounds: int) -> float:
        fn(batch)  # warm this shape
        t0 = time.perf_counter()
        for _ in range(rounds):
            fn(batch)
        return round(rounds * len(batch) / (time.perf_counter() - t0), 1)

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
        results[name] = {"batch1_ms_p50": percentile(times, 50), "batch1_ms_p95": percentile(times, 95),
                         f"batch{big_batch}_images_per_s": rate(fn, x, 4)}
        if batches:
            results[name]["images_per_s_by_batch"] = {str(b): rate(fn, x[:b], max(4, 64 // b)) for b in batches}
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


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def serving(run: Path, engine: str, options: list[str]) -> Iterator[tuple[int, float, int]]:
    """`posetune serve RUN --engine E OPTIONS` on a free loopback port until /health answers: (port, start-up s, pid)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "posetune", "serve", str(run), "--engine", engine, "--port", str(port),
                             *options], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
                if time.perf_counter() - t_start > 120:
                    raise RuntimeError("posetune serve did not answer /health within 120 s") from None
                time.sleep(0.1)
        yield port, time.perf_counter() - t_start, proc.pid
    finally:
        proc.terminate()
        proc.wait(15)


def drive(port: int, n_requests: int, clients: int, images: list[bytes], pid: int | None = None) -> dict:
    """``n_requests`` POSTs from ``clients`` threads, each on its own keep-alive connection: every answer counted;
    with the server's ``pid``, also its CPU time per request (steadier than the rate on a shared machine)."""
    cpu0 = cpu_seconds(pid) if pid else None
    latencies: list[float] = []
    server_ms: list[float] = []
    batch_sizes: list[int] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    counter = iter(range(n_requests))

    def client() -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                c.close()
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
                    answer = json.loads(body)
                    server_ms.append(answer["latency_ms"])
                    batch_sizes.append(answer.get("batch_size", 1))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu1 = cpu_seconds(pid) if pid else None
    return {"requests": n_requests, "clients": clients, "answered_200": statuses.get(200, 0),
            "server_cpu_ms_per_request": round((cpu1 - cpu0) * 1000 / n_requests, 2) if cpu0 is not None else None,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "client_ms_p50": percentile(latencies, 50), "client_ms_p95": percentile(latencies, 95),
            "client_ms_p99": percentile(latencies, 99), "requests_per_s": round(n_requests / wall, 1),
            "server_model_ms_p50": percentile(server_ms, 50) if server_ms else None,
            "mean_batch_size": round(float(np.mean(batch_sizes)), 2) if batch_sizes else None,
            "max_batch_size_seen": max(batch_sizes, default=None), "wall_s": round(wall, 2)}


def load_test(run: Path, engine: str, n_requests: int, clients: int, images: list[bytes],
              options: list[str] = ()) -> dict:
    """One server, one load (the summary's 8-client figure, kept from before batching)."""
    with serving(run, engine, list(options)) as (port, startup_s, pid):
        drive(port, max(6, 2 * clients), clients, images)  # warm-up: lazy init, and each batch shape once
        return {"engine": engine, **drive(port, n_requests, clients, images, pid), "server_startup_s": round(startup_s, 2)}


def batching_runs(variants: dict[str, tuple[Path, str]], levels: dict[int, int], images: list[bytes],
                  max_queue: int, rounds: int = 2) -> list[dict]:
    """Each variant (engine, export) with batching off (--max-batch 1) and on (the defaults), at each client level.
    Both servers run side by side (an idle one costs nothing) and are measured in turn, off then on, ``rounds``
    times, after a warm-up of each at that level: drift of a shared machine hits both alike. The best round of
    each counts; every round is kept."""
    from posetune.serve.limits import DEFAULT_BATCH_WAIT_MS, DEFAULT_MAX_BATCH

    settings = {"off": 1, "on": DEFAULT_MAX_BATCH}
    runs = []
    for name, (run, engine) in variants.items():
        with contextlib.ExitStack() as stack:
            servers = {batching: stack.enter_context(serving(run, engine, [
                "--max-batch", str(max_batch), "--batch-wait-ms", str(DEFAULT_BATCH_WAIT_MS), "--max-queue", str(max_queue)]))
                for batching, max_batch in settings.items()}
            for clients, n_requests in levels.items():
                measured: dict[str, list[dict]] = {b: [] for b in settings}
                for port, _, _ in servers.values():
                    drive(port, max(6, 2 * clients), clients, images)
                for _ in range(rounds):
                    for batching, (port, _, pid) in servers.items():
                        measured[batching].append(drive(port, n_requests, clients, images, pid))
                for batching, results in measured.items():
                    best = max(results, key=lambda r: r["requests_per_s"])
                    runs.append({"variant": name, "engine": engine, "batching": batching,
                                 "max_batch": settings[batching], "batch_wait_ms": DEFAULT_BATCH_WAIT_MS,
                                 "max_queue": max_queue, **best,
                                 "rounds_requests_per_s": [r["requests_per_s"] for r in results],
                                 "rounds_client_ms_p95": [r["client_ms_p95"] for r in results],
                                 "server_startup_s": round(servers[batching][1], 2)})
                    print(f"{name:13s} batching {batching:3s} {clients:2d} clients: {best['requests_per_s']:6.1f} img/s "
                          f"(rounds {[r['requests_per_s'] for r in results]}) p50 {best['client_ms_p50']:7.1f} ms "
                          f"p95 {best['client_ms_p95']:7.1f} ms, {best['server_cpu_ms_per_request']} CPU ms/request, "
                          f"mean batch {best['mean_batch_size']}", file=sys.stderr, flush=True)
    return runs


def summarize(runs: list[dict]) -> dict:
    """Per variant: images/s with batching on / off at the most clients, and p95 at 8 clients both ways."""
    out = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        by = {(r["batching"], r["clients"]): r for r in runs if r["variant"] == name}
        most = max(c for _, c in by)
        speedup = round(by["on", most]["requests_per_s"] / by["off", most]["requests_per_s"], 2)
        p95 = {b: by[b, 8]["client_ms_p95"] for b in ("off", "on")} if ("on", 8) in by else {}
        cpu = {b: by[b, most]["server_cpu_ms_per_request"] for b in ("off", "on")}
        out[name] = {f"images_per_s_{most}_clients": {b: by[b, most]["requests_per_s"] for b in ("off", "on")},
                     f"speedup_{most}_clients": speedup, "p95_ms_8_clients": p95,
                     f"server_cpu_ms_per_request_{most}_clients": cpu,
                     f"mean_batch_size_{most}_clients": by["on", most]["mean_batch_size"],
                     "goal_2x_met": speedup >= 2.0, "p95_8_clients_no_worse": bool(p95) and p95["on"] <= p95["off"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="Run folder to serve (default: make an efficientnet_lite0 run at 224 px).")
    ap.add_argument("--requests", type=int, default=200, help="Requests of the 8-client summary load.")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--levels", default="1:60,8:200,32:320",
                    help="Batching loads, CLIENTS:REQUESTS comma-separated (each bounded).")
    ap.add_argument("--variants", default="onnx,onnx_dynamic,torch",
                    help="onnx (RUN/model.onnx, batch 1), onnx_dynamic (a --dynamic-batch export), torch.")
    ap.add_argument("--note", default="", help="Recorded with the results (e.g. what else ran on the machine).")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "serve.json"))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the servers started are stopped too
    levels = {int(c): int(n) for c, n in (pair.split(":") for pair in args.levels.split(","))}

    import posetune

    t_all = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = Path(args.run) if args.run else make_run(tmp)
        # A dynamic-batch export in a copy of the run; RUN/model.onnx (batch 1, export's default) made if missing.
        dyn_run = tmp / "run-dynamic"
        shutil.copytree(run, dyn_run, ignore=shutil.ignore_patterns("model.onnx", "model.onnx.json", "checkpoint"))
        dyn = posetune.export(dyn_run, format="onnx", dynamic_batch=True, n_random=2, n_images=4)
        if not (run / "model.onnx").exists():
            posetune.export(run, format="onnx", n_random=2, n_images=4)
        meta = json.loads((run / "model.json").read_text())
        engines = bench_engines(run, dyn_run / "model.onnx", batches=(1, 2, 4, 8, 16, 32))
        images = photos()
        served = [load_test(run, e, args.requests, args.clients, images) for e in ("onnx", "torch")]
        variants = {"onnx": (run, "onnx"), "onnx_dynamic": (dyn_run, "onnx"), "torch": (run, "torch")}
        variants = {k: v for k, v in variants.items() if k in args.variants.split(",")}
        runs = batching_runs(variants, levels, images, max_queue=max(64, max(levels)))
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                    "note": args.note},
        "model": {"backbone": meta["backbone"], "arch": meta["arch"], "input": meta["preprocessing"]["input_size"],
                  "onnx_export_parity": dyn["parity"]},
        "engines_model_only": engines,
        "serve_loopback": served,
        "serve_batching": {"runs": runs, "summary": summarize(runs),
                           "how": "per variant two `posetune serve` side by side, batching off = --max-batch 1 and "
                                  "on = the defaults (--max-batch 16 --batch-wait-ms 5), --max-queue so that no "
                                  "request is refused; client threads in this process on keep-alive connections, "
                                  "loopback; at each level both warmed up (2 x clients requests), then measured in "
                                  "turn (off, on) twice; the better round of each is reported, every round kept"},
        "photo": "640x480 JPEG (synthetic yoga render), raw body POST /predict",
        "bench_seconds": round(time.perf_counter() - t_all, 1),
    }
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
