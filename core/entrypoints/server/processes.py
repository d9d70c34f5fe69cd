"""Several API server processes in front of one engine process: ``poolkit serve --api-server-count N``.

One process's event loop parses, validates and answers every request, and that per-request Python
work holds the GIL: single-text requests are served at about one core's rate however many cores
the host has. With ``N`` API processes, the engine process loads the models, then forks ``N - 1``
front processes before it starts any thread of its own; all of them serve the same application on
the same port (a listening socket each, ``SO_REUSEPORT``: the kernel spreads new connections
evenly between them). A front answers
everything itself (HTTP, validation, the tokenizer's routes, the answers' JSON) except running the
model: its engine hands each merged batch of prompts to the engine process
(:class:`RemoteEngine`), whose batchers merge the fronts' batches with its own requests and run
them on the one device. Nothing is loaded twice: the fronts share the loaded weights with the
engine process page by page (copy on write) and never touch them, nor the accelerator.

Each process keeps its own admission, queue and cache limits and its own ``/metrics`` counters.
SIGTERM to the engine process stops the fronts first (each drains its own requests, their batches
still run in the engine process), then the engine process drains.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import secrets
import signal
import socket
import tempfile
import threading
import time
from multiprocessing.connection import Client, Connection, Listener
from typing import Any, Callable, Sequence

from ...contracts.errors import InvalidRequest, PoolkitError
from ...plugins.manager import registry
from ...runtime.batching import ShuttingDown

logger = logging.getLogger(__name__)


class EngineUnavailable(ShuttingDown):
    """The engine process did not answer a front's batch (it stopped, or the connection broke):
    a 503, as a server shutting down."""


class RemoteEngine:
    """A front process's engine: everything of the model's own engine (its tokenizer, limits and
    checks) except running batches, which go to the engine process.

    The front's batcher pipelines as on an accelerator: :meth:`staged` returns a
    :class:`RemoteCall` whose ``launch`` sends the merged batch and whose ``finish`` waits for its
    results, so the next batch is on its way to the engine process while the last one's answers
    are read back and sent. Each thread has a connection of its own.
    """

    def __init__(self, engine: Any, model: int, address: str, authkey: bytes) -> None:
        self._engine, self._model, self._address, self._authkey = engine, model, address, authkey
        self._local = threading.local()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    @property
    def asynchronous(self) -> bool:
        return True  # batches run in the engine process while this one goes on

    def staged(self, task: Any, prompts: Sequence[Any], params: Sequence[Any]) -> RemoteCall:
        """A merged batch to run in the engine process (which tokenizes it)."""
        return RemoteCall(self, task, prompts, params)

    def run(self, task: Any, prompts: Sequence[Any], params: Sequence[Any], progress: Callable | None = None) -> Any:
        """:meth:`poolkit.runtime.engine.Engine.run` in the engine process, through its batcher.

        Raises:
            PoolkitError: what the engine process raised for these prompts.
            EngineUnavailable: the engine process did not answer.
        """
        return RemoteCall(self, task, prompts, params)()

    def _link(self) -> _Link:
        link = getattr(self._local, "link", None)
        if link is None or link.broken:
            try:
                link = self._local.link = _Link(Client(self._address, authkey=self._authkey))
            except (OSError, EOFError) as exc:
                raise EngineUnavailable(f"the engine process did not answer: {exc}") from None
        return link


class RemoteCall:
    """One merged batch of a front, run in the engine process: call it, or ``launch`` it and
    ``finish`` it later (as :class:`poolkit.runtime.inflight.Staged`)."""

    def __init__(self, engine: RemoteEngine, task: Any, prompts: Sequence[Any], params: Sequence[Any]) -> None:
        self._engine, self._message = engine, (engine._model, task.name, prompts, list(params))
        self._sent: tuple[_Link, int] | None = None

    def __call__(self) -> Any:
        return self.launch().finish()

    def launch(self, behind: Any = None) -> RemoteCall:
        link = self._engine._link()
        self._sent = (link, link.send(self._message))
        return self

    def finish(self) -> Any:
        if self._sent is None:
            raise RuntimeError("finish() before launch()")
        link, number = self._sent
        ok, value = link.receive(number)
        if not ok:
            raise value
        return value


class _Link:
    """A front thread's connection to the engine process: numbered messages out, their answers
    back in any order (kept until asked for)."""

    def __init__(self, conn: Connection) -> None:
        self.conn, self.broken = conn, False
        self._next, self._answers = 0, {}

    def send(self, message: tuple) -> int:
        self._next += 1
        try:
            self.conn.send_bytes(pickle.dumps((self._next, *message), protocol=5))
        except (OSError, EOFError) as exc:
            self._break()
            raise EngineUnavailable(f"the engine process did not answer: {exc}") from None
        return self._next

    def receive(self, number: int) -> tuple[bool, Any]:
        while number not in self._answers:
            if self.broken:
                raise EngineUnavailable("the engine process did not answer: its connection was lost")
            try:
                got, ok, value = pickle.loads(self.conn.recv_bytes())
            except (OSError, EOFError) as exc:
                self._break()
                raise EngineUnavailable(f"the engine process did not answer: {exc or 'it closed the connection'}") from None
            self._answers[got] = (ok, value)
        return self._answers.pop(number)

    def _break(self) -> None:
        self.broken = True
        try:
            self.conn.close()
        except OSError:
            pass


class EngineService:
    """The engine process's side: a connection per front thread, each batch run through the
    batcher of the model it names, on an event loop of the service's own; a connection's batches
    are all submitted as they come, and each answered when its results are in."""

    def __init__(self, listener: Listener, batchers: Callable[[int], Any]) -> None:
        self._listener, self._batchers = listener, batchers
        self._loop = asyncio.new_event_loop()
        self._closed = False

    def start(self) -> None:
        threading.Thread(target=self._loop.run_forever, name="poolkit-service-loop", daemon=True).start()
        threading.Thread(target=self._accept, name="poolkit-service", daemon=True).start()

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.close()
        except OSError:
            pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn = self._listener.accept()
            except (OSError, EOFError):
                if self._closed:
                    return
                continue  # a front that failed the handshake
            threading.Thread(target=self._serve, args=(conn,), name="poolkit-service-conn", daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        sending = threading.Lock()

        def answer(number: int, ok: bool, value: Any) -> None:
            if not ok and not isinstance(value, PoolkitError):  # a library error keeps its status; the rest is a 500
                value = RuntimeError(f"{type(value).__name__}: {value}")
            try:
                data = pickle.dumps((number, ok, value), protocol=5)
            except Exception:  # noqa: BLE001 - an error that does not pickle goes as its message
                data = pickle.dumps((number, False, RuntimeError(str(value))), protocol=5)
            with sending:
                try:
                    conn.send_bytes(data)
                except (OSError, EOFError):
                    pass  # the front is gone; so are its requests

        def done(number: int, submitted: Any) -> None:
            exc = submitted.exception()
            answer(number, exc is None, submitted.result() if exc is None else exc)

        with conn:
            while True:
                try:
                    number, model, task_name, prompts, params = pickle.loads(conn.recv_bytes())
                except (OSError, EOFError):
                    return
                try:
                    batcher = self._batchers(model)
                except (IndexError, KeyError):
                    batcher = None
                if batcher is None:  # not loaded, or gone with a shutdown
                    answer(number, False, EngineUnavailable(f"the engine process is not running model {model}"))
                    continue
                try:
                    task = registry("task").get(task_name)  # the registry's own: batches merge by task
                    submitted = asyncio.run_coroutine_threadsafe(batcher.submit(task, prompts, params), self._loop)
                except Exception as exc:  # noqa: BLE001 - the front re-raises it for its requests
                    answer(number, False, exc)
                    continue
                submitted.add_done_callback(lambda f, n=number: done(n, f))


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """One listening socket per API process on the same address (``SO_REUSEPORT``: the kernel
    spreads new connections evenly between them), all made before the fronts are forked, so
    that a port in use is this process's error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(2048)
            port = sock.getsockname()[1]  # port 0: the others join the one the first was given
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise InvalidRequest(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sockets


def serve_processes(
    loaders: Sequence[Callable[[], Any]],
    count: int,
    make_app: Callable[[list[Any]], Any],
    run_app: Callable[[Any, socket.socket], None],
    *,
    host: str,
    port: int,
) -> None:
    """Load the models, fork ``count - 1`` fronts, and serve in this process too.

    Args:
        loaders: each loads one model (here, before any fork).
        count: API processes in all, this one included (at least 2).
        make_app: the application over the loaded models (``create_app``).
        run_app: serves an application on the listening socket until it stops.
    """
    if count < 2:
        raise InvalidRequest(f"--api-server-count must be 2 or more to fork API processes, got {count}")
    llms = [load() for load in loaders]
    sockets = listening_sockets(host, port, count)
    folder = tempfile.mkdtemp(prefix="poolkit-engine-")
    address, authkey = os.path.join(folder, "engine.sock"), secrets.token_bytes(32)
    listener = Listener(address, family="AF_UNIX", authkey=authkey)
    children: list[int] = []
    for own in sockets[1:]:
        pid = os.fork()
        if pid == 0:  # a front: never returns
            code = 1
            try:
                for sock in sockets:
                    if sock is not own:
                        sock.close()
                _as_front()
                for index, llm in enumerate(llms):
                    llm.engine = RemoteEngine(llm.engine, index, address, authkey)
                run_app(make_app(llms), own)
                code = 0
            except BaseException:  # noqa: BLE001 - a front reports and ends
                logger.exception("an API process failed")
            finally:
                os._exit(code)
        children.append(pid)
        own.close()  # the front's
    logger.info("%d API processes: the engine process %d and its fronts %s", count, os.getpid(), ", ".join(map(str, children)))
    app = make_app(llms)
    st = app.state.poolkit
    service = EngineService(listener, lambda i: st.models[i].batcher)
    service.start()

    def stop_fronts() -> None:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def wait_for_fronts() -> None:  # their requests' batches still run here meanwhile
        for pid in children:
            _wait(pid, st.limits.shutdown_timeout + 5)

    st.on_exit_signal, st.before_drain = stop_fronts, wait_for_fronts
    try:
        run_app(app, sockets[0])
    finally:
        stop_fronts()
        for pid in children:
            if _wait(pid, 5.0) is None:
                os.kill(pid, signal.SIGKILL)
                _wait(pid)
        service.close()
        sockets[0].close()
        try:
            os.unlink(address)
            os.rmdir(folder)
        except OSError:
            pass


def _as_front() -> None:
    """A forked front computes nothing itself: one thread for torch, no tokenizer thread pool
    (both pools belong to the engine process), no accelerator."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import torch

    torch.set_num_threads(1)
    try:  # the engine process's end is the front's: SIGTERM (a drain) when it goes, however it goes
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _wait(pid: int, timeout: float | None = None) -> int | None:
    """``pid``'s exit status once it has ended, waiting up to ``timeout`` seconds (forever: ``None``)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        if done:
            return os.waitstatus_to_exitcode(status)
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


__all__ = ["EngineService", "EngineUnavailable", "RemoteCall", "RemoteEngine", "listening_sockets", "serve_processes"]
