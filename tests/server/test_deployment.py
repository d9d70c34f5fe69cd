"""The server as it is deployed, over real HTTP(S) on a socket: CORS for browsers (vLLM's
``--allowed-origins``/``--allowed-methods``/``--allowed-headers``/``--allow-credentials``), a path
prefix behind a proxy (``--root-path``), TLS (``--ssl-*``, HTTPS and gRPC), and the warm-up before
``/health`` says ready. The command line's side of the same settings (environment variables, the
``--config`` file, the errors) is in ``tests/cli/test_serve_sources.py``."""

from __future__ import annotations

import http.client
import http.server
import re
import ssl
import threading

import httpx
import pytest
from fastapi.testclient import TestClient
from certificates import certificates
from served import served

from poolkit.contracts.errors import InvalidRequest
from poolkit.entrypoints.server import ServerLimits, create_app
from poolkit.entrypoints.server.deployment import Cors, Tls, listed, root_path_of
from poolkit.entrypoints.serving import warmup as warmup_module

ORIGIN = "https://app.example.com"
QUICK = dict(served_model_name="minilm", limits=ServerLimits(shutdown_timeout=2.0), log_level="warning")


def _embed(base: str, path: str = "/v1/embeddings", **kwargs) -> httpx.Response:
    return httpx.post(f"{base}{path}", json={"model": "minilm", "input": "hello"}, timeout=30, **kwargs)


# -- CORS ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cors_port(minilm):
    with served(minilm, api_key="k", cors=Cors.of([ORIGIN], None, None, True), **QUICK) as port:
        yield port


