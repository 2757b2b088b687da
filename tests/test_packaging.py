"""The package as users install it: `python -m build` makes an sdist and a wheel; the wheel (built from the sdist,
not the source tree) installs into a fresh venv with `[onnx,serve]` only, and predicts and serves there without
torch. And the dev environment's requirements are consistent (`pip check`)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

import posetune

ROOT = Path(__file__).resolve().parents[1]
IGNORED = (".git", ".venv", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "build", "dist", "runs",
           "demo", ".posetune-cache")


def test_dev_environment_requirements_are_consistent() -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _source_copy(dest: Path) -> Path:
    """The files a clone would have (tracked + new, not ignored), so the build never writes into this tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, timeout=60) if shutil.which("git") and (ROOT / ".git").exists() else None
    if listed is None or listed.returncode != 0:
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*IGNORED))
        return dest
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _run(cmd, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - a local test server
        return response.status, response.read().decode()


@pytest.mark.slow
def test_wheel_installs_with_onnx_and_serve_only_and_deploys_without_torch(onnx_run: Path, shapes_kaggle: Path,
                                                                           tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("build") is None:
        pytest.fail("the build package is missing: pip install -e '.[dev]' installs it")
    source = _source_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    # sdist first, then the wheel from the unpacked sdist: a file missing from the sdist fails here too.
    _run([sys.executable, "-m", "build", "--outdir", dist, source], timeout=600)
    wheels, sdists = sorted(dist.glob("posetune-*.whl")), sorted(dist.glob("posetune-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "posetune/serve/static/index.html" in names and "posetune/hub/__init__.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], timeout=300)  # no system site packages
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run([bin_dir / "python", "-m", "pip", "install", "-q", f"{wheels[0]}[onnx,serve]"], timeout=900, env=env)

    installed = json.loads(_run([bin_dir / "python", "-m", "pip", "list", "--format", "json"], 120, env=env).stdout)
    packages = {p["name"].lower() for p in installed}
    assert {"posetune", "onnxruntime", "fastapi", "uvicorn"} <= packages
    assert not packages & {"torch", "torchvision", "timm"}, packages
    where = _run([bin_dir / "python", "-c", "import posetune; print(posetune.__file__)"], 60, env=env, cwd=tmp_path)
    assert where.stdout.strip().startswith(str(venv))  # the installed wheel, not this source tree

    assert "push" in _run([bin_dir / "posetune", "--help"], 60, env=env).stdout
    image = sorted((shapes_kaggle / "TEST" / "square").glob("*.jpg"))[0]
    rows = json.loads(_run([bin_dir / "posetune", "predict", onnx_run, image, "--engine", "onnx", "--json"], 120,
                           env=env).stdout)
    expected = posetune.load(onnx_run).predict([str(image)])[0].label
    assert rows[0]["prediction"] == expected and rows[0]["error"] is None
    # What needs the train extra says so in one line.
    proc = subprocess.run([bin_dir / "posetune", "push", onnx_run, "me/yoga", "--dry-run"], capture_output=True,
                          text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "pip install 'posetune[train]'" in proc.stderr and "Traceback" not in proc.stderr

    port = _free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        server = subprocess.Popen([bin_dir / "posetune", "serve", onnx_run, "--engine", "onnx", "--port", str(port)],
                                  stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        deadline, page = time.monotonic() + 60, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                page = _get(f"http://127.0.0.1:{port}/")
                break
            except OSError:
                time.sleep(0.25)
        assert page is not None, f"the server did not answer (exit {server.poll()}): {log.read_text()[-2000:]}"
        status, html = page
        assert status == 200 and html.lstrip().lower().startswith("<!doctype html") and "/predict" in html
        status, info = _get(f"http://127.0.0.1:{port}/info")
        assert status == 200 and json.loads(info)["classes"] == ["circle", "square", "triangle"]
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=15)
