"""Hostile clients against a real server: uvicorn in a thread on a free 127.0.0.1 port (no other address is
ever contacted). Slow uploads, bad and fuzzed bodies, the Host allow-list, the serve command's options.
Every loop is bounded in count and in time."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
from helpers import stop
from PIL import Image

from posetune.errors import UsageError
from posetune.serve.app import create_app
from posetune.serve.limits import default_allowed_hosts, parse_hosts

uvicorn = pytest.importorskip("uvicorn")

LOOPBACK = "127.0.0.1"
MAX_BYTES = 100_000
READ_TIMEOUT = 3.0


def jpeg_bytes(size=(120, 90), seed=0, quality=90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
        buf, "JPEG", quality=quality)
    return buf.getvalue()


@contextlib.contextmanager
def running(app) -> Iterator[int]:
    """Serve ``app`` on a free loopback port (bound here, so no other process can take it first); yields the port."""
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=5, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start within 30 s")
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture(scope="module")
def port(onnx_run: Path) -> Iterator[int]:
    app = create_app(onnx_run, engine="onnx", max_bytes=MAX_BYTES, max_queue=4, read_timeout=READ_TIMEOUT)
    with running(app) as p:
        yield p


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 30) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def wait_until(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def read_response(sock: socket.socket, seconds: float) -> tuple[int, dict, bytes]:
    """One HTTP response from a raw socket the server closes after it (bounded by ``seconds``)."""
    sock.settimeout(seconds)
    deadline, data = time.monotonic() + seconds, b""
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def test_slow_uploads_leave_the_queue_to_valid_clients(port: int) -> None:
    """The reported attack: 16 uploads that send 100 bytes of a JPEG and stall. They must not take queue
    slots (4 here), valid clients are answered meanwhile, /health stays ok, and each stalled upload gets a
    408 JSON and its connection closed once READ_TIMEOUT has passed."""
    photo = jpeg_bytes()
    head = (f"POST /predict HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(photo)}\r\n\r\n").encode()
    t0 = time.monotonic()
    slow = [socket.create_connection((LOOPBACK, port), timeout=5) for _ in range(16)]
    stalled_headers = [socket.create_connection((LOOPBACK, port), timeout=5) for _ in range(4)]
    try:
        for s in slow:
            s.sendall(head + photo[:100])
        for s in stalled_headers:  # never finish their headers: uvicorn holds them, the app never sees them
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")

        def health() -> dict:
            return json.loads(request(port, "GET", "/health", timeout=5)[2])

        assert wait_until(lambda: health()["uploads"]["receiving"] == 16, READ_TIMEOUT / 2), health()
        h = health()
        assert h["status"] == "ok" and h["queue"] == {"in_progress": 0, "max": 4}, h
        latencies = []
        for i in range(6):
            t = time.monotonic()
            status, _, body = request(port, "POST", "/predict", jpeg_bytes(seed=i), {"Content-Type": "image/jpeg"},
                                      timeout=10)
            latencies.append(time.monotonic() - t)
            assert status == 200, body
        assert max(latencies) < 2.0, latencies
        assert time.monotonic() - t0 < READ_TIMEOUT, "valid clients were answered only after the slow ones gave up"

        for s in slow:
            status, headers, body = read_response(s, READ_TIMEOUT + 10)
            assert status == 408, body
            assert headers.get("connection") == "close" and headers["x-content-type-options"] == "nosniff"
            assert "not received within 3 s" in json.loads(body)["detail"]
        elapsed = time.monotonic() - t0
        assert READ_TIMEOUT <= elapsed < READ_TIMEOUT + 10, elapsed
        assert wait_until(lambda: health()["uploads"] == {"receiving": 0, "bytes": 0, "max_bytes": 4 * MAX_BYTES}, 5)
        assert request(port, "POST", "/predict", photo, {"Content-Type": "image/jpeg"})[0] == 200
    finally:
        for s in slow + stalled_headers:
            s.close()


def test_uploads_arriving_are_bounded_in_bytes(onnx_run: Path) -> None:
    """Bodies still arriving count against max_queue * max_bytes (here 1 x 100 KB): past it, 503 and /health
    says saturated, while an upload that has sent little costs little."""
    app = create_app(onnx_run, engine="onnx", max_bytes=MAX_BYTES, max_queue=1, read_timeout=READ_TIMEOUT)
    photo = jpeg_bytes()
    with running(app) as p:
        filler = socket.create_connection((LOOPBACK, p), timeout=5)
        try:
            filler.sendall((f"POST /predict HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: image/jpeg\r\n"
                            f"Content-Length: {MAX_BYTES}\r\n\r\n").encode() + b"\xff" * 90_000)
            assert wait_until(lambda: json.loads(request(p, "GET", "/health")[2])["uploads"]["bytes"] == 90_000, 2)
            status, headers, body = request(p, "GET", "/health")
            assert status == 503 and json.loads(body)["status"] == "saturated" and headers["retry-after"] == "1"
            status, headers, body = request(p, "POST", "/predict", photo, {"Content-Type": "image/jpeg"})
            assert status == 503 and headers["retry-after"] == "1" and "arriving" in json.loads(body)["detail"]
            assert request(p, "POST", "/predict", jpeg_bytes((16, 16)),
                           {"Content-Type": "image/jpeg"})[0] == 200  # a small one still fits
        finally:
            filler.close()
        assert wait_until(lambda: request(p, "GET", "/health")[0] == 200, READ_TIMEOUT + 5)
        assert request(p, "POST", "/predict", photo, {"Content-Type": "image/jpeg"})[0] == 200


def test_uploads_cut_off_midway_leave_no_trace(port: int, caplog) -> None:
    """Clients that hang up mid-body: no error in the server log, no bytes left counted, service as before."""
    photo = jpeg_bytes()
    head = (f"POST /predict HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(photo)}\r\n\r\n").encode()
    with caplog.at_level("ERROR", logger="uvicorn.error"):
        for cut in (0, 100, len(photo) // 2, len(photo) - 1):
            with socket.create_connection((LOOPBACK, port), timeout=5) as s:
                s.sendall(head + photo[:cut])
                time.sleep(0.05)
        assert wait_until(lambda: json.loads(request(port, "GET", "/health")[2])["uploads"]["receiving"] == 0, 5)
        assert json.loads(request(port, "GET", "/health")[2])["uploads"]["bytes"] == 0
        assert request(port, "POST", "/predict", photo, {"Content-Type": "image/jpeg"})[0] == 200
    assert not [r for r in caplog.records if r.levelname == "ERROR"], [r.getMessage() for r in caplog.records]


def multipart(fields: list[tuple[str, str | None, bytes]], boundary: str = "posetuneBoundary") -> tuple[bytes, dict]:
    parts = []
    for name, filename, value in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _bad_bodies() -> list[tuple[str, bytes, dict, int]]:
    photo = jpeg_bytes()
    big = jpeg_bytes((400, 400), quality=100)  # > MAX_BYTES
    wrong_field = multipart([("image", "x.jpg", photo)])
    text_field = multipart([("file", None, b"not a file")])
    html_file = multipart([("file", "x.jpg", b"<html><script>alert(1)</script></html>")])
    return [
        ("empty", b"", {"Content-Type": "image/jpeg"}, 400),
        ("not an image", b"hello, I am not a photo", {"Content-Type": "text/plain"}, 415),
        ("json", b'{"file": "pose.jpg"}', {"Content-Type": "application/json"}, 415),
        ("truncated", photo[:1500], {"Content-Type": "image/jpeg"}, 422),
        ("oversize, declared", big, {"Content-Type": "image/jpeg"}, 413),
        ("wrong field", *wrong_field, 422),
        ("field is text", *text_field, 422),
        ("html as the file", *html_file, 415),
        ("multipart without boundary", photo, {"Content-Type": "multipart/form-data"}, 400),
        ("multipart type, raw jpeg body", photo, {"Content-Type": "multipart/form-data; boundary=zz"}, 400),
    ]


@pytest.mark.parametrize("name,body,headers,status", _bad_bodies(), ids=[b[0] for b in _bad_bodies()])
def test_bad_bodies_get_a_4xx_json(port: int, name, body, headers, status) -> None:
    got, response_headers, raw = request(port, "POST", "/predict", body, headers)
    assert got == status, (name, raw)
    assert response_headers["content-type"] == "application/json" and json.loads(raw)["detail"]
    assert response_headers["x-content-type-options"] == "nosniff"


def test_oversize_chunked_upload_is_cut_off_while_reading(port: int) -> None:
    """No Content-Length: the limit is counted as chunks arrive, and the client still reads its 413."""
    chunk = b"\xff" * 65_536
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        conn.request("POST", "/predict", body=iter([chunk] * 64), headers={"Content-Type": "image/jpeg"},
                     encode_chunked=True)  # 4 MB against a 100 KB limit
        r = conn.getresponse()
        assert r.status == 413 and "limit of 100,000" in json.loads(r.read())["detail"]
    finally:
        conn.close()


def test_fuzzed_images_never_get_a_5xx(port: int) -> None:
    """Seeded mutations of a valid JPEG and PNG: every answer is a 200 with a prediction or a 4xx JSON."""
    rng = np.random.default_rng(0)
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(png, "PNG")
    seeds = [jpeg_bytes(seed=1), png.getvalue()]
    t0, statuses = time.monotonic(), []
    for i in range(40):
        data = bytearray(seeds[i % 2])
        kind = i % 4
        if kind == 0:  # flip bytes after the signature
            for pos in rng.integers(8, len(data), 8):
                data[pos] ^= int(rng.integers(1, 256))
        elif kind == 1:  # cut anywhere
            data = data[: int(rng.integers(1, len(data)))]
        elif kind == 2:  # a valid signature followed by noise
            data = data[:16] + bytearray(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
        else:  # random bytes
            data = bytearray(rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes())
        status, headers, raw = request(port, "POST", "/predict", bytes(data), {"Content-Type": "image/jpeg"})
        body = json.loads(raw)
        assert status == 200 and "prediction" in body or 400 <= status < 500 and body["detail"], (i, status, raw)
        statuses.append(status)
        assert time.monotonic() - t0 < 60
    assert any(400 <= s < 500 for s in statuses)


@pytest.mark.parametrize("host,status", [
    ("evil.example", 400), ("127.0.0.1.evil.example", 400), ("localhost.evil.example:80", 400),
    ("localhost", 200), ("127.0.0.1", 200), ("[::1]", 200), ("LOCALHOST", 200),
])
def test_host_allow_list_on_loopback(port: int, host, status) -> None:
    """The default allow-list: a page on another site that rebinds its name to 127.0.0.1 gets 400."""
    value = host if ":" in host.replace("[::1]", "") else f"{host}:{port}"
    got, headers, _ = request(port, "GET", "/health", headers={"Host": value})
    assert got == status
    assert headers["x-content-type-options"] == "nosniff"


def test_allowed_hosts_parsing_and_defaults() -> None:
    assert default_allowed_hosts("127.0.0.1") == ["localhost", "127.0.0.1", "[::1]"]
    assert default_allowed_hosts("::1") == default_allowed_hosts("localhost") == default_allowed_hosts("127.0.0.2")
    assert default_allowed_hosts("0.0.0.0") == ["*"] and default_allowed_hosts("::") == ["*"]
    assert default_allowed_hosts("192.168.1.5") == ["*"]
    assert parse_hosts("Pose.Example, *.lan ,") == ["pose.example", "*.lan"]
    for bad in ("", " , ", "a*b.example", "*example.com"):
        with pytest.raises(UsageError, match="--allowed-hosts"):
            parse_hosts(bad)


def test_serve_command_takes_allowed_hosts_and_read_timeout(onnx_run: Path, tmp_path: Path) -> None:
    """`posetune serve --allowed-hosts pose.example`: says so on start, and only that Host gets in."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        free = s.getsockname()[1]
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "posetune", "serve", str(onnx_run), "--engine", "onnx",
                                 "--port", str(free), "--allowed-hosts", "pose.example", "--read-timeout", "2"],
                                stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        def up() -> bool:
            try:
                return request(free, "GET", "/health", headers={"Host": "pose.example"}, timeout=2)[0] == 200
            except OSError:
                assert proc.poll() is None, log.read_text()[-3000:]
                return False

        assert wait_until(up, 60), log.read_text()[-3000:]
        assert request(free, "GET", "/health", headers={"Host": f"{LOOPBACK}:{free}"})[0] == 400
        info = json.loads(request(free, "GET", "/info", headers={"Host": "pose.example"})[2])
        assert info["read_timeout"] == 2.0
        assert "allowed hosts: pose.example" in log.read_text()
    finally:
        stop(proc)


def test_concurrent_valid_clients_beside_slow_ones(port: int) -> None:
    """8 slow uploads stalled mid-body and 24 valid requests from 4 threads at once: all 24 answered."""
    photo = jpeg_bytes()
    head = (f"POST /predict HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(photo)}\r\n\r\n").encode()
    slow = [socket.create_connection((LOOPBACK, port), timeout=5) for _ in range(8)]
    try:
        for s in slow:
            s.sendall(head + photo[:100])
        t0 = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda i: request(port, "POST", "/predict", jpeg_bytes(seed=i),
                                                    {"Content-Type": "image/jpeg"}, timeout=10)[0], range(24)))
        assert codes == [200] * 24, codes
        assert time.monotonic() - t0 < READ_TIMEOUT + 5
    finally:
        for s in slow:
            s.close()
