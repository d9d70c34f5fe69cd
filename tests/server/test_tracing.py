"""OpenTelemetry traces of the server's requests (issue 52, item 10): ``--otlp-traces-endpoint URL``.

A collector in this process (an OTLP/HTTP endpoint on 127.0.0.1 decoding what it receives with
opentelemetry-proto) takes the spans of real requests to a served model: one ``SERVER`` span per
inference request, joined to the caller's trace by its ``traceparent``, with its model, prompt
tokens, inputs and status code, and its phases (``queue``, ``tokenize``, ``run``, ``respond``) as
child spans. Off by default: nothing exported, OpenTelemetry's SDK never imported. A collector that
is down or never answers fails no request.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient  # noqa: E402
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_service  # noqa: E402 - the test extra has it
from served import connect, read_response, served  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import poolkit.entrypoints.server  # noqa: E402
from poolkit.entrypoints.cli import app as cli  # noqa: E402
from poolkit.entrypoints.server import ServerLimits, create_app, front  # noqa: E402
from poolkit.entrypoints.server import tracing as tracing_module  # noqa: E402

#: The caller's span: W3C's own example traceparent.
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
#: Seconds a test waits for spans it expects: a hang guard, not a bound on the work.
DEADLINE = 60.0
SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER


class Collector:
    """An OTLP/HTTP trace collector on 127.0.0.1: every span it receives, decoded, with its
    resource's attributes; and the paths it was sent to."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                request = trace_service.ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.take(self.path, request)
                out = trace_service.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/traces"

    def take(self, path: str, request: Any) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        {
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_id": span.parent_span_id.hex(),
                            "kind": span.kind,
                            "start": span.start_time_unix_nano,
                            "end": span.end_time_unix_nano,
                            "attributes": _attributes(span.attributes),
                            "status": span.status.code,
                            "resource": resource,
                            "scope": scope_spans.scope.name,
                        }
                    )
        with self.lock:
            self.paths.append(path)
            self.spans.extend(spans)

    def wait(self, ready: Callable[[list[dict]], Any], what: str) -> Any:
        """``ready(spans)`` once it is truthy; fails after :data:`DEADLINE` seconds (a hang guard)."""
        deadline = time.monotonic() + DEADLINE
        while True:
            with self.lock:
                spans = list(self.spans)
            got = ready(spans)
            if got:
                return got
            if time.monotonic() > deadline:
                pytest.fail(f"the collector did not receive {what}; it has {[s['name'] for s in spans]}")
            time.sleep(0.02)

    def request_span(self, route: str, predicate: Callable[[dict], bool] = lambda s: True) -> dict:
        """The first ``SERVER`` span of ``route`` that ``predicate`` accepts, once its four children
        could have arrived (the spans of one request are exported together)."""
        return self.wait(
            lambda spans: next((s for s in spans if s["name"] == f"POST {route}" and predicate(s)), None),
            f"a span of POST {route}",
        )

    def children(self, parent: dict) -> dict[str, list[dict]]:
        with self.lock:
            kids = [s for s in self.spans if s["parent_id"] == parent["span_id"]]
        out: dict[str, list[dict]] = {}
        for kid in kids:
            out.setdefault(kid["name"], []).append(kid)
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _attributes(pairs: Any) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        out[pair.key] = getattr(pair.value, kind) if kind else None
    return out


@pytest.fixture()
def collector(monkeypatch) -> Iterator[Collector]:
    # Spans leave every 50 ms instead of every 5 s (the SDK's own setting).
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        monkeypatch.delenv(name, raising=False)
    got = Collector()
    yield got
    got.close()


@pytest.fixture()
def tracings(monkeypatch) -> Iterator[list]:
    """Every :class:`~poolkit.entrypoints.server.tracing.Tracing` made during the test, shut down after it."""
    made: list = []
    real = tracing_module.Tracing.__init__

    def init(self, endpoint):
        real(self, endpoint)
        made.append(self)

    monkeypatch.setattr(tracing_module.Tracing, "__init__", init)
    yield made
    for one in made:
        one.shutdown()


