"""Several API server processes in front of one engine process: ``poolkit serve --api-server-count N``.

One process's event loop parses, validates and answers every request, and that per-request Python
work holds the GIL: single-text requests are served at about one core's rate however many cores
the host has. With ``N`` API processes, the engine process loads the models, then forks a keeper
before it starts any thread of its own; the keeper forks ``N - 1`` front processes, and all of them
serve the same application on the same port (a listening socket each, ``SO_REUSEPORT``: the kernel
spreads new connections evenly between them). A front answers
everything itself (HTTP, validation, the tokenizer's routes, the answers' JSON) except running the
model: its engine hands each merged batch of prompts to the engine process
(:class:`RemoteEngine`) over a Unix socket in a private temporary folder, whose batchers merge the
fronts' batches with its own requests and run them on the one device. Nothing is loaded twice: the
fronts share the loaded weights with the engine process page by page (copy on write) and never
touch them, nor the accelerator.

Each connection to the engine socket proves it holds a key made at start (in a thread of its own,
with a deadline), so a local process that connects and says nothing, or the wrong thing, keeps no
front from linking. The keeper (single-threaded, so forking from it is safe) replaces a front that
ends, as gunicorn's arbiter replaces a worker.

Each process keeps its own admission, queue and cache limits and its own ``/metrics`` counters.
SIGTERM to the engine process stops the keeper and the fronts first (each drains its own requests,
their batches still run in the engine process), then the engine process drains.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import pickle
import secrets
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time
from multiprocessing.connection import AuthenticationError, Client, Connection, answer_challenge, deliver_challenge
from typing import Any, Callable, NoReturn, Sequence

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
            except (OSError, EOFError, AuthenticationError) as exc:
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
    are all submitted as they come, and each answered when its results are in.

    Any local process of the user can connect to the socket, so the accept loop only accepts:
    each connection proves it holds the key in a thread of its own, within
    :attr:`handshake_timeout`, and one that does not is logged and dropped. A connection that
    says nothing, or the wrong thing, never keeps a front from linking.
    """

    #: Seconds a new connection has to complete the handshake (a front needs milliseconds).
    handshake_timeout = 10.0

    def __init__(self, listener: socket.socket, authkey: bytes, batchers: Callable[[int], Any]) -> None:
        self._listener, self._authkey, self._batchers = listener, authkey, batchers
        self._loop = asyncio.new_event_loop()
        self._closed = False

    def start(self) -> None:
        threading.Thread(target=self._loop.run_forever, name="poolkit-service-loop", daemon=True).start()
        threading.Thread(target=self._accept, name="poolkit-service", daemon=True).start()

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept loop
        except OSError:
            pass
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError as exc:
                if self._closed:
                    return
                logger.warning("the engine socket could not accept a connection: %s", exc)
                time.sleep(0.1)  # out of file descriptors, say: try again, without spinning
                continue
            threading.Thread(target=self._serve, args=(sock,), name="poolkit-service-conn", daemon=True).start()

    def _handshake(self, sock: socket.socket) -> Connection | None:
        """``sock`` as a connection once it has proved it holds the key (both ways, as
        :class:`multiprocessing.connection.Listener` checks it), or ``None``: dropped, and logged."""
        sock.setblocking(True)
        _set_deadline(sock, self.handshake_timeout)  # the kernel's: reads and writes past it fail
        conn = Connection(sock.detach())
        try:
            deliver_challenge(conn, self._authkey)
            answer_challenge(conn, self._authkey)
        except Exception as exc:  # noqa: BLE001 - whatever a stranger sends ends its connection only
            logger.warning("the engine socket dropped a connection that failed its handshake: %s", _handshake_failure(exc, self.handshake_timeout))
            conn.close()
            return None
        with socket.socket(fileno=conn.fileno()) as linked:
            _set_deadline(linked, 0)  # a front's link waits for its batches as long as they take
            linked.detach()
        return conn

    def _serve(self, sock: socket.socket) -> None:
        conn = self._handshake(sock)
        if conn is None:
            return
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


