"""ASGI middleware around every route: response headers, and the timing that feeds metrics and the access log."""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from posetune.serve.monitoring import ServeMetrics, access_record


class SecurityHeaders:
    """Adds ``X-Content-Type-Options: nosniff`` to every response (outermost, so the Host check's 400 gets it too),
    and a Content-Security-Policy to the pages listed in ``policies`` (path -> policy) that set none."""

    def __init__(self, app: ASGIApp, policies: Mapping[str, str] | None = None):
        self.app, self.policies = app, dict(policies or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self.policies.get(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if policy:
                    headers.setdefault("Content-Security-Policy", policy)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Observe:
    """Times every request to the end of its answer: counted in ``metrics`` by route and status and, with ``log``,
    written as one JSON access-log line. Sits outside the Host check, so that its 400s count too. ``routes`` (the
    app's, a live list) name the route: its path template, whatever the URL; "unmatched" when none matches."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, routes: Sequence[BaseRoute],
                 log: Callable[[str], None] | None = None):
        self.app, self.metrics, self.routes, self.log = app, metrics, routes, log

    def route(self, scope: Scope) -> str:
        """The path of the route that takes ``scope``, or whose path it is with another method (a 405)."""
        partial = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route.path
            if match is Match.PARTIAL and partial is None:
                partial = route.path
        return partial or "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500  # 500 unless a response starts: an unhandled error
        route = self.route(scope)  # before the app runs: routing rewrites root_path for mounts
        state = scope.setdefault("state", {})  # request.state in the routes: /predict leaves its batch_size there

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            seconds = time.perf_counter() - start
            self.metrics.observe_request(route, scope["method"], status, seconds)
            if self.log:
                self.log(access_record(scope["method"], scope["path"], status, seconds, state.get("batch_size"),
                                       scope.get("client")))
