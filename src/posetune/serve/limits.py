"""What the server admits: sizes, Host names, requests in progress and bytes still arriving.

Plain values and two event-loop counters; nothing here touches the model or reads a body.
"""

from __future__ import annotations

import ipaddress
from typing import AsyncIterator, Sequence

from fastapi import HTTPException

from posetune.errors import UsageError

DEFAULT_MAX_BYTES = 10_000_000
DEFAULT_MAX_PIXELS = 50_000_000  # a 48 MP phone photo fits; below Pillow's own bomb threshold (~89 MP)
DEFAULT_READ_TIMEOUT = 10.0  # seconds for a whole body: a 10 MB photo at 8 Mbit/s
DEFAULT_MAX_BATCH = 16  # requests sharing one forward pass
DEFAULT_BATCH_WAIT_MS = 5.0  # how long a forming batch waits for requests still decoding
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
TEST_CLIENT_HOST = "testserver"  # the Host header Starlette's (and FastAPI's) TestClient sends


def parse_size(text: str | int) -> int:
    """'10MB' -> 10_000_000, '512KiB' -> 524_288, '2000000' -> 2_000_000."""
    if isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    s = text.strip().upper().replace(" ", "")
    number = s.rstrip("KMGIB")
    unit = s[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or value <= 0:
        raise UsageError(f"--max-bytes must be a size like 10MB, 512KiB or 2000000, not '{text}'")
    return int(value * units[unit])


def parse_hosts(text: str | Sequence[str]) -> list[str]:
    """'pose.example, *.lan' -> ['pose.example', '*.lan']; '*' allows any Host header."""
    hosts = [h.strip().lower() for h in (text.split(",") if isinstance(text, str) else text) if h.strip()]
    for h in hosts:
        if not h or "*" in h[1:] or (h.startswith("*") and h != "*" and not h.startswith("*.")):
            raise UsageError(f"--allowed-hosts takes names like pose.example, 192.168.1.5, [::1] or *.example.lan "
                             f"(or * for any), not '{h}'")
    if not hosts:
        raise UsageError("--allowed-hosts is empty: give host names separated by commas, or * for any")
    return hosts


def default_allowed_hosts(bind: str) -> list[str]:
    """The Host headers `posetune serve --host BIND` accepts unless told: on loopback only the loopback names
    (a page elsewhere cannot reach the server through DNS rebinding), else any (the server is meant to be reached
    by whatever name the network gives it).

    >>> default_allowed_hosts("127.0.0.1"), default_allowed_hosts("0.0.0.0")
    (['localhost', '127.0.0.1', '[::1]'], ['*'])
    """
    try:
        loopback = ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        loopback = bind.lower() == "localhost"
    return list(LOOPBACK_HOSTS) if loopback else ["*"]


class Admission:
    """Counts requests doing model work (event-loop only, so a plain int is safe); beyond the limit: 503."""

    def __init__(self, limit: int):
        self.limit, self.active = limit, 0

    @property
    def full(self) -> bool:
        return self.active >= self.limit

    def __enter__(self) -> Admission:
        if self.full:
            raise HTTPException(503, f"busy: {self.active} requests in progress; retry in a second",
                                headers={"Retry-After": "1"})
        self.active += 1
        return self

    def __exit__(self, *exc) -> None:
        self.active -= 1


class Receiving:
    """Bytes of request bodies still arriving, over all requests (event-loop only). Bounds their memory
    however many uploads arrive at once, while a slow upload costs only the bytes it has sent."""

    def __init__(self, limit: int):
        self.limit, self.held, self.uploads = limit, 0, 0

    def take(self, n: int) -> None:
        if self.held + n > self.limit:
            raise HTTPException(503, f"busy: {self.held:,} bytes of uploads are arriving; retry in a second",
                                headers={"Retry-After": "1"})
        self.held += n

    def room_for(self, n: int) -> bool:
        return self.held + n <= self.limit

    async def read(self, stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
        """``stream``, counted against this budget until it ends or is closed, and stopped past ``limit`` (413)."""
        taken = 0
        self.uploads += 1
        try:
            async for chunk in stream:
                if taken + len(chunk) > limit:
                    raise HTTPException(413, f"upload is over this server's limit of {limit:,} bytes; send a "
                                             "smaller photo (or start the server with a larger --max-bytes)")
                self.take(len(chunk))
                taken += len(chunk)
                yield chunk
        finally:
            self.uploads -= 1
            self.held -= taken
