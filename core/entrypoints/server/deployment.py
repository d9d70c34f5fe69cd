"""What the server takes from where it is deployed: CORS for browser clients, a path prefix behind a
proxy, and TLS; vLLM's ``--allowed-origins``/``--allowed-methods``/``--allowed-headers``/
``--allow-credentials``, ``--root-path`` and ``--ssl-keyfile``/``--ssl-certfile``/``--ssl-ca-certs``/
``--ssl-cert-reqs``, each checked before any model loads."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ...contracts.errors import InvalidRequest


def listed(values: Sequence[str] | None, option: str) -> tuple[str, ...]:
    """The items of a list option given as vLLM gives it (one JSON list, ``'["https://a.com"]'``),
    comma-separated, or repeated.

    Raises:
        InvalidRequest: a JSON list that is not a list of strings.
    """
    items: list[str] = []
    for value in values or ():
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except ValueError as exc:
                raise InvalidRequest(f"{option} takes a JSON list of strings or comma-separated values: {exc}") from None
            if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
                raise InvalidRequest(f"{option} takes a JSON list of strings, got {text}")
            items += parsed
        else:
            items += [part.strip() for part in text.split(",") if part.strip()]
    return tuple(items)


@dataclass(frozen=True)
class Cors:
    """Cross-origin requests from browsers (Starlette's ``CORSMiddleware``, as vLLM installs it).

    Off unless origins are given (vLLM allows every origin by default; a server that answers
    browsers anywhere is a choice to make, not a default). A preflight is answered before the API
    key is asked for, and the server's errors carry the headers too, so a browser can read them;
    an origin not allowed gets no CORS headers.

    Attributes:
        origins: the allowed origins (``"*"``: any).
        methods: the allowed methods (default: any).
        headers: the allowed request headers (default: any).
        credentials: whether cookies and ``Authorization`` may be sent cross-origin.
    """

    origins: tuple[str, ...]
    methods: tuple[str, ...] = ("*",)
    headers: tuple[str, ...] = ("*",)
    credentials: bool = False

    @classmethod
    def of(
        cls, origins: Sequence[str] | None, methods: Sequence[str] | None = None, headers: Sequence[str] | None = None,
        credentials: bool = False,
    ) -> "Cors | None":
        """The policy of the command-line options (``None``: no origin given, no CORS).

        Raises:
            InvalidRequest: a malformed list, an origin that is not ``*`` or ``scheme://host[:port]``,
                methods, headers or credentials without origins, or credentials for any origin
                (every site could then call the server with its visitors' credentials).
        """
        allowed = listed(origins, "--allowed-origins")
        methods_given, headers_given = listed(methods, "--allowed-methods"), listed(headers, "--allowed-headers")
        if not allowed:
            if methods_given or headers_given or credentials:
                raise InvalidRequest("--allowed-methods, --allowed-headers and --allow-credentials need --allowed-origins")
            return None
        for origin in allowed:
            scheme, sep, host = origin.partition("://")
            if origin != "*" and (not sep or scheme not in ("http", "https") or not host or "/" in host):
                raise InvalidRequest(f"--allowed-origins takes '*' or origins such as https://app.example.com, got '{origin}'")
        if credentials and "*" in allowed:
            raise InvalidRequest(
                "--allow-credentials with --allowed-origins '*' would let any site call the server with its visitors' "
                "credentials; name the origins"
            )
        return cls(allowed, methods_given or ("*",), headers_given or ("*",), credentials)

    def install(self, app: Any) -> None:
        """Wrap ``app`` (outermost, so preflights never reach the key check) in the CORS middleware."""
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(self.origins), allow_methods=list(self.methods),
            allow_headers=list(self.headers), allow_credentials=self.credentials,
        )


def root_path_of(value: str | None) -> str:
    """``--root-path`` as the server keeps it: ``""`` for none, else ``/prefix`` without a trailing slash.

    Raises:
        InvalidRequest: a prefix that does not start with ``/`` or holds spaces, ``?`` or ``#``.
    """
    if not value or value == "/":
        return ""
    if not value.startswith("/") or any(c in value for c in " ?#\t\n"):
        raise InvalidRequest(f"--root-path takes a path prefix such as /embeddings, got '{value}'")
    return value.rstrip("/")


class PathPrefix:
    """Requests under ``--root-path`` reach their routes whether the proxy in front strips the prefix
    (``/v1/embeddings``) or keeps it (``/api/v1/embeddings``), Starlette's rule for ``root_path``;
    the path is the route's from here on, so the key check, the limits, the fast lane and the
    traces see the route they know. The OpenAPI document and ``/docs`` carry the prefix."""

    def __init__(self, app: Any, root_path: str) -> None:
        self.app = app
        self.root_path = root_path

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            path, root = scope["path"], self.root_path
            if path == root or path.startswith(root + "/"):
                scope = dict(scope, path=path[len(root):] or "/")
            scope["root_path"] = root
        await self.app(scope, receive, send)


#: ``--ssl-cert-reqs``: Python's ``ssl.VerifyMode`` values, as vLLM and uvicorn take them.
CERT_REQS = {0: "none", 1: "optional", 2: "required"}


@dataclass(frozen=True)
class Tls:
    """HTTPS (and TLS on the gRPC port): the server's certificate chain and key, and optionally the
    certificate authorities its clients' certificates must chain to.

    Attributes:
        certfile: the certificate chain (PEM).
        keyfile: its private key (PEM; ``None``: in ``certfile``).
        ca_certs: the authorities that sign client certificates (PEM).
        cert_reqs: 0 no client certificate asked, 1 optional, 2 required (``ssl.CERT_*``).
    """

    certfile: str
    keyfile: str | None = None
    ca_certs: str | None = None
    cert_reqs: int = 0

    @classmethod
    def of(cls, keyfile: str | None, certfile: str | None, ca_certs: str | None = None, cert_reqs: int = 0) -> "Tls | None":
        """The TLS of the command-line options, its files read and checked now (``None``: plain HTTP).

        Raises:
            InvalidRequest: a file missing or unreadable, a key that does not fit the certificate,
                an unknown ``--ssl-cert-reqs``, client certificates asked for without authorities,
                or the authorities or requirements without a certificate.
        """
        if cert_reqs not in CERT_REQS:
            raise InvalidRequest(f"--ssl-cert-reqs takes 0 (none), 1 (optional) or 2 (required), got {cert_reqs}")
        if certfile is None:
            if keyfile is not None or ca_certs is not None or cert_reqs:
                raise InvalidRequest("--ssl-keyfile, --ssl-ca-certs and --ssl-cert-reqs need --ssl-certfile")
            return None
        for option, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile), ("--ssl-ca-certs", ca_certs)):
            if path is not None and not Path(path).is_file():
                raise InvalidRequest(f"{option} {path}: no such file")
        if cert_reqs and ca_certs is None:
            raise InvalidRequest(f"--ssl-cert-reqs {cert_reqs} ({CERT_REQS[cert_reqs]} client certificates) needs --ssl-ca-certs")
        tls = cls(certfile, keyfile, ca_certs, cert_reqs)
        tls.context()
        return tls

    def context(self) -> ssl.SSLContext:
        """The server's SSL context (what uvicorn builds from the same files).

        Raises:
            InvalidRequest: a file that is not PEM, or a key that does not fit the certificate.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidRequest(
                f"--ssl-certfile {self.certfile} / --ssl-keyfile {self.keyfile or self.certfile}: not a PEM certificate chain "
                f"and its private key ({_reason(exc)})"
            ) from None
        if self.ca_certs is not None:
            try:
                context.load_verify_locations(self.ca_certs)
            except (OSError, ssl.SSLError) as exc:
                raise InvalidRequest(f"--ssl-ca-certs {self.ca_certs}: not PEM certificates ({_reason(exc)})") from None
            context.verify_mode = ssl.VerifyMode(self.cert_reqs)
        return context

    def uvicorn(self) -> dict[str, Any]:
        """uvicorn's settings for these files."""
        return dict(ssl_certfile=self.certfile, ssl_keyfile=self.keyfile, ssl_ca_certs=self.ca_certs, ssl_cert_reqs=self.cert_reqs)

    def grpc_credentials(self) -> Any:
        """gRPC's server credentials for these files (client certificates required at 2 only: gRPC
        asks for them or not)."""
        import grpc

        key = Path(self.keyfile or self.certfile).read_bytes()
        chain = Path(self.certfile).read_bytes()
        roots = Path(self.ca_certs).read_bytes() if self.ca_certs is not None else None
        return grpc.ssl_server_credentials([(key, chain)], root_certificates=roots, require_client_auth=self.cert_reqs == 2)


def _reason(exc: BaseException) -> str:
    """An SSL error in one line (OpenSSL's reason, not its tuple)."""
    reason = getattr(exc, "reason", None) or (exc.args[-1] if exc.args else exc)
    return str(reason).strip()