def _traced_client(llm: Any, url: str, **options: Any) -> TestClient:
    return TestClient(create_app(llm, served_model_name="minilm", otlp_traces_endpoint=url, **options))


# -- a request's span and its phases --------------------------------------------------------------


def test_a_request_is_a_server_span_in_the_callers_trace_with_its_phases_as_children(minilm, collector, tracings):
    with _traced_client(minilm, collector.url) as client:
        r = client.post(
            "/v1/embeddings", json={"model": "minilm", "input": ["Hello, my name is", "A man is eating food."]},
            headers={"traceparent": TRACEPARENT, "X-Request-Id": "req-7"},
        )
        assert r.status_code == 200
        tokens = r.json()["usage"]["prompt_tokens"]
        span = collector.request_span("/v1/embeddings")
        kids = collector.wait(lambda _: (k := collector.children(span)) and len(k) == 4 and k, "the request's four phases")

    assert span["trace_id"] == TRACE_ID and span["parent_id"] == PARENT_ID  # joined the caller's trace
    assert span["kind"] == SERVER_KIND
    attributes = span["attributes"]
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == "/v1/embeddings"
    assert attributes["http.response.status_code"] == 200
    assert attributes["gen_ai.response.model"] == "minilm"
    assert attributes["gen_ai.usage.prompt_tokens"] == tokens > 0
    assert attributes["poolkit.inputs"] == 2
    assert attributes["poolkit.task"] == "embed"
    assert attributes["gen_ai.request.id"] == "req-7"
    assert attributes["gen_ai.latency.time_in_queue"] >= 0
    assert span["resource"]["service.name"] == "poolkit"
    assert span["scope"] == "poolkit"

    assert set(kids) == {"queue", "tokenize", "run", "respond"}
    queue, tokenize, run, respond = (kids[name][0] for name in ("queue", "tokenize", "run", "respond"))
    assert all(k["trace_id"] == TRACE_ID for k in (queue, tokenize, run, respond))
    # one after the other, within the request
    assert span["start"] <= queue["start"] <= queue["end"] == tokenize["start"] <= tokenize["end"]
    assert tokenize["end"] == run["start"] <= run["end"] == respond["start"] <= respond["end"] <= span["end"]
    assert run["attributes"] == {"poolkit.inputs": 2, "poolkit.batch.inputs": 2}


def test_without_a_traceparent_each_request_starts_its_own_trace(minilm, collector, tracings):
    with _traced_client(minilm, collector.url) as client:
        for headers in ({}, {}, {"traceparent": "00-not-a-valid-header"}, {"traceparent": f"00-{'0' * 32}-{PARENT_ID}-01"}):
            assert client.post("/v1/embeddings", json={"model": "minilm", "input": "hi"}, headers=headers).status_code == 200
        spans = collector.wait(lambda s: len([x for x in s if x["name"] == "POST /v1/embeddings"]) == 4 and s, "four request spans")
    roots = [s for s in spans if s["name"] == "POST /v1/embeddings"]
    assert all(s["parent_id"] == "" for s in roots)  # a malformed or all-zero traceparent is ignored, as W3C says
    assert len({s["trace_id"] for s in roots}) == 4
    assert TRACE_ID not in {s["trace_id"] for s in roots}


def test_a_scoring_call_runs_as_one_phase_and_counts_its_tokens(minilm, collector, tracings):
    with _traced_client(minilm, collector.url) as client:
        r = client.post("/score", json={"model": "minilm", "text_1": "a query", "text_2": ["one document", "another"]})
        assert r.status_code == 200
        span = collector.request_span("/score")
        kids = collector.wait(lambda _: (k := collector.children(span)) and len(k) == 4 and k, "the score's phases")
    assert set(kids) == {"queue", "tokenize", "run", "respond"}  # LLM.score's run noted where its tokenizing ended
    assert span["attributes"]["gen_ai.usage.prompt_tokens"] == r.json()["usage"]["prompt_tokens"] > 0
    assert span["attributes"]["poolkit.inputs"] == 2


