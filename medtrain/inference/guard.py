"""What keeps `medtrain serve` answering under hostile or heavy traffic, below the application:
`RequestGuard` (ASGI middleware: API key, malformed framing, body size, requests in flight, the
model's hash on every answer), `GuardedProtocol` (uvicorn's h11 protocol with header, body and idle
timeouts and a connection limit) and `DrainingServer` (SIGTERM: not ready at once, then a graceful
shutdown with a deadline)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from medtrain.inference.access_log import Answer, access_line, access_log

# Server events go to uvicorn's log, in its format, beside its own lines about the shutdown.
server_log = logging.getLogger("uvicorn.error")
MAX_ERROR_BYTES = 4096  # of an error's body read for it
API_KEY_HEADER = "X-API-Key"
MODEL_HEADER = "X-Model-SHA256"
RETRY_AFTER_S = 1
# One signal sent to a worker of `medtrain serve processes=N` both by its supervisor and directly
# (a terminal's Ctrl-C, a service manager signalling the whole group) arrives twice within this
# many seconds: counted once, so that it drains instead of stopping at once.
REPEATED_SIGNAL_S = 0.25
MAX_HEADER_BYTES = 16 * 1024  # a request's headers together; more: 431 (h11 refuses a head
# over this size while it trickles in, but not one that arrives in one piece)


@dataclass
class ServiceState:
    """What the readiness endpoint reports, shared by the middleware, the server and the app."""

    max_in_flight: int
    in_flight: int = 0
    draining: bool = False

    @property
    def saturated(self) -> bool:
        return self.in_flight >= self.max_in_flight

    def readiness(self) -> tuple[bool, str]:
        """(ready, why not): ready when not draining and not saturated (the model is loaded
        before the server listens)."""
        if self.draining:
            return False, "draining: the server is shutting down"
        if self.saturated:
            return False, f"saturated: {self.in_flight} prediction requests in flight"
        return True, "ready"


def json_bytes(content: Any) -> bytes:
    return json.dumps(content, separators=(",", ":")).encode()


def raw_response(
    status: int, reason: str, detail: str, retry: bool = False, model: str = ""
) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection, for refusals made below ASGI;
    `model`: the weights hash for its `X-Model-SHA256` header."""
    body = json_bytes({"detail": detail})
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if model:
        head.append(f"{MODEL_HEADER.lower()}: {model}")
    if retry:
        head.append(f"retry-after: {RETRY_AFTER_S}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class RequestGuard:
    """ASGI middleware that refuses a request before its body is read and stops one whose body
    grows over the limit while it arrives (chunked, or a Content-Length that lies).

    Refused before the body: headers over `MAX_HEADER_BYTES` (431), a missing, wrong or repeated API key on the protected paths (401,
    400), both Content-Length and Transfer-Encoding or a malformed Content-Length (400), a
    declared Content-Length over the limit (413), a prediction while `max_in_flight` others are
    in flight (503 with Retry-After; a prediction is in flight from when its whole body is in:
    `CountedRequest`). A request cancelled unanswered at the shutdown deadline is answered 503
    (Retry-After). Every answer carries the model's weights hash (`X-Model-SHA256`).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        state: ServiceState,
        weights_sha256: str,
        api_key: str | None = None,
        protected: tuple[str, ...] = (),
        limited: tuple[str, ...] = (),
    ):
        self.app = app
        self.max_bytes = max_bytes
        self.state = state
        self.model_header = (MODEL_HEADER.lower().encode(), weights_sha256.encode())
        self.api_key = api_key.encode() if api_key else None
        self.protected = protected
        self.limited = limited
        self.too_large = (
            f"the request is over the upload limit of {max_bytes / 2**20:g} MB (max_upload_mb)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        answer = Answer()
        request = CountedRequest(receive, self, limited=False)

        async def send_with_model(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.model_header]
                answer.status = message["status"]
            elif answer.status >= 400 and len(answer.body) < MAX_ERROR_BYTES:
                answer.body += message.get("body", b"")
            await send(message)

        try:
            await self._guarded(scope, request, send_with_model, answer)
        except Exception as err:  # answered 500 by the application's outermost handler
            answer.failure = type(err).__name__
            raise
        finally:
            if request.in_flight:
                self.state.in_flight -= 1
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(access_line(scope, answer, request.received, began))

    async def _guarded(
        self, scope: Scope, request: CountedRequest, send: Send, answer: Answer
    ) -> None:
        path = scope["path"].rstrip("/") or "/"
        line = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b""))
        refusal = self._refusal(path, scope["headers"], line)
        if refusal is not None:
            status, detail, headers = refusal
            response = Response(json_bytes({"detail": detail}), status, headers, "application/json")
            await response(scope, request.receive, send)
            return
        request.limited = path in self.limited
        try:
            await self.app(scope, request.receive, send)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running at the shutdown deadline (`shutdown_s`),
            # then answers a plain-text 500 and logs a traceback for each. Answered here instead,
            # as any refusal, and not raised on: uvicorn does not wait for the task, and the
            # request is over. One whose answer had begun can only be cut off (uvicorn closes it).
            if answer.status:
                raise
            server_log.warning(
                "%s %s: cancelled at the shutdown deadline (shutdown_s); answered 503",
                scope["method"],
                path,
            )
            detail = "the server is shutting down: retry"
            headers = {"Retry-After": str(RETRY_AFTER_S), "Connection": "close"}
            response = Response(json_bytes({"detail": detail}), 503, headers, "application/json")
            await response(scope, request.receive, send)

    def busy(self) -> str:
        return (
            f"busy: {self.state.in_flight} prediction requests in flight (max_concurrent); "
            f"retry in {RETRY_AFTER_S} s"
        )

    def _refusal(
        self, path: str, raw: list[tuple[bytes, bytes]], head_bytes: int = 0
    ) -> tuple[int, str, dict[str, str]] | None:
        if head_bytes + sum(len(name) + len(value) + 4 for name, value in raw) > MAX_HEADER_BYTES:
            detail = f"the request's line and headers are over {MAX_HEADER_BYTES // 1024} KiB"
            return 431, detail, {}
        headers: dict[bytes, list[bytes]] = {}
        for name, value in raw:  # names arrive lower-cased
            headers.setdefault(name, []).append(value)
        if self.api_key is not None and path in self.protected:
            given = headers.get(API_KEY_HEADER.lower().encode(), [])
            if len(given) > 1:
                return 400, f"{len(given)} {API_KEY_HEADER} headers: send one", {}
            if not hmac.compare_digest(given[0] if given else b"", self.api_key):
                what = "wrong" if given else "missing"
                return 401, f"{what} API key: send it in the {API_KEY_HEADER} header", {}
        lengths = headers.get(b"content-length", [])
        if lengths and b"transfer-encoding" in headers:
            return 400, "both Content-Length and Transfer-Encoding: send one", {}
        if len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
            return 400, "one Content-Length of digits is required", {}
        if lengths and int(lengths[0]) > self.max_bytes:
            return 413, self.too_large, {}
        if path in self.limited and self.state.saturated:
            return 503, self.busy(), {"Retry-After": str(RETRY_AFTER_S)}
        return None


class CountedRequest:
    """One request's body as it arrives: over the upload limit it is stopped (413); a
    prediction's counts as in flight once its whole body is in (503 if `max_in_flight` others
    are by then), so that uploads still arriving, slow or stalled, never make the service busy
    or not ready (they are bounded by the connection limit and the body timeout instead)."""

    def __init__(self, receive: Receive, guard: RequestGuard, limited: bool):
        self.next, self.guard, self.limited = receive, guard, limited
        self.received = 0
        self.in_flight = False

    async def receive(self) -> Message:
        message = await self.next()
        self.received += len(message.get("body", b""))
        # Raised inside FastAPI's body parsing, which passes HTTPExceptions on to the handler.
        if self.received > self.guard.max_bytes:
            raise HTTPException(413, self.guard.too_large)
        whole = message["type"] == "http.request" and not message.get("more_body", False)
        if whole and self.limited and not self.in_flight:
            state = self.guard.state
            if state.saturated:
                raise HTTPException(503, self.guard.busy(), {"Retry-After": str(RETRY_AFTER_S)})
            state.in_flight += 1
            self.in_flight = True
        return message


@dataclass(frozen=True)
class Timeouts:
    """Seconds a connection may take: `header` for a request's head (also a new connection's
    first bytes), `body` for the whole body, `idle` between requests on a kept-alive connection;
    `max_connections` open at once (more are answered 503 and closed)."""

    header: float = 10.0
    body: float = 60.0
    idle: float = 5.0
    max_connections: int = 256


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with the `Timeouts` it lacks: a connection that sends its headers or
    body too slowly (one byte every few seconds) or sends nothing is answered 408 (if it sent
    anything) and closed; one over `max_connections` is answered 503 and closed."""

    timeouts = Timeouts()
    model_sha256 = ""  # named on its own answers too, as RequestGuard names it on the app's
    deadline: asyncio.TimerHandle | None = None  # the one timer running, if any
    partial = False  # bytes of a request's head have arrived, not yet all of it

    def refuse(self, status: int, reason: str, detail: str, retry: bool = False) -> None:
        """Answer `status` below the application and close the connection."""
        self.transport.write(raw_response(status, reason, detail, retry, self.model_sha256))
        self.transport.close()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.timeouts.max_connections:
            detail = "too many connections (max_connections): retry later"
            self.refuse(503, "Service Unavailable", detail, retry=True)
            return
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.partial = True  # until a whole head has arrived: see `_too_slow`
        super().data_received(data)

    def _await_head(self) -> None:
        self.partial = False
        self._set_deadline(self.timeouts.header, "the request's headers")

    def _set_deadline(self, seconds: float, what: str) -> None:
        self._cancel_deadline()
        self.deadline = self.loop.call_later(seconds, self._too_slow, what, seconds)

    def _cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _too_slow(self, what: str, seconds: float) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        started = self.cycle is not None and self.cycle.response_started
        # A request began to arrive (h11 stays IDLE until its head is whole): say why it is closed.
        if not started and (self.partial or self.conn.their_state is not h11.IDLE):
            detail = f"{what} did not arrive within {seconds:g} s"
            self.transport.write(
                raw_response(408, "Request Timeout", detail, model=self.model_sha256)
            )
        if self.cycle is not None:  # the application's receive() returns a disconnect
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()

    def handle_events(self) -> None:
        waiting_for_head = self.conn.their_state is h11.IDLE
        super().handle_events()
        if waiting_for_head and self.conn.their_state is not h11.IDLE:
            if self.conn.their_state is h11.SEND_BODY:
                self._set_deadline(self.timeouts.body, "the request's body")
            else:  # a request without a body arrived whole
                self._cancel_deadline()
        elif self.conn.their_state is h11.DONE and self.deadline is not None:
            self._cancel_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request (its body deadline set)
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._await_head()  # the keep-alive timer closes it idle; this one, trickling

    def send_400_response(self, msg: str) -> None:
        """h11's refusals (a malformed request, a head over `MAX_HEADER_BYTES` that arrived in
        pieces) as JSON like every other error, with the model's hash."""
        detail = f"{msg} (malformed, or headers over {MAX_HEADER_BYTES // 1024} KiB)"
        self.refuse(400, "Bad Request", detail)