def test_a_preflight_from_an_allowed_origin_is_answered_without_the_key(cors_port):
    r = httpx.options(
        f"http://127.0.0.1:{cors_port}/v1/embeddings",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    assert r.headers["access-control-allow-credentials"] == "true"


def test_answers_and_refusals_carry_the_headers_a_browser_needs(cors_port):
    base = f"http://127.0.0.1:{cors_port}"
    ok = _embed(base, headers={"Origin": ORIGIN, "Authorization": "Bearer k"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN
    refused = _embed(base, headers={"Origin": ORIGIN})  # no key: the 401 is readable by the page
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN


def test_an_origin_not_allowed_gets_no_cors_headers(cors_port):
    base = f"http://127.0.0.1:{cors_port}"
    other = "https://evil.example.net"
    r = _embed(base, headers={"Origin": other, "Authorization": "Bearer k"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    pre = httpx.options(f"{base}/v1/embeddings", headers={"Origin": other, "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 400 and "access-control-allow-origin" not in pre.headers


def test_without_allowed_origins_there_is_no_cors(minilm):
    with TestClient(create_app(minilm, served_model_name="minilm")) as client:
        r = client.post("/v1/embeddings", json={"model": "minilm", "input": "hi"}, headers={"Origin": ORIGIN})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        pre = client.options("/v1/embeddings", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in pre.headers


@pytest.mark.parametrize(
    "given, expected",
    [([f'["{ORIGIN}", "http://localhost:3000"]'], (ORIGIN, "http://localhost:3000")), ([f"{ORIGIN},*"], (ORIGIN, "*")), (["*"], ("*",))],
)
def test_origins_are_taken_as_vllm_gives_them_or_comma_separated(given, expected):
    assert listed(given, "--allowed-origins") == expected
    assert Cors.of(given).origins == expected


@pytest.mark.parametrize(
    "origins, methods, credentials, message",
    [
        (["app.example.com"], None, False, "--allowed-origins takes '*' or origins such as"),
        (["ftp://files.example.com"], None, False, "--allowed-origins takes '*' or origins such as"),
        (['["https://a.com", 3]'], None, False, "--allowed-origins takes a JSON list of strings"),
        (["[not json"], None, False, "--allowed-origins takes a JSON list of strings or comma-separated values"),
        (None, ["GET"], False, "need --allowed-origins"),
        (None, None, True, "need --allowed-origins"),
        (["*"], None, True, "--allow-credentials with --allowed-origins '*' would let any site call"),
    ],
)
def test_bad_cors_settings_are_refused_in_one_line(origins, methods, credentials, message):
    with pytest.raises(InvalidRequest, match=re.escape(message)) as caught:
        Cors.of(origins, methods, None, credentials)
    assert "\n" not in str(caught.value)


# -- a path prefix behind a proxy ---------------------------------------------------------------------


class _StrippingProxy(http.server.ThreadingHTTPServer):
    """A reverse proxy serving the upstream under ``prefix`` and stripping it, as a path-based
    ingress does (``/api/v1/embeddings`` -> ``/v1/embeddings``)."""

    def __init__(self, upstream: int, prefix: str) -> None:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                if not self.path.startswith(prefix + "/"):
                    self.send_error(404)
                    return
                body = self.rfile.read(int(self.headers.get("content-length", 0) or 0))
                upstream_conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream_conn.request(self.command, self.path[len(prefix):], body=body or None, headers=headers)
                answer = upstream_conn.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for k, v in answer.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _forward

            def log_message(self, *args) -> None:
                pass

        self.upstream = upstream
        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture(scope="module")
def prefixed(minilm):
    with served(minilm, api_key="k", root_path="/api", **QUICK) as port:
        proxy = _StrippingProxy(port, "/api")
        thread = threading.Thread(target=proxy.serve_forever, daemon=True)
        thread.start()
        try:
            yield port, proxy.server_address[1]
        finally:
            proxy.shutdown()


def test_a_request_through_a_proxy_that_strips_the_prefix(prefixed):
    _, proxy = prefixed
    base = f"http://127.0.0.1:{proxy}/api"
    r = _embed(base, headers={"Authorization": "Bearer k"})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"][0]["embedding"]) == 384
    assert httpx.get(f"{base}/health").status_code == 200
    assert _embed(base).status_code == 401  # the key is asked for under the prefix too
    spec = httpx.get(f"{base}/openapi.json").json()
    assert spec["servers"][0]["url"] == "/api"  # so that /docs calls the API through the proxy
    assert "/v1/embeddings" in spec["paths"]


def test_a_request_that_keeps_the_prefix_reaches_the_same_route(prefixed):
    port, _ = prefixed
    base = f"http://127.0.0.1:{port}"
    for path in ("/api/v1/embeddings", "/v1/embeddings"):
        r = _embed(base, path, headers={"Authorization": "Bearer k"})
        assert r.status_code == 200, (path, r.text)
    assert _embed(base, "/api/v1/embeddings").status_code == 401
    assert httpx.get(f"{base}/api/health").status_code == 200
    assert httpx.get(f"{base}/apiv1/embeddings").status_code == 404  # a prefix is a whole path segment


@pytest.mark.parametrize("value, kept", [(None, ""), ("/", ""), ("/api", "/api"), ("/api/v2/", "/api/v2")])
def test_the_root_path_is_kept_without_a_trailing_slash(value, kept):
    assert root_path_of(value) == kept


@pytest.mark.parametrize("value", ["api", "/a b", "/api?x=1"])
def test_a_root_path_that_is_not_a_path_prefix_is_refused(value):
    with pytest.raises(InvalidRequest, match="--root-path takes a path prefix"):
        root_path_of(value)


# -- TLS ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pem(tmp_path_factory):
    return certificates(tmp_path_factory.mktemp("tls"))


def test_https_with_a_certificate_made_here(minilm, pem):
    tls = Tls.of(str(pem["server.key"]), str(pem["server.crt"]))
    with served(minilm, tls=tls, **QUICK) as port:
        base = f"https://127.0.0.1:{port}"
        r = _embed(base, verify=ssl.create_default_context(cafile=str(pem["ca.crt"])))
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384
        with pytest.raises(httpx.HTTPError):  # a client that does not trust it
            _embed(base, verify=True)
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port
            _embed(f"http://127.0.0.1:{port}")


def test_client_certificates_when_required(minilm, pem):
    tls = Tls.of(str(pem["server.key"]), str(pem["server.crt"]), str(pem["ca.crt"]), 2)
    with served(minilm, tls=tls, **QUICK) as port:
        base = f"https://127.0.0.1:{port}"
        context = ssl.create_default_context(cafile=str(pem["ca.crt"]))
        with pytest.raises(httpx.HTTPError):  # no client certificate
            _embed(base, verify=context)
        context.load_cert_chain(str(pem["client.crt"]), str(pem["client.key"]))
        assert _embed(base, verify=context).status_code == 200


def test_grpc_speaks_tls_with_the_same_files(minilm, pem):
    grpc = pytest.importorskip("grpc")
    health = pytest.importorskip("grpc_health.v1.health_pb2")
    health_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")
    tls = Tls.of(str(pem["server.key"]), str(pem["server.crt"]))
    app = create_app(minilm, served_model_name="minilm", grpc_port=0, tls=tls)
    with TestClient(app):
        address = f"127.0.0.1:{app.state.poolkit.grpc_port}"
        credentials = grpc.ssl_channel_credentials(root_certificates=pem["ca.crt"].read_bytes())
        with grpc.secure_channel(address, credentials) as channel:
            answer = health_grpc.HealthStub(channel).Check(health.HealthCheckRequest(service=""), timeout=10)
            assert answer.status == health.HealthCheckResponse.SERVING
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError):
            health_grpc.HealthStub(channel).Check(health.HealthCheckRequest(service=""), timeout=5)


def test_bad_tls_files_are_refused_before_anything_loads(pem, tmp_path):
    (tmp_path / "not.pem").write_text("hello\n")
    cases = [
        ((str(pem["server.key"]), str(tmp_path / "missing.crt")), f"--ssl-certfile {tmp_path / 'missing.crt'}: no such file"),
        ((str(tmp_path / "missing.key"), str(pem["server.crt"])), "--ssl-keyfile .*: no such file"),
        ((str(pem["client.key"]), str(pem["server.crt"])), "not a PEM certificate chain and its private key"),
        ((None, str(tmp_path / "not.pem")), "not a PEM certificate chain and its private key"),
        ((str(pem["server.key"]), str(pem["server.crt"]), str(tmp_path / "not.pem")), "--ssl-ca-certs .*: not PEM certificates"),
        ((str(pem["server.key"]), str(pem["server.crt"]), None, 2), "--ssl-cert-reqs 2 .* needs --ssl-ca-certs"),
        ((str(pem["server.key"]), str(pem["server.crt"]), None, 5), "--ssl-cert-reqs takes 0"),
        ((str(pem["server.key"]), None), "need --ssl-certfile"),
    ]
    for args, message in cases:
        with pytest.raises(InvalidRequest, match=message) as caught:
            Tls.of(*args)
        assert "\n" not in str(caught.value)


# -- warm-up ------------------------------------------------------------------------------------------


def test_warm_up_runs_the_largest_batch_of_the_longest_inputs(minilm):
    done = warmup_module.warm_up(minilm)
    longest = min(minilm.model_config.max_model_len, minilm.engine.max_batch_tokens)
    assert done.task == "embed"
    assert done.inputs == max(1, minilm.engine.max_batch_tokens // longest)
    assert done.tokens == done.inputs * longest  # each input at the model's limit
    assert done.peak_bytes > 0 and done.seconds > 0
    line = done.line("minilm")
    assert f"{done.inputs} inputs of {longest} tokens" in line and "tokens/s" in line and "MiB" in line


def test_health_says_503_until_the_warm_up_is_done(minilm, monkeypatch, caplog):
    started, release = threading.Event(), threading.Event()
    real = warmup_module.warm_up

    def held(llm):
        started.set()
        assert release.wait(60)
        return real(llm)

    monkeypatch.setattr("poolkit.entrypoints.server.app.warm_up", held)
    app = create_app(lambda: minilm, served_model_name="minilm", warmup=True)
    with caplog.at_level("INFO", logger="poolkit.entrypoints.server"), TestClient(app) as client:
        assert started.wait(60)
        assert client.get("/health").status_code == 503
        assert client.post("/v1/embeddings", json={"model": "minilm", "input": "hi"}).status_code == 503
        release.set()
        for _ in range(600):
            if client.get("/health").status_code == 200:
                break
            threading.Event().wait(0.1)
        assert client.get("/health").status_code == 200
        assert client.post("/v1/embeddings", json={"model": "minilm", "input": "hi"}).status_code == 200
    assert any("warm-up of 'minilm' (embed)" in r.getMessage() and "tokens/s" in r.getMessage() for r in caplog.records)


def test_a_warm_up_that_fails_stops_the_server_as_a_failed_load_does(minilm, monkeypatch):
    def fails(llm):
        raise InvalidRequest("the warm-up batch does not fit")

    monkeypatch.setattr("poolkit.entrypoints.server.app.warm_up", fails)
    app = create_app(lambda: minilm, served_model_name="minilm", warmup=True)
    with TestClient(app) as client:
        for _ in range(600):
            if app.state.poolkit.load_error is not None:
                break
            threading.Event().wait(0.1)
        assert client.get("/health").status_code == 503
    assert "does not fit" in str(app.state.poolkit.load_error)
