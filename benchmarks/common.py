"""What the benchmark sections share: logging, child processes with their own peak RSS, the worker
dispatch (workers.py in a fresh interpreter), ratios and results/*.json, and the JPEG photo sets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROOT = HERE.parent
POSES = ["downdog", "goddess", "plank", "tree", "warrior2"]


# ---------------------------------------------------------------------------------------------- helpers

def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def env(**extra: str) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    e.update(extra)
    return e


def run_child_rss(cmd: list[str], extra_env: dict | None = None) -> dict:
    """Run cmd to the end: wall and CPU seconds, its own peak RSS (os.wait4), stdout to a file to avoid pipe stalls."""
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env(**(extra_env or {})), cwd=str(ROOT))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {"wall": wall, "rss_mb": round(usage.ru_maxrss / 1024, 1), "cpu": usage.ru_utime + usage.ru_stime,
            "stdout": stdout, "stderr": stderr}


def worker(kind: str, **spec) -> dict:
    """Run one measurement in a fresh interpreter (`workers.py KIND JSON`) and return its JSON."""
    extra = spec.pop("env", None)
    res = run_child_rss([sys.executable, str(HERE / "workers.py"), kind, json.dumps(spec)], extra)
    return {**json.loads(res["stdout"].strip().splitlines()[-1]), "rss_mb": res["rss_mb"], "wall": round(res["wall"], 2)}


def posetune_bin() -> str:
    exe = Path(sys.executable).parent / "posetune"
    return str(exe) if exe.exists() else "posetune"


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def write_result(name: str, obj: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(obj, indent=2) + "\n")


def save_and_print(path: str | Path, obj: dict) -> int:
    """A standalone benchmark's ending: ``obj`` as JSON to ``path`` (its folder made) and to stdout; exit code 0."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=1) + "\n")
    print(json.dumps(obj, indent=1))
    return 0


# ---------------------------------------------------------------------------------------------- data

def make_photos(root: Path, train: int, val: int, test: int, render: int = 256, big: tuple[int, ...] = (1024, 1152, 1280),
                seed: int = 0) -> Path:
    """DATA/{TRAIN,VAL,TEST}/<pose>/*.jpg: synthetic poses rendered small, upscaled to 1024-1280 px (4:3 and
    square), JPEG q90: the size of photos a user has, at a fraction of the rendering cost."""
    import numpy as np
    from PIL import Image

    from posetune.data.synth import render_pose

    done = root / f".complete-{train}-{val}-{test}"
    if done.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    i = 0
    for split, n in (("TRAIN", train), ("VAL", val), ("TEST", test)):
        for pose in POSES:
            (root / split / pose).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                rng = np.random.default_rng([seed, i])
                img = render_pose(pose, rng, render)
                side = big[i % len(big)]
                size = (side, side) if i % 2 else (side * 4 // 3, side)
                img.resize(size, Image.BICUBIC).save(root / split / pose / f"{pose}_{k:04d}.jpg", quality=90)
                i += 1
    done.write_text("ok\n")
    return root


def linked_copies(src: Path, dst: Path, copies: int) -> Path:
    """dst/copy{1..n}/... hard links to src's files: n times the images, no extra disk."""
    done = dst / f".complete-{sum(1 for _ in src.rglob('*.jpg'))}"
    if done.is_file():
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    for k in range(1, copies + 1):
        shutil.copytree(src, dst / f"copy{k}", copy_function=os.link)
    done.write_text("ok\n")
    return dst


def make_small_copies(src: Path, dst: Path) -> Path:
    """The same photos at a typical dataset size (320x240 or 240x240)."""
    from PIL import Image

    files = sorted(src.rglob("*.jpg"))
    done = dst / f".complete-{len(files)}"
    if done.is_file():
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    for f in files:
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(f) as img:
            w, h = img.size
            img.convert("RGB").resize((320 if w > h else 240, 240), Image.BICUBIC).save(target, quality=90)
    done.write_text("ok\n")
    return dst
