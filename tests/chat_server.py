"""A small OpenAI-compatible chat-completions server on 127.0.0.1, for the model agent's tests
and the demo's: the subset of the API ``ChatModel`` speaks, over real HTTP.

It answers ``POST /v1/chat/completions`` with ``"echo: "`` and the last message's words (one
token per word, as its usage counts them), streamed as server-sent events when asked, and
refuses with OpenAI's error shape a prompt of more words than its ``context_window``. A test
makes the next requests fail (``fail_next``: a status, headers, a message) or wait until it
lets them go (``hold_next``). It runs in a thread (the standard library's
``ThreadingHTTPServer``), so it answers while the test's Trio run waits on the agent.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs

#: Seconds a held request waits at most for the test to let it go (the server's own bound).
HOLD_LIMIT = 5.0


@attrs.define
class Failure:
    """What the server answers a request instead of a completion."""

    status: int
    message: str = "the server failed"
    code: str | None = None
    headers: dict[str, str] = attrs.Factory(dict)
    #: For a streamed request: the answer's first piece, then this failure as an error event.
    mid_stream: bool = False
    #: How a ``mid_stream`` failure breaks the stream after its first piece: ``"error"``, an
    #: error event (the endpoint's own report); ``"reset"``, the connection reset (a server or
    #: proxy that crashed: the client's read fails); ``"end"``, the body's end (no finish
    #: reason, no ``[DONE]``: a server or proxy that stopped early).
    breaks_by: str = "error"
    #: The body to send as it is (with ``content_type``) instead of an error in OpenAI's shape:
    #: a proxy's page, an answer of another shape.
    body: str | None = None
    content_type: str = "application/json"


@attrs.define
class Received:
    """A request as the server read it."""

    body: dict[str, Any]
    headers: dict[str, str]


class ChatServer:
    """The server's state, shared by its handler threads: what it was sent, what it is to do."""

    def __init__(self, context_window: int = 50) -> None:
        self.context_window = context_window
        self.received: list[Received] = []
        self._failures: deque[Failure] = deque()
        self._held = 0
        #: Whether a streamed answer waits after its first piece (for ``release``).
        self.pause_streams = False
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._http: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._http is not None
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def fail_next(self, *failures: Failure) -> None:
        """Answer the next requests with these failures, one each, in order."""
        with self._lock:
            self._failures.extend(failures)

    def hold_next(self, count: int = 1) -> None:
        """Let the next ``count`` requests wait (for ``release``, at most ``HOLD_LIMIT``)."""
        with self._lock:
            self._held += count

    def release(self) -> None:
        """Let every held request go on."""
        self._release.set()

    def take(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[Failure | None, bool]:
        """Record a request; return the failure it gets, if any, and whether it is held."""
        with self._lock:
            self.received.append(Received(body, headers))
            failure = self._failures.popleft() if self._failures else None
            held = self._held > 0
            if held:
                self._held -= 1
        return failure, held

    def wait_while_held(self) -> None:
        self._release.wait(HOLD_LIMIT)

    @contextmanager
    def running(self) -> Iterator[ChatServer]:
        """Serve on a free port of 127.0.0.1 until the block ends, however it ends."""
        state = self

        class Handler(_Handler):
            server_state = state

        self._http = _QuietServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        thread = threading.Thread(target=self._http.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.release()
            self._http.shutdown()
            self._http.server_close()
            thread.join(HOLD_LIMIT)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (a test's timeout) is expected; anything else is printed."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def words_of(messages: list[dict[str, str]]) -> int:
    """The prompt's tokens as this server counts them: its words."""
    return sum(len(message.get("content", "").split()) for message in messages)


class _Handler(BaseHTTPRequestHandler):
    server_state: ChatServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read what the server received, not its log."""

    def do_POST(self) -> None:
        state = self.server_state
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        failure, held = state.take(body, {k.lower(): v for k, v in self.headers.items()})
        if held:
            state.wait_while_held()
        if self.path != "/v1/chat/completions":
            failure = Failure(404, f"no route {self.path}", code="not_found")
        messages = body.get("messages", [])
        prompt = words_of(messages)
        if failure is None and prompt > state.context_window:
            failure = Failure(
                400,
                f"This model's maximum context length is {state.context_window} tokens. "
                f"However, your messages resulted in {prompt} tokens.",
                code="context_length_exceeded",
            )
        broken = failure if failure is not None and failure.mid_stream else None
        if failure is not None and (broken is None or not body.get("stream")):
            self._fail(failure)
            return
        words = ["echo:", *messages[-1]["content"].split()] if messages else ["echo:"]
        finish = "stop"
        limit = body.get("max_tokens")
        if limit is not None and len(words) > limit:
            words, finish = words[:limit], "length"
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": len(words),
            "total_tokens": prompt + len(words),
        }
        if body.get("stream"):
            self._stream(body, words, finish, usage, broken)
        else:
            self._send_json(
                200,
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model", ""),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": " ".join(words)},
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                },
            )

    def _stream(
        self,
        body: dict[str, Any],
        words: list[str],
        finish: str,
        usage: dict[str, int],
        broken: Failure | None = None,
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        model = body.get("model", "")

        def event(choices: list[dict[str, Any]], with_usage: dict[str, int] | None = None) -> None:
            chunk = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": choices,
            }
            if with_usage is not None:
                chunk["usage"] = with_usage
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        for position, word in enumerate(words):
            text = word if position == 0 else f" {word}"
            event([{"index": 0, "delta": {"content": text}, "finish_reason": None}])
            if broken is not None:
                self._break(broken)
                return
            if self.server_state.pause_streams:
                self.server_state.wait_while_held()
        event([{"index": 0, "delta": {}, "finish_reason": finish}])
        if (body.get("stream_options") or {}).get("include_usage"):
            event([], usage)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _break(self, failure: Failure) -> None:
        if failure.breaks_by == "reset":
            # Closed with no time to linger, the socket sends a reset instead of the end of
            # the body (once the handler's own reader lets go of it, as the request ends).
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        if failure.breaks_by == "end":
            return
        error = {"error": {"message": failure.message, "code": failure.code}}
        self.wfile.write(f"data: {json.dumps(error)}\n\n".encode())

    def _fail(self, failure: Failure) -> None:
        if failure.body is not None:
            data = failure.body.encode()
            self.send_response(failure.status)
            self.send_header("Content-Type", failure.content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        error = {
            "error": {
                "message": failure.message,
                "type": "invalid_request_error" if failure.status < 500 else "server_error",
                "param": None,
                "code": failure.code,
            }
        }
        self._send_json(failure.status, error, failure.headers)

    def _send_json(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
