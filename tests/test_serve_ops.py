"""What a deployment relies on besides /predict: the API docs with no network, Prometheus metrics, JSON access
logs, and every serve option from an environment variable. Loopback only; every wait is bounded."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import typer
from fastapi.testclient import TestClient
from helpers import stop
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from posetune import cli
from posetune.serve.app import create_app

URL = re.compile(r"\b(?:https?:)?//[\w.-]+", re.IGNORECASE)


def jpeg_bytes(size=(120, 90), seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
        buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(onnx_run: Path) -> TestClient:
    return TestClient(create_app(onnx_run, engine="onnx"))


# --------------------------------------------------------------------------- /docs and /redoc, offline


class Assets(HTMLParser):
    """The URLs a page loads: script src, link href, img src."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href"):
            if attrs.get(name) and tag in ("script", "link", "img"):
                self.urls.append(attrs[name])


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_nothing_from_elsewhere(client: TestClient, page: str) -> None:
    """The HTML names no other origin, every asset it loads is served here (from the fastapi-offline package),
    and the page's Content-Security-Policy would refuse any other origin anyway."""
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert URL.findall(r.text) == [], URL.findall(r.text)
    parser = Assets()
    parser.feed(r.text)
    assert len(parser.urls) >= 2, parser.urls
    for url in parser.urls:
        assert url.startswith("/docs-assets/"), url
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url
    policy = r.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "http" not in policy
    assert "'self'" in re.search(r"script-src ([^;]+)", policy).group(1)
    scripts = [u for u in parser.urls if u.endswith(".js")]
    body = client.get(scripts[0]).text
    assert ("SwaggerUIBundle" if page == "/docs" else "Redoc") in body
    if page == "/docs":
        assert '"validatorUrl": null' in r.text  # Swagger UI would otherwise send the spec to validator.swagger.io
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/health", "/info", "/metrics"} <= set(paths)


# --------------------------------------------------------------------------- /metrics


def scrape(client: TestClient) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_metrics_count_requests_by_route_and_status(onnx_run: Path) -> None:
    client = TestClient(create_app(onnx_run, engine="onnx", max_batch=4))
    for i in range(3):
        assert client.post("/predict", content=jpeg_bytes(seed=i)).status_code == 200
    assert client.post("/predict", content=b"not an image").status_code == 415
    assert client.get("/health").status_code == 200
    assert client.get("/no/such/page").status_code == 404
    assert client.get("/health", headers={"host": "evil.example"}).status_code == 400
    m = scrape(client)
    count = lambda route, status, method="GET": m.get(  # noqa: E731
        ("posetune_requests_total", (("method", method), ("route", route), ("status", str(status)))), 0)
    assert count("/predict", 200, "POST") == 3 and count("/predict", 415, "POST") == 1
    assert count("/health", 200) == 1 and count("/health", 400) == 1 and count("unmatched", 404) == 1
    assert m[("posetune_request_duration_seconds_count", (("route", "/predict"),))] == 4
    assert m[("posetune_batch_size_count", ())] == 3 and m[("posetune_batch_size_sum", ())] == 3
    assert m[("posetune_batch_size_bucket", (("le", "4.0"),))] == 3  # buckets up to --max-batch
    assert m[("posetune_forward_seconds_count", ())] == 3
    assert m[("posetune_queue_depth", ())] == 0 and m[("posetune_requests_in_progress", ())] == 0
    assert m[("posetune_model_info", (("backbone", "test_efficientnet"), ("engine", "onnx"),
                                      ("version", posetune_version())))] == 1
    assert count("/metrics", 200) == 0  # a scrape is counted once it is answered
    assert scrape(client)[("posetune_requests_total", (("method", "GET"), ("route", "/metrics"), ("status", "200")))] == 1


def posetune_version() -> str:
    from posetune.version import __version__

    return __version__


# --------------------------------------------------------------------------- JSON access logs


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_json_access_log_is_one_object_per_request(onnx_run: Path) -> None:
    handler = Lines()
    logger = logging.getLogger("posetune.access")
    logger.addHandler(handler)
    try:
        client = TestClient(create_app(onnx_run, engine="onnx", log_format="json"))
        client.post("/predict", content=jpeg_bytes())
        client.post("/predict", content=b"")
        client.get("/info")
    finally:
        logger.removeHandler(handler)
    records = [json.loads(line) for line in handler.lines]
    assert [(r["method"], r["path"], r["status"]) for r in records] == [("POST", "/predict", 200),
                                                                        ("POST", "/predict", 400), ("GET", "/info", 200)]
    assert [r["batch_size"] for r in records] == [1, None, None]
    for r in records:
        assert set(r) == {"time", "method", "path", "status", "latency_ms", "batch_size", "client"}
        assert r["time"].endswith("Z") and r["latency_ms"] > 0 and r["client"].startswith("testclient")
    handler.lines.clear()
    TestClient(create_app(onnx_run, engine="onnx")).get("/info")  # the default: uvicorn's text access log
    assert handler.lines == []