def _set_deadline(sock: socket.socket, seconds: float) -> None:
    """Bound each read and write on ``sock``'s blocking descriptor to ``seconds`` (0: no bound)."""
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _handshake_failure(exc: BaseException, timeout: float) -> str:
    """Why a handshake failed, in a few words."""
    if isinstance(exc, AuthenticationError):
        return "it does not hold the key"
    if isinstance(exc, BlockingIOError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, EOFError):
        return "it closed the connection"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def engine_socket(address: str) -> socket.socket:
    """The engine process's listening Unix socket at ``address`` (a path in a private folder)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


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
    make_app: Callable[[list[Any], bool], Any],
    run_app: Callable[[Any, socket.socket], None],
    *,
    host: str,
    port: int,
    shutdown_timeout: float = 30.0,
) -> None:
    """Load the models, fork the keeper of ``count - 1`` fronts, and serve in this process too.

    Args:
        loaders: each loads one model (here, before any fork).
        count: API processes in all, this one included (at least 2).
        make_app: the application over the loaded models (``create_app``), and whether it is a
            front's: a front runs no warm-up (the engine process warms the models up, and a process
            forked from one that holds the accelerator must not touch it).
        run_app: serves an application on the listening socket until it stops.
        shutdown_timeout: how long a front drains on SIGTERM (``limits.shutdown_timeout``); one
            still running 5 s later is killed.
    """
    if count < 2:
        raise InvalidRequest(f"--api-server-count must be 2 or more to fork API processes, got {count}")
    llms = [load() for load in loaders]
    sockets = listening_sockets(host, port, count)
    port = sockets[0].getsockname()[1]  # port 0: the one the kernel gave, for the fronts started later
    folder = tempfile.mkdtemp(prefix="poolkit-engine-")
    address, authkey = os.path.join(folder, "engine.sock"), secrets.token_bytes(32)
    try:
        listener = engine_socket(address)
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        for sock in sockets:
            sock.close()
        hint = " (set TMPDIR to a shorter path)" if len(os.fsencode(address)) > 107 else ""
        raise InvalidRequest(f"cannot make the engine socket {address}: {exc.strerror or exc}{hint}") from None
    grace = shutdown_timeout + 5
    keeper = os.fork()
    if keeper == 0:  # the keeper: never returns
        code = 1
        try:
            listener.close()
            sockets[0].close()
            code = _Keeper(llms, sockets[1:], address, authkey, make_app, run_app, host=host, port=port, grace=grace).run()
        except BaseException:  # noqa: BLE001 - the keeper reports and ends; its fronts end with it
            logger.exception("the keeper of the API processes failed")
        finally:
            os._exit(code)
    for sock in sockets[1:]:
        sock.close()  # the keeper's, for its fronts
    logger.info("%d API processes: the engine process %d and %d more, started and kept by process %d", count, os.getpid(), count - 1, keeper)
    app = make_app(llms, False)
    st = app.state.poolkit
    service = EngineService(listener, authkey, lambda i: st.models[i].batcher)
    service.start()
    stopping, ended = threading.Event(), threading.Event()

    def watch() -> None:
        status = _reap(keeper)
        if not stopping.is_set():
            logger.error("the keeper of the API processes ended (%s): its API processes end with it, this one serves alone", _ending(status))
        ended.set()

    threading.Thread(target=watch, name="poolkit-keeper", daemon=True).start()

    def stop_fronts() -> None:
        stopping.set()
        if not ended.is_set():
            try:
                os.kill(keeper, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def wait_for_fronts() -> None:  # their requests' batches still run here meanwhile
        ended.wait(grace + 5)

    st.on_exit_signal, st.before_drain = stop_fronts, wait_for_fronts
    try:
        run_app(app, sockets[0])
    finally:
        stop_fronts()
        if not ended.wait(grace + 5):
            try:
                os.kill(keeper, signal.SIGKILL)  # its fronts get SIGTERM as it goes
            except ProcessLookupError:
                pass
            ended.wait(10)
        service.close()
        sockets[0].close()
        shutil.rmtree(folder, ignore_errors=True)


class _Keeper:
    """The fronts' parent, as gunicorn's arbiter is its workers': starts them, reaps each that
    ends, and starts another in its place, on the same port, unless it is stopping.

    It is forked from the engine process before that starts any thread, and starts none itself:
    forking a front from it is safe, where forking the engine process once its threads run is not.
    Its fronts share the loaded weights with it (and so with the engine process) page by page.
    SIGTERM or SIGINT (or the engine process's end) stops it: it stops its fronts, waits up to
    ``grace`` seconds for their drains, kills what is left, and exits (after the engine process's
    end, removing the engine socket's folder, which that process had no chance to).
    """

    #: A front that ended sooner than this after its start makes the next start wait (doubling, up to 30 s).
    quick = 10.0

    def __init__(
        self, llms: list[Any], sockets: list[socket.socket], address: str, authkey: bytes,
        make_app: Callable[[list[Any], bool], Any], run_app: Callable[[Any, socket.socket], None],
        *, host: str, port: int, grace: float,
    ) -> None:
        self.llms, self.sockets, self.address, self.authkey = llms, sockets, address, authkey
        self.make_app, self.run_app, self.host, self.port, self.grace = make_app, run_app, host, port, grace
        self.engine = os.getppid()
        self.running: dict[int, float] = {}  # pid -> when it started
        self.due: list[float] = []  # when to start a replacement
        self.failures = 0  # quick ends in a row
        self.stopping = False
        self.handlers = {sig: signal.getsignal(sig) for sig in _STOPS}  # the engine process's, for the fronts

    def run(self) -> int:
        for sig in _STOPS:
            signal.signal(sig, self._stop)
        _end_with_parent(self.engine)
        gc.freeze()  # the collector leaves the engine process's objects (and their shared pages) alone
        for sock in self.sockets:
            try:
                self._start(sock)
            except OSError as exc:
                logger.error("cannot start an API process: %s; trying again in 5 s", exc)
                self.due.append(time.monotonic() + 5)
            sock.close()
        deadline = None
        while self.running or (self.due and not self.stopping):
            if os.getppid() != self.engine:
                self.stopping = True
            if self.stopping and deadline is None:
                deadline = time.monotonic() + self.grace
                self._signal(signal.SIGTERM)
            elif deadline is not None and time.monotonic() >= deadline:
                self._signal(signal.SIGKILL)
            self._reap()
            if not self.stopping:
                self._replace()
            time.sleep(0.1)
        if os.getppid() != self.engine:  # it was killed: its engine socket's folder is left to clear
            shutil.rmtree(os.path.dirname(self.address), ignore_errors=True)
        return 0

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def _signal(self, sig: int) -> None:
        for pid in self.running:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _reap(self) -> None:
        while self.running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.running.clear()
                return
            if pid == 0:
                return
            started = self.running.pop(pid, None)
            if started is None or self.stopping:
                continue
            self.failures = self.failures + 1 if time.monotonic() - started < self.quick else 0
            delay = min(30.0, 0.5 * 2 ** (self.failures - 1)) if self.failures else 0.0
            logger.warning("API process %d ended (%s); starting another%s", pid, _ending(status), f" in {delay:g} s" if delay else "")
            self.due.append(time.monotonic() + delay)

    def _replace(self) -> None:
        now = time.monotonic()
        for when in sorted(self.due):
            if when > now:
                return
            self.due.remove(when)
            try:
                (sock,) = listening_sockets(self.host, self.port, 1)
            except InvalidRequest as exc:
                logger.error("cannot start an API process: %s; trying again in 5 s", exc)
                self.due.append(now + 5)
                continue
            try:
                self._start(sock)
            except OSError as exc:
                logger.error("cannot start an API process: %s; trying again in 5 s", exc)
                self.due.append(now + 5)
            finally:
                sock.close()  # the front's

    def _start(self, sock: socket.socket) -> None:
        """Fork a front serving on ``sock``; a stop signal waits until the front has its own handlers."""
        keeper = os.getpid()
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
        try:
            pid = os.fork()
            if pid == 0:
                self._front(sock, keeper)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)
        self.running[pid] = time.monotonic()
        logger.info("API process %d serves on port %d", pid, self.port)

    def _front(self, sock: socket.socket, keeper: int) -> NoReturn:
        code = 1
        try:
            for sig, handler in self.handlers.items():
                signal.signal(sig, handler)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)
            for other in self.sockets:
                if other is not sock:
                    other.close()
            _as_front(keeper)
            for index, llm in enumerate(self.llms):
                llm.engine = RemoteEngine(llm.engine, index, self.address, self.authkey)
            self.run_app(self.make_app(self.llms, True), sock)
            code = 0
        except BaseException:  # noqa: BLE001 - a front reports and ends
            logger.exception("an API process failed")
        finally:
            os._exit(code)


#: The signals that stop the keeper (and, with their own handlers, each front).
_STOPS = {signal.SIGTERM, signal.SIGINT}


def _as_front(parent: int) -> None:
    """A forked front computes nothing itself: one thread for torch, no tokenizer thread pool
    (both pools belong to the engine process), no accelerator; it ends with its keeper."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import torch

    torch.set_num_threads(1)
    _end_with_parent(parent)


def _end_with_parent(parent: int) -> None:
    """SIGTERM (a drain) to this process when ``parent`` ends, however it ends (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it ended before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def _reap(pid: int) -> int:
    """Wait for child ``pid`` to end; its wait status."""
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return 0


def _ending(status: int) -> str:
    """How a process ended, from its wait status."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


__all__ = [
    "EngineService", "EngineUnavailable", "RemoteCall", "RemoteEngine", "engine_socket", "listening_sockets", "serve_processes",
]