def protocol_with(timeouts: Timeouts, model_sha256: str = "") -> type[GuardedProtocol]:
    """`GuardedProtocol` with these timeouts, naming this model on its own answers (uvicorn
    builds one protocol object a connection)."""
    settings = {"timeouts": timeouts, "model_sha256": model_sha256}
    return type("GuardedProtocol", (GuardedProtocol,), settings)


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM/SIGINT makes the service not ready (`/ready` answers
    503) while it keeps serving for `drain_s` seconds, so a load balancer stops sending it
    requests; then it shuts down gracefully: no new connections, requests in flight finish within
    the config's `timeout_graceful_shutdown`, after which they are cancelled. A second signal
    shuts down at once. With `alive` (a worker of `medtrain serve processes=N`), a server whose
    check says its supervisor is gone shuts down as on SIGTERM (checked once a second)."""

    def __init__(
        self,
        config: uvicorn.Config,
        state: ServiceState,
        drain_s: float = 0.0,
        alive: Callable[[], bool] | None = None,
    ):
        super().__init__(config)
        self.state = state
        self.drain_s = drain_s
        self.alive = alive
        self.last_signal: tuple[int, float] | None = None

    async def on_tick(self, counter: int) -> bool:
        watched = self.alive is not None and counter % 10 == 0 and not self.state.draining
        if watched and not self.alive():  # type: ignore[misc]
            self.handle_exit(signal.SIGTERM, None)
        return await super().on_tick(counter)

    def handle_exit(self, sig: int, frame) -> None:
        now, last = time.monotonic(), self.last_signal
        if last is not None and last[0] == sig and now - last[1] < REPEATED_SIGNAL_S:
            return  # the same signal twice at once (from the supervisor and from the group)
        self.last_signal = (sig, now)
        drained, self.state.draining = self.state.draining, True
        if drained or self.drain_s <= 0:
            super().handle_exit(sig, frame)
            return
        timer = threading.Timer(self.drain_s, super().handle_exit, (sig, frame))
        timer.daemon = True
        timer.start()