# --------------------------------------------------------------------------- environment variables


def serve_params() -> dict:
    return {p.name: p for p in typer.main.get_command(cli.app).commands["serve"].params if p.name != "help"}


def test_every_serve_option_reads_an_environment_variable() -> None:
    for name, param in serve_params().items():
        want = "POSETUNE_" + name.upper()
        assert param.envvar == want, f"`posetune serve` {name}: give it envvar={want!r} (typer.Option(..., envvar=...))"


@pytest.fixture
def fake_uvicorn(monkeypatch) -> list[dict]:
    """uvicorn.run replaced by a recorder: the command runs in full (options, model, app) and binds nothing."""
    import uvicorn

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append({"app": app, **kwargs}))
    return calls


def run_serve(monkeypatch, args: list[str]) -> int:
    monkeypatch.setattr(sys, "argv", ["posetune", "serve", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code


def test_environment_variables_set_options_and_flags_override_them(onnx_run: Path, fake_uvicorn, monkeypatch,
                                                                  capsys) -> None:
    for name, value in {"RUN": str(onnx_run), "ENGINE": "onnx", "PORT": "8123", "MAX_BYTES": "2MB", "TOP_K": "2",
                        "MAX_BATCH": "4", "BATCH_WAIT_MS": "1.5", "READ_TIMEOUT": "3", "ALLOWED_HOSTS": "pose.example",
                        "LOG_FORMAT": "text"}.items():
        monkeypatch.setenv(f"POSETUNE_{name}", value)
    assert run_serve(monkeypatch, []) in (0, None)
    call = fake_uvicorn[-1]
    info = call["app"].state.info
    assert call["port"] == 8123 and call["host"] == "127.0.0.1"
    assert (info["engine"], info["max_bytes"], info["top_k"], info["max_batch"], info["batch_wait_ms"],
            info["read_timeout"]) == ("onnx", 2_000_000, 2, 4, 1.5, 3.0)
    assert "allowed hosts: pose.example" in capsys.readouterr().out

    assert run_serve(monkeypatch, ["--port", "8124", "--max-batch", "1"]) in (0, None)  # a flag wins
    assert fake_uvicorn[-1]["port"] == 8124 and fake_uvicorn[-1]["app"].state.info["max_batch"] == 1

    monkeypatch.setenv("POSETUNE_PORT", "70000")  # checked like the flag
    assert run_serve(monkeypatch, []) == 2 and "--port must be an integer from 1 to 65535" in capsys.readouterr().err
    monkeypatch.setenv("POSETUNE_PORT", "eighty")
    assert run_serve(monkeypatch, []) == 2 and "POSETUNE_PORT" in capsys.readouterr().err
    monkeypatch.setenv("POSETUNE_PORT", "8000")
    monkeypatch.setenv("POSETUNE_LOG_FORMAT", "xml")
    assert run_serve(monkeypatch, []) == 2 and "--log-format must be one of text, json" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "image/jpeg"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_serve_listens_on_posetune_port_and_logs_json_lines(onnx_run: Path, tmp_path: Path) -> None:
    """`POSETUNE_PORT=P POSETUNE_LOG_FORMAT=json posetune serve RUN`: it listens on P, stdout carries one JSON
    object per request and nothing else, stderr uvicorn's and posetune's messages as JSON too."""
    port = free_port()
    env = {**os.environ, "POSETUNE_PORT": str(port), "POSETUNE_LOG_FORMAT": "json", "POSETUNE_ENGINE": "onnx",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen([sys.executable, "-m", "posetune", "serve", str(onnx_run)], stdout=fo, stderr=fe,
                                env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if get(f"{base}/health")[0] == 200:
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
                time.sleep(0.1)
        status, body = get(f"{base}/predict", jpeg_bytes())
        assert status == 200 and json.loads(body)["batch_size"] == 1
        assert get(f"{base}/predict", b"junk")[0] == 415
        assert "posetune_requests_total" in get(f"{base}/metrics")[1].decode()
    finally:
        stop(proc)
    lines = [json.loads(line) for line in out.read_text().splitlines()]  # every line parses
    assert [(r["method"], r["path"], r["status"]) for r in lines][-3:] == [
        ("POST", "/predict", 200), ("POST", "/predict", 415), ("GET", "/metrics", 200)]
    assert lines[-3]["batch_size"] == 1 and lines[-3]["client"].startswith("127.0.0.1:")
    messages = [json.loads(line) for line in err.read_text().splitlines()]
    assert any(m["logger"] == "uvicorn.error" and f":{port}" in m["message"] for m in messages)
    assert any(m["logger"] == "posetune.serve" and m["message"].startswith("engine: onnx") for m in messages)
