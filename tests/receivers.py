"""A real HTTP receiver on loopback, standing in for an SMS gateway or a registry's endpoint.

It records every request (headers, JSON body, when it came) and answers from a script of
status codes (``fail_with``), then 200. Like a careful receiver it keeps the idempotency
keys it has accepted, so a test can tell deliveries from repeats.

Besides status codes, a script may hold two misbehaviours: :data:`CLOSE` (drop the
connection without an answer, accepting nothing) and :data:`HANG` (accept the message, then
answer only after ``hang_seconds``, past the sender's timeout: the acknowledgement is lost,
and the sender's next attempt is a repeat the receiver acknowledges again).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: Script entries that are not status codes: drop the connection; accept, then answer late.
CLOSE, HANG = -1, -2


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes
    at: float  # time.monotonic()
    status: int


@dataclass
class Receiver:
    """Requests received, and how to answer the next ones."""

    requests: list[Received] = field(default_factory=list)
    #: Status codes to answer with, in turn, before answering 200.
    fail_with: list[int] = field(default_factory=list)
    #: Per-request override: a function of the body giving a status (or None for the rest).
    answer: Callable[[Any], int | None] | None = None
    accepted_keys: list[str] = field(default_factory=list)
    hang_seconds: float = 3.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _changed: threading.Condition = field(init=False)
    _server: ThreadingHTTPServer | None = None

    def __post_init__(self) -> None:
        self._changed = threading.Condition(self._lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/messages"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if len(raw) < length:
                    # The sender died mid-request (a worker killed by a test): the message
                    # never arrived, so nothing is recorded, let alone accepted. Accepting it
                    # put an unreadable body among the first acceptances.
                    self.close_connection = True
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with receiver._lock:
                    status = None
                    if receiver.answer is not None:
                        status = receiver.answer(body)
                    if status is None:
                        status = receiver.fail_with.pop(0) if receiver.fail_with else 200
                    key = self.headers.get("Idempotency-Key") or ""
                    if status in (200, HANG) and key not in receiver.accepted_keys:
                        receiver.accepted_keys.append(key)
                    receiver.requests.append(
                        Received(
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            raw,
                            time.monotonic(),
                            status,
                        )
                    )
                    receiver._changed.notify_all()
                if status == CLOSE:
                    self.close_connection = True
                    return
                if status == HANG:
                    time.sleep(receiver.hang_seconds)
                    status = 200
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"ok": true}' if status == 200 else b'{"error": "no"}')
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender gave up waiting (a HANG): its acknowledgement is lost

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def wait_for(self, check: Callable[[list[Received]], bool], *, within: float = 60.0) -> None:
        """Block until ``check(requests)`` holds (a thread's wait: call via to_thread)."""
        deadline = time.monotonic() + within
        with self._lock:
            while not check(self.requests):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the receiver got {len(self.requests)} requests only")
                self._changed.wait(left)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