def test_refused_requests_are_traced_with_their_status_and_no_work(minilm, collector, tracings):
    with _traced_client(minilm, collector.url, api_key="k") as client:
        auth = {"Authorization": "Bearer k"}
        assert client.post("/v1/embeddings", json={"model": "minilm", "input": ""}, headers=auth).status_code == 400
        assert client.post("/v1/embeddings", json={"model": "other", "input": "a"}, headers=auth).status_code == 404
        assert client.post("/v1/embeddings", json={"model": "minilm", "input": "a"}).status_code == 401
        assert client.get("/health").status_code == 200  # not an inference request: no span
        spans = collector.wait(lambda s: len(s) >= 3 and s, "three request spans")
        assert client.post("/v1/embeddings", json={"model": "minilm", "input": "a"}, headers=auth).status_code == 200
        collector.request_span("/v1/embeddings", lambda s: s["attributes"]["http.response.status_code"] == 200)
    statuses = sorted(s["attributes"]["http.response.status_code"] for s in spans)
    assert statuses == [400, 401, 404]
    assert all(s["name"] == "POST /v1/embeddings" and collector.children(s) == {} for s in spans)
    # refused before any work: no model answered (with one model served, the 404 named another)
    assert not [s for s in spans if "gen_ai.response.model" in s["attributes"]]
    assert not [s for s in collector.spans if "health" in s["name"]]


def test_requests_the_http_front_reads_itself_are_traced(minilm, collector, tracings, monkeypatch):
    """A real server: the front hands its plain requests to the tracing middleware, not past it."""
    taken = []
    real = front.read_plain_request

    def spy(data):
        got = real(data)
        taken.append(got is not None)
        return got

    monkeypatch.setattr(front, "read_plain_request", spy)
    body = json.dumps({"model": "minilm", "input": ["one", "two", "three"]}).encode()
    with served(minilm, served_model_name="minilm", otlp_traces_endpoint=collector.url,
                limits=ServerLimits(shutdown_timeout=2.0), log_level="warning") as port:
        with connect(port) as sock:
            sock.sendall(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ntraceparent: %s\r\n"
                b"content-length: %d\r\n\r\n%s" % (TRACEPARENT.encode(), len(body), body)
            )
            status, _, answer, _ = read_response(sock)
        assert status == "HTTP/1.1 200 OK" and taken == [True]
        span = collector.request_span("/v1/embeddings")
        kids = collector.wait(lambda _: (k := collector.children(span)) and len(k) == 4 and k, "the request's four phases")
    assert span["trace_id"] == TRACE_ID and span["parent_id"] == PARENT_ID
    assert span["attributes"]["poolkit.inputs"] == 3
    assert span["attributes"]["gen_ai.usage.prompt_tokens"] == json.loads(answer)["usage"]["prompt_tokens"]
    assert set(kids) == {"queue", "tokenize", "run", "respond"}


def test_the_pipelined_batcher_of_an_accelerator_stamps_the_same_phases(tiny_encoders, collector, tracings):
    """On an accelerator (the CPU stand-in for one) the batcher tokenizes the next merged batch on its
    worker thread while a device thread runs and answers the last: the phases come from both."""
    from poolkit import LLM
    from poolkit.runtime.standin import attach

    llm = LLM(str(tiny_encoders["bert"]))
    attach(llm, 1e7)
    with _traced_client(llm, collector.url) as client:
        assert client.app.state.poolkit.first.batcher.pipelined
        r = client.post("/v1/embeddings", json={"model": "minilm", "input": ["a b c", "d e"]}, headers={"traceparent": TRACEPARENT})
        assert r.status_code == 200
        span = collector.request_span("/v1/embeddings")
        kids = collector.wait(lambda _: (k := collector.children(span)) and len(k) == 4 and k, "the request's four phases")
    queue, tokenize, run, respond = (kids[name][0] for name in ("queue", "tokenize", "run", "respond"))
    assert span["trace_id"] == TRACE_ID and span["attributes"]["poolkit.inputs"] == 2
    assert span["start"] <= queue["start"] <= queue["end"] == tokenize["start"] <= tokenize["end"] == run["start"]
    assert run["start"] <= run["end"] == respond["start"] <= respond["end"] <= span["end"]


