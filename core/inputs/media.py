"""Media URLs in requests: their policy and their fetching (chat ``image_url`` / ``video_url`` parts,
Cohere's and the Scoring API's image inputs).

An image (or a video) arrives as a ``data:image/...;base64,`` URI, which the image IO processor decodes under
its limits (bytes, pixels, formats). A remote ``http(s)`` URL is refused unless the server was
started with ``--allowed-media-domains`` naming its host (vLLM's option; poolkit fetches nothing by
default): then it is fetched on a thread of its own with a size cap (``max_image_bytes``) and a
deadline over the whole fetch, headers included (``POOLKIT_MEDIA_FETCH_TIMEOUT`` seconds, default 5,
vLLM's ``VLLM_IMAGE_FETCH_TIMEOUT``), following redirects only to allowed http(s) hosts; one request
fetches at most ``POOLKIT_MAX_REQUEST_MEDIA_FETCHES`` images holding at most
``POOLKIT_MAX_REQUEST_MEDIA_BYTES`` together, a few at a time, so a slow host delays only the
requests that name it. Files and other schemes are always refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import IO, Any, Sequence
from urllib.parse import urljoin, urlsplit

from ..config.environment import env_number
from ..contracts.errors import InvalidRequest, short

#: Seconds a remote image may take to arrive in full (vLLM's ``VLLM_IMAGE_FETCH_TIMEOUT``).
FETCH_TIMEOUT = 5.0
#: Most bytes of a fetched image unless ``POOLKIT_MAX_IMAGE_BYTES`` says otherwise (the image IO
#: processor's cap on bytes and data URIs, which then decodes what was fetched under its own limits).
MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: Redirects a fetch follows, each to an allowed host.
MAX_REDIRECTS = 3
#: Most remote images one request may fetch (all its conversations and inputs together) unless
#: ``POOLKIT_MAX_REQUEST_MEDIA_FETCHES`` says otherwise.
MAX_REQUEST_MEDIA_FETCHES = 64
#: Most bytes one request's fetched images may hold together unless ``POOLKIT_MAX_REQUEST_MEDIA_BYTES``
#: says otherwise.
MAX_REQUEST_MEDIA_BYTES = 64 * 1024 * 1024
#: Fetches one request runs at a time, each on a thread of its own.
FETCHES_AT_ONCE = 8
#: Tokens an image is guessed at before it is decoded (the batcher's cost, the token limit's estimate).
IMAGE_TOKEN_GUESS = 256


@dataclasses.dataclass(frozen=True)
class MediaPolicy:
    """What a server fetches: the hosts of ``--allowed-media-domains`` (none: data URIs only)."""

    allowed_domains: frozenset[str] = frozenset()

    @classmethod
    def of(cls, domains: Sequence[str] | None) -> "MediaPolicy":
        """The policy of ``--allowed-media-domains`` values (repeated, or separated by commas or spaces).

        Raises:
            InvalidRequest: a value that is a URL or has a path rather than a host name.
        """
        hosts = {d.strip().lower() for value in domains or () for d in value.replace(",", " ").split() if d.strip()}
        for host in hosts:
            if "/" in host or host.count(":") == 1:  # a URL, a path or a port; IPv6 addresses have several colons
                raise InvalidRequest(f"--allowed-media-domains takes host names (example.com), got '{short(host, 60)}'")
        return cls(frozenset(h.strip("[]") for h in hosts))

    def allows(self, host: str | None) -> bool:
        return bool(host) and host.lower() in self.allowed_domains


def check_image_url(url: str, where: str, policy: MediaPolicy) -> None:
    """Refuse, before any work, an image URL the server will not read: a remote URL whose host is not
    in ``--allowed-media-domains``, a file, or any other scheme."""
    if url.startswith("data:"):
        return
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        if not policy.allows(parts.hostname):
            hint = (
                "the server fetches no remote images: send a data:image/...;base64 URI (or start the server with "
                "--allowed-media-domains)"
                if not policy.allowed_domains
                else f"'{short(parts.hostname or '', 60)}' is not in --allowed-media-domains"
            )
            raise InvalidRequest(f"{where}: remote image URLs are refused: {hint}", param=where)
        return
    raise InvalidRequest(f"{where}: an image must be a data:image/...;base64 URI (files and other URLs are not read)", param=where)


async def image_values(urls: Sequence[tuple[str, str]], policy: MediaPolicy, max_image_bytes: int | None = None) -> list[str | bytes]:
    """The images (or videos) of ``(url, where)`` pairs as the media IO processors take them: data
    URIs as they are, allowed remote ones fetched as bytes, each at most ``max_image_bytes`` (the
    model's load setting; else ``POOLKIT_MAX_IMAGE_BYTES``), within the request's fetch limits
    (:class:`RequestFetches`).

    Raises:
        InvalidRequest: (status 400) a refused URL, too many remote images in the request, or a failed, too
            large or too slow fetch; 413 when the request's fetched images together pass
            ``POOLKIT_MAX_REQUEST_MEDIA_BYTES``.
    """
    for url, where in urls:
        check_image_url(url, where, policy)
    remote = [(i, url, where) for i, (url, where) in enumerate(urls) if not url.startswith("data:")]
    values: list[str | bytes] = [url for url, _ in urls]
    if remote:
        max_bytes = int(max_image_bytes or env_number("POOLKIT_MAX_IMAGE_BYTES", MAX_IMAGE_BYTES))
        timeout = env_number("POOLKIT_MEDIA_FETCH_TIMEOUT", FETCH_TIMEOUT)
        fetches = RequestFetches.current()
        fetches.admit([where for _, _, where in remote])
        jobs = [_Fetch(url, where, policy, max_bytes, timeout, fetches) for _, url, where in remote]
        tasks = [asyncio.ensure_future(fetches.run(job)) for job in jobs]
        try:
            fetched = await asyncio.gather(*tasks)
        finally:  # one failed (or the request was cancelled): the others stop now, not at their deadlines
            for task in tasks:
                task.cancel()
            for job in jobs:
                job.abort()
        for (i, _, _), data in zip(remote, fetched):
            values[i] = data
    return values


class RequestFetches:
    """One request's remote images: how many it fetches (``POOLKIT_MAX_REQUEST_MEDIA_FETCHES``), how
    many bytes they hold together (``POOLKIT_MAX_REQUEST_MEDIA_BYTES``), and the :data:`FETCHES_AT_ONCE`
    it runs at a time, each on a thread of its own, so a slow host holds its own requests' fetches
    and no pool other requests wait on.

    A request holds one, in its task's context (:meth:`current`): every ASGI server runs each request
    in a task of its own, so the conversations and inputs of one request share it.
    """

    def __init__(self, max_fetches: int, max_bytes: int) -> None:
        self.max_fetches = max_fetches
        self.max_bytes = max_bytes
        self.count = 0
        self.held = 0
        self._lock = threading.Lock()
        self._slots = asyncio.Semaphore(FETCHES_AT_ONCE)

    @classmethod
    def current(cls) -> "RequestFetches":
        """The running request's fetches (made on its first remote image, under the limits then set)."""
        fetches = _REQUEST_FETCHES.get()
        if fetches is None:
            fetches = cls(
                int(env_number("POOLKIT_MAX_REQUEST_MEDIA_FETCHES", MAX_REQUEST_MEDIA_FETCHES)),
                int(env_number("POOLKIT_MAX_REQUEST_MEDIA_BYTES", MAX_REQUEST_MEDIA_BYTES)),
            )
            _REQUEST_FETCHES.set(fetches)
        return fetches

    def admit(self, wheres: Sequence[str]) -> None:
        """Count more remote images (the fields they came from), refusing them, before any is
        fetched, past the request's limit."""
        if self.count + len(wheres) > self.max_fetches:
            where = wheres[max(0, self.max_fetches - self.count)]
            raise InvalidRequest(f"{where}: {self.count + len(wheres)} remote images in one request, more than the limit of "
                f"{self.max_fetches} (POOLKIT_MAX_REQUEST_MEDIA_FETCHES)", param=where,
            )
        self.count += len(wheres)

    def hold(self, size: int, where: str) -> None:
        """Count ``size`` more fetched bytes (from a fetch's thread), refusing past the request's limit."""
        with self._lock:
            self.held += size
            total = self.held
        self.check_room(0, where, total)

    def check_room(self, size: int, where: str, held: int | None = None) -> None:
        """Refuse an image of ``size`` bytes (its ``Content-Length``) that the request has no room
        for, before it is read."""
        if (self.held if held is None else held) + size > self.max_bytes:
            raise InvalidRequest(
                f"{where}: the request's remote images are more than {self.max_bytes} bytes together, the limit "
                "of one request (POOLKIT_MAX_REQUEST_MEDIA_BYTES)", param=where, status=413,
            )

    async def run(self, job: "_Fetch") -> bytes:
        """``job``'s bytes, fetched on a thread of its own within its deadline, at most
        :data:`FETCHES_AT_ONCE` of this request's at a time."""
        async with self._slots:
            loop = asyncio.get_running_loop()
            done: asyncio.Future = loop.create_future()
            thread = threading.Thread(target=job.run_into, args=(loop, done), name="poolkit-fetch", daemon=True)
            thread.start()
            try:
                return await asyncio.wait_for(done, job.timeout)
            except asyncio.TimeoutError:
                raise job.too_slow() from None
            finally:
                job.abort()


_REQUEST_FETCHES: contextvars.ContextVar[RequestFetches | None] = contextvars.ContextVar("poolkit_request_fetches", default=None)


@dataclasses.dataclass(eq=False)
class _Fetch:
    """One remote image fetched with ``urllib`` (its proxies, TLS and redirects) on a thread, under a
    deadline over all of it: connecting, the headers, every redirect and the body. Past the deadline
    (or when the request stops) :meth:`abort` shuts its sockets, which ends a read that a host
    trickling its headers would otherwise hold."""

    url: str
    where: str
    policy: MediaPolicy
    max_bytes: int
    timeout: float
    fetches: RequestFetches
    _sockets: list[socket.socket] = dataclasses.field(default_factory=list, init=False)
    _aborted: bool = dataclasses.field(default=False, init=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, init=False)

    def too_slow(self) -> InvalidRequest:
        return InvalidRequest(f"{self.where}: fetching the image took longer than {self.timeout:g} s", param=self.where)

    def track(self, sock: socket.socket) -> socket.socket:
        """Note a socket this fetch opened (shut at once if the fetch was aborted meanwhile)."""
        with self._lock:
            self._sockets.append(sock)
            aborted = self._aborted
        if aborted:
            _shut(sock)
        return sock

    def abort(self) -> None:
        """End the fetch: shut its sockets, so its thread's read returns now."""
        with self._lock:
            self._aborted = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def run_into(self, loop: asyncio.AbstractEventLoop, done: asyncio.Future) -> None:
        """The thread's work: :meth:`fetch`, its bytes or its error handed to ``done`` on ``loop``."""
        try:
            outcome: Any = self.fetch()
        except BaseException as exc:  # noqa: BLE001 - every failure goes to the waiting request
            outcome = exc
        with contextlib.suppress(RuntimeError):  # the loop closed (a server shutting down)
            loop.call_soon_threadsafe(_settle, done, outcome)

    def fetch(self) -> bytes:
        """The image's bytes, at most ``max_bytes``, within ``timeout`` seconds in all.

        Raises:
            InvalidRequest: (status 400) a redirect to a host not allowed or a scheme other than http(s), an
                HTTP error, a failure to connect, more than ``max_bytes`` bytes, or a fetch slower
                than ``timeout``; 413 past the request's bytes (:meth:`RequestFetches.hold`).
        """
        where, max_bytes = self.where, self.max_bytes
        deadline = time.monotonic() + self.timeout
        opener = urllib.request.build_opener(_Redirects(self.policy, where), _HTTPHandler(self), _HTTPSHandler(self))
        try:
            request = urllib.request.Request(self.url, headers={"User-Agent": "poolkit"})
            with opener.open(request, timeout=self.timeout) as response:
                length = response.headers.get("Content-Length")
                if length and length.isdigit():
                    if int(length) > max_bytes:
                        raise InvalidRequest(f"{where}: the image is {length} bytes, more than the limit of {max_bytes}", param=where)
                    self.fetches.check_room(int(length), where)
                chunks, size = [], 0
                while True:
                    if time.monotonic() > deadline or self._aborted:
                        raise self.too_slow()
                    chunk = response.read1(65536)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > max_bytes:
                        raise InvalidRequest(f"{where}: the image is more than the limit of {max_bytes} bytes", param=where)
                    self.fetches.hold(len(chunk), where)
                    chunks.append(chunk)
                return b"".join(chunks)
        except InvalidRequest:
            raise
        except urllib.error.HTTPError as exc:
            raise InvalidRequest(f"{where}: fetching the image failed: HTTP {exc.code}", param=where) from None
        except TimeoutError:
            raise self.too_slow() from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            if self._aborted or time.monotonic() > deadline:
                raise self.too_slow() from None
            reason = getattr(exc, "reason", None) or exc
            raise InvalidRequest(f"{where}: cannot fetch the image: {short(reason, 120)}", param=where) from None


def _settle(done: asyncio.Future, outcome: Any) -> None:
    if done.done():  # the request stopped waiting (its deadline, a failed sibling, a client gone)
        return
    if isinstance(outcome, BaseException):
        done.set_exception(outcome)
    else:
        done.set_result(outcome)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Tracked:
    """A connection whose sockets its fetch knows of, to shut them at its deadline: the TCP socket
    as soon as it exists (a TLS handshake or a proxy's tunnel may trickle too), then the socket the
    connection reads (TLS's own)."""

    def __init__(self, *args: Any, fetch: _Fetch, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fetch = fetch
        create = self._create_connection  # http.client's seam for opening the socket
        self._create_connection = lambda *a, **k: fetch.track(create(*a, **k))

    def connect(self) -> None:
        super().connect()
        self.fetch.track(self.sock)


class _TrackedHTTP(_Tracked, http.client.HTTPConnection):
    pass


class _TrackedHTTPS(_Tracked, http.client.HTTPSConnection):
    pass


class _TrackingHandler:
    """urllib's http(s) handler (its default TLS context), its connections :class:`_Tracked` for ``fetch``."""

    def __init__(self, fetch: _Fetch) -> None:
        super().__init__()
        self.fetch = fetch

    def do_open(
        self, http_class: type[http.client.HTTPConnection], req: urllib.request.Request, **kwargs: Any
    ) -> http.client.HTTPResponse:
        tracked = _TrackedHTTPS if issubclass(http_class, http.client.HTTPSConnection) else _TrackedHTTP
        return super().do_open(lambda host, **kw: tracked(host, fetch=self.fetch, **kw), req, **kwargs)


class _HTTPHandler(_TrackingHandler, urllib.request.HTTPHandler):
    pass


class _HTTPSHandler(_TrackingHandler, urllib.request.HTTPSHandler):
    pass


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to an allowed host over http(s), at most :data:`MAX_REDIRECTS` times."""

    max_redirections = MAX_REDIRECTS

    def __init__(self, policy: MediaPolicy, where: str) -> None:
        self.policy = policy
        self.where = where

    def http_error_302(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: http.client.HTTPMessage
    ) -> Any:
        location = headers.get("location") or headers.get("uri")
        scheme = urlsplit(urljoin(req.full_url, location)).scheme.lower() if location else "http"
        if scheme not in ("http", "https"):  # urllib would follow ftp: itself, or answer other schemes as an HTTP error
            fp.close()
            raise InvalidRequest(f"{self.where}: the image URL redirects to a '{short(scheme, 20)}:' URL; only http and https images "
                "are fetched", param=self.where,
            )
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: http.client.HTTPMessage, newurl: str
    ) -> urllib.request.Request | None:
        target = urlsplit(newurl)
        if not self.policy.allows(target.hostname):
            raise InvalidRequest(f"{self.where}: the image URL redirects to '{short(target.hostname or newurl, 60)}', which is not in "
                "--allowed-media-domains", param=self.where,
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)
