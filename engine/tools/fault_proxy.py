"""A small HTTP/JSON-RPC proxy in front of a local node that injects network faults on request.

Used by `settle chain-check` and by the transaction manager's fault tests; it belongs in front
of a node the engine started (anvil), never in front of a real network's RPC.

Faults are chosen by the JSON-RPC method in a request (any call of a batch counts), so a test
can let everything through except, say, the response to eth_sendRawTransaction:

* REFUSE: close the client's connection without forwarding: the node never sees the request.
* DROP_RESPONSE: forward the request, let the node act on it, then close the connection
  without answering: a reset after send, the classic ambiguous outcome.
* HOLD_RESPONSE: forward, then answer nothing until the client gives up (its read timeout) or
  `hold_s_max` passes: a timeout after send.
* DELAY: forward and answer after `delay_s`.

Everything is bounded: each fault fires a given number of times, sockets have timeouts, and the
proxy stops itself after `lifetime_s_max` even if a test forgets to.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Final

HEADER_BYTES_MAX: Final = 64 * 1024
BODY_BYTES_MAX: Final = 64 * 1024 * 1024
SOCKET_TIMEOUT_S: Final = 0.2
UPSTREAM_TIMEOUT_S: Final = 30.0
CONNECTIONS_MAX: Final = 64


class Fault(StrEnum):
    REFUSE = "refuse"
    DROP_RESPONSE = "drop_response"
    HOLD_RESPONSE = "hold_response"
    DELAY = "delay"


@dataclass
class _Rule:
    fault: Fault
    method: str | None
    times: int
    delay_s: float


class FaultProxy:
    """Listens on 127.0.0.1 (a free port) and forwards to `upstream_port` on 127.0.0.1."""

    def __init__(
        self,
        upstream_port: int,
        *,
        hold_s_max: float = 5.0,
        lifetime_s_max: float = 300.0,
    ) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._hold_s_max = hold_s_max
        self._lifetime_s_max = lifetime_s_max
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(SOCKET_TIMEOUT_S)
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        # Methods of the requests the node received, and faults that fired, by kind.
        self.forwarded: Counter[str] = Counter()
        self.fired: Counter[Fault] = Counter()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inject(
        self, fault: Fault, method: str | None = None, *, times: int = 1, delay_s: float = 0.0
    ) -> None:
        assert times > 0 and delay_s >= 0
        with self._lock:
            self._rules.append(_Rule(fault, method, times, delay_s))

    @property
    def armed(self) -> int:
        """Faults injected that have not fired yet."""
        with self._lock:
            return sum(rule.times for rule in self._rules)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def start(self) -> None:
        thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self._hold_s_max + 2 * SOCKET_TIMEOUT_S)
        self._listener.close()

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self) -> None:
        deadline = time.monotonic() + self._lifetime_s_max
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            live = [thread for thread in self._threads if thread.is_alive()]
            if len(live) > CONNECTIONS_MAX:
                client.close()
                continue
            thread = threading.Thread(target=self._connection, args=(client,), daemon=True)
            self._threads = [*live, thread]
            thread.start()
        self._stop.set()

    def _connection(self, client: socket.socket) -> None:
        client.settimeout(SOCKET_TIMEOUT_S)
        with client:
            while not self._stop.is_set():
                request = _read_message(client, self._stop)
                if request is None:
                    return
                methods = _methods(request)
                rule = self._take_rule(methods)
                if rule is not None and rule.fault == Fault.REFUSE:
                    return
                if rule is not None and rule.fault == Fault.DELAY:
                    self._stop.wait(rule.delay_s)
                response = self._forward(request, methods)
                if response is None:
                    return
                if rule is not None and rule.fault == Fault.DROP_RESPONSE:
                    return
                if rule is not None and rule.fault == Fault.HOLD_RESPONSE:
                    self._hold(client)
                    return
                client.sendall(response)

    def _take_rule(self, methods: list[str]) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.method is None or rule.method in methods:
                    rule.times -= 1
                    if rule.times == 0:
                        self._rules.remove(rule)
                    self.fired[rule.fault] += 1
                    return rule
        return None

    def _forward(self, request: bytes, methods: list[str]) -> bytes | None:
        with socket.create_connection(self._upstream, timeout=UPSTREAM_TIMEOUT_S) as upstream:
            upstream.sendall(request)
            with self._lock:
                self.forwarded.update(methods)
            return _read_message(upstream, self._stop)

    def _hold(self, client: socket.socket) -> None:
        """Keeps the connection open and silent until the client hangs up or time is up."""
        deadline = time.monotonic() + self._hold_s_max
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                if not client.recv(4096):
                    return
            except TimeoutError:
                continue
            except OSError:
                return


def _read_message(sock: socket.socket, stop: threading.Event) -> bytes | None:
    """One HTTP/1.1 message with a Content-Length body; None when the peer closed."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = _recv(sock, stop)
        if not chunk:
            return None
        buffer += chunk
        if len(buffer) > HEADER_BYTES_MAX:
            raise ValueError("HTTP header too large")
    head, _, body = buffer.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    assert length <= BODY_BYTES_MAX, length
    while len(body) < length:
        chunk = _recv(sock, stop)
        if not chunk:
            return None
        body += chunk
    return head + b"\r\n\r\n" + body


def _recv(sock: socket.socket, stop: threading.Event) -> bytes:
    while not stop.is_set():
        try:
            return sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return b""
    return b""


def _methods(request: bytes) -> list[str]:
    body = request.partition(b"\r\n\r\n")[2]
    try:
        payload = json.loads(body)
    except ValueError:
        return []
    calls = payload if isinstance(payload, list) else [payload]
    return [call.get("method", "") for call in calls if isinstance(call, dict)]