def test_a_caller_that_does_not_sample_its_trace_gets_no_spans(minilm, collector, tracings):
    """W3C's sampled flag: the default sampler follows the caller's decision."""
    unsampled = "1" * 32
    with _traced_client(minilm, collector.url) as client:
        for trace_id, flags in ((unsampled, "00"), (TRACE_ID, "01")):
            headers = {"traceparent": f"00-{trace_id}-{PARENT_ID}-{flags}"}
            assert client.post("/v1/embeddings", json={"model": "minilm", "input": "a"}, headers=headers).status_code == 200
        collector.request_span("/v1/embeddings", lambda s: s["trace_id"] == TRACE_ID)
    # exported in the order they ended: the unsampled request's spans would have come first
    assert {s["trace_id"] for s in collector.spans} == {TRACE_ID}


def test_a_service_name_from_the_environment_wins(minilm, collector, tracings, monkeypatch):
    monkeypatch.setenv("OTEL_SERVICE_NAME", "embedder-7")
    with _traced_client(minilm, collector.url) as client:
        assert client.post("/v1/embeddings", json={"model": "minilm", "input": "a"}).status_code == 200
        span = collector.request_span("/v1/embeddings")
    assert span["resource"]["service.name"] == "embedder-7"


# -- a collector that is down or hangs -------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def test_a_collector_that_is_down_or_never_answers_fails_no_request(minilm, tracings, monkeypatch):
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")  # seconds the exporter tries each batch
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections, never reads nor answers
    try:
        for url in (f"http://127.0.0.1:{_closed_port()}/v1/traces", f"http://127.0.0.1:{silent.getsockname()[1]}/v1/traces"):
            with _traced_client(minilm, url) as client:
                for i in range(6):
                    r = client.post("/v1/embeddings", json={"model": "minilm", "input": [f"text {i}", "more"]})
                    assert r.status_code == 200 and len(r.json()["data"]) == 2
            assert tracings[-1].endpoint == url
    finally:
        silent.close()


# -- off by default --------------------------------------------------------------------------------


def test_off_by_default_nothing_is_exported_and_the_sdk_is_never_imported(minilm_dir, collector, tmp_path):
    """A process serving requests without the option: no tracing state, no stamping batcher, no
    OpenTelemetry SDK or exporter imported; the collector, named in the environment the CLI reads,
    receives nothing, though any exporter would have sent what it held when the process ended."""
    script = tmp_path / "off.py"
    script.write_text(
        "import json, sys\n"
        "from fastapi.testclient import TestClient\n"
        "from poolkit import LLM\n"
        "from poolkit.entrypoints.server import create_app\n"
        f"app = create_app(LLM({str(minilm_dir)!r}), served_model_name='minilm')\n"
        "with TestClient(app) as client:\n"
        "    for path, body in (('/v1/embeddings', {'input': ['a', 'b']}), ('/score', {'text_1': 'a', 'text_2': 'b'})):\n"
        "        assert client.post(path, json=body, headers={'traceparent': %r}).status_code == 200\n"
        "    st = app.state.poolkit\n"
        "    print(json.dumps({'tracing': st.tracing is not None, 'metrics': type(st.first.metrics).__name__,\n"
        "        'sdk': sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter')))}))\n"
        % TRACEPARENT
    )
    env = dict(os.environ, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=collector.url, OTEL_BSP_SCHEDULE_DELAY="10")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"tracing": False, "metrics": "ModelMetrics", "sdk": []}
    assert collector.spans == [] and collector.paths == []


# -- the option ------------------------------------------------------------------------------------


@pytest.fixture()
def started(monkeypatch) -> list[dict]:
    """What ``poolkit serve`` would start the server with (nothing is started)."""
    seen: list[dict] = []
    monkeypatch.setattr(poolkit.entrypoints.server, "run", lambda llm, **kw: seen.append(kw))
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        monkeypatch.delenv(name, raising=False)
    return seen


@pytest.mark.parametrize(
    "args, env, endpoint",
    [
        ([], {}, None),
        (["--otlp-traces-endpoint", "http://collector:4318/v1/traces"], {}, "http://collector:4318/v1/traces"),
        (["--otlp-traces-endpoint", "https://collector:4318"], {}, "https://collector:4318/v1/traces"),
        (["--otlp-traces-endpoint", "http://collector:4318/"], {}, "http://collector:4318/v1/traces"),
        ([], {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://from-env:4318"}, "http://from-env:4318/v1/traces"),
        (["--otlp-traces-endpoint", "http://flag:4318/x"], {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://env:1"}, "http://flag:4318/x"),
    ],
)
def test_the_option_and_its_environment_variable(minilm_dir, started, args, env, endpoint):
    result = CliRunner().invoke(cli, ["serve", str(minilm_dir), "-q", *args], env=env)
    assert result.exit_code == 0, result.output
    assert started[0]["otlp_traces_endpoint"] == endpoint


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--otlp-traces-endpoint", "ftp://collector/v1/traces"], {}, "--otlp-traces-endpoint must be an http:// or https:// URL, got 'ftp://collector/v1/traces'"),
        (["--otlp-traces-endpoint", "collector:4318"], {}, "--otlp-traces-endpoint must be an http:// or https:// URL"),
        (["--otlp-traces-endpoint", "http://:4318/v1/traces"], {}, "--otlp-traces-endpoint must be an http:// or https:// URL"),
        (["--otlp-traces-endpoint", "http://collector:port/v1/traces"], {}, "--otlp-traces-endpoint must be an http:// or https:// URL"),
        ([], {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "not a url"}, "--otlp-traces-endpoint must be an http:// or https:// URL, got 'not a url'"),
        (["--otlp-traces-endpoint", "http://c:4318"], {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "thrift"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL must be one of http/protobuf, grpc, got 'thrift'"),
    ],
)
def test_a_bad_endpoint_is_refused_before_the_model_loads(tmp_path, started, args, env, message):
    missing = tmp_path / "no-such-model"  # loading it would fail: the option's error comes first
    result = CliRunner().invoke(cli, ["serve", str(missing), "-q", *args], env=env)
    assert result.exit_code == 1 and not started
    assert f"Error: {message}" in result.output, result.output
    assert "Traceback" not in result.output and str(missing) not in result.output


def test_without_opentelemetry_the_option_says_what_to_install(tmp_path, started, monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if the SDK were not installed
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "no-such-model"), "-q", "--otlp-traces-endpoint", "http://c:4318"])
    assert result.exit_code == 1 and not started
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert lines == ["Error: --otlp-traces-endpoint needs OpenTelemetry: pip install 'poolkit[otel]'"]
    with pytest.raises(poolkit.MissingDependency, match=r"pip install 'poolkit\[otel\]'"):
        create_app(lambda: pytest.fail("loaded"), otlp_traces_endpoint="http://c:4318")


def test_the_grpc_transport_needs_its_exporter(tmp_path, started, monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    result = CliRunner().invoke(
        cli, ["serve", str(tmp_path / "no-such-model"), "-q", "--otlp-traces-endpoint", "http://c:4317"],
        env={"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"},
    )
    assert result.exit_code == 1 and not started
    assert "Error: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=grpc needs OpenTelemetry's gRPC exporter: " \
        "pip install opentelemetry-exporter-otlp-proto-grpc" in result.output


def test_the_option_is_in_serve_help():
    out = CliRunner().invoke(cli, ["serve", "--help"], env={"COLUMNS": "300"}).stdout
    assert "--otlp-traces-endpoint" in out and "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in out
