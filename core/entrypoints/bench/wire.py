"""``poolkit bench-serve --wire``: what each wire format costs, one text a request, on one server.

The same server answers the same short texts over five wires, one after the other: TEI's gRPC
``Embed`` (``grpc-unary``), TEI's gRPC ``EmbedStream`` (``grpc-stream``: each client keeps one
stream open for its whole run and sends its next text once the last answer is in), and OpenAI's
``/v1/embeddings`` with ``encoding_format`` ``float`` (``http-json``), ``base64``
(``http-base64``) and vLLM's ``bytes`` (``vllm-bytes``: the raw float32 vector as the body, a
``metadata`` header). Each wire gets ``clients`` closed-loop clients, each on a connection of its
own (a keep-alive HTTP connection, or a gRPC channel), a warm-up that is not counted, then
``seconds`` measured. Every client decodes every answer into its vector and checks its width, as
a real client would, so the client's side of each format is paid too. A warm-up over
``http-json`` runs once before the first wire, so that the server's first batches are not
counted against that wire.

Per wire: requests, requests/s (and as a ratio to ``http-json``'s), p50/p99 latency, and the
server's CPU time per request: the change of its ``process_cpu_seconds_total`` (``/metrics``) over
the measured phase, divided by its requests. That is the CPU of the server's whole process (the
model's work included, the same on every wire), so the differences between wires are what their
formats cost; the clients run on the same machine and take CPU from it too.
"""

from __future__ import annotations

import base64
import http.client
import json
import queue
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ...contracts.errors import InvalidRequest, PoolkitError
from .corpus import make_corpus
from .load import _connection, _exchange, server_metric

#: The wires, in the order they run and are reported.
WIRES = ("grpc-unary", "grpc-stream", "http-json", "http-base64", "vllm-bytes")
#: The ``encoding_format`` each HTTP wire asks for.
_ENCODINGS = {"http-json": "float", "http-base64": "base64", "vllm-bytes": "bytes"}
#: The baseline of the ratios.
BASELINE = "http-json"


class _Client(Protocol):
    """One client's connection: ``send`` one text and answer its vector; ``close`` it."""

    def send(self, text: str) -> Sequence[float]: ...

    def close(self) -> None: ...


@dataclass
class WireResult:
    """What one wire measured; ``first_error`` keeps the first failure whole, to be reproduced."""

    wire: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    server_cpu_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        n = len(self.latencies)
        q = statistics.quantiles(self.latencies, n=100) if n >= 2 else [float("nan")] * 99
        cpu = None if self.server_cpu_s is None or not n else round(self.server_cpu_s / n * 1000, 3)
        return {
            "wire": self.wire, "requests": n, "errors": self.errors,
            "requests_per_s": round(n / self.seconds, 2) if self.seconds else 0.0,
            "p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2),
            "server_cpu_ms_per_request": cpu, "first_error": self.first_error,
        }


class _Http:
    """One keep-alive connection posting single texts to ``/v1/embeddings`` in one encoding."""

    def __init__(self, url: str, model: str, encoding: str, headers: dict[str, str]) -> None:
        self.url, self.model, self.encoding = url, model, encoding
        self.headers = {**headers, "content-type": "application/json"}
        self.conn = _connection(url, 60)

    def send(self, text: str) -> Sequence[float]:
        body = json.dumps({"model": self.model, "input": text, "encoding_format": self.encoding})
        try:
            self.conn.request("POST", "/v1/embeddings", body=body, headers=self.headers)
            response = self.conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = _connection(self.url, 60)
            raise
        if response.status != 200:
            raise PoolkitError(f"{response.status}: {raw[:300].decode(errors='replace')}")
        if self.encoding == "bytes":
            meta = json.loads(response.getheader("metadata") or "{}")["data"][0]
            return np.frombuffer(raw, dtype=np.float32, count=(meta["end"] - meta["start"]) // 4, offset=meta["start"])
        embedding = json.loads(raw)["data"][0]["embedding"]
        if self.encoding == "base64":
            return np.frombuffer(base64.b64decode(embedding), dtype=np.float32)
        return embedding

    def close(self) -> None:
        self.conn.close()


class _Grpc:
    """One gRPC channel calling TEI's ``Embed``, or one ``EmbedStream`` kept open on it (``stream``)."""

    def __init__(self, target: str, metadata: list[tuple[str, str]], stream: bool) -> None:
        import grpc

        from ..grpc.stubs import tei

        self.pb, services = tei()
        self.channel = grpc.insecure_channel(target)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.stub, self.metadata = services.EmbedStub(self.channel), metadata
        self.requests: queue.Queue | None = None
        if stream:
            # The stream reads its requests from this queue, so the next text goes out only when
            # the client puts it there: after the last answer has come back.
            self.requests = queue.Queue()
            self.answers = self.stub.EmbedStream(iter(self.requests.get, None), metadata=metadata)

    def send(self, text: str) -> Sequence[float]:
        request = self.pb.EmbedRequest(inputs=text)
        if self.requests is None:
            return self.stub.Embed(request, metadata=self.metadata).embeddings
        self.requests.put(request)
        return next(self.answers).embeddings

    def close(self) -> None:
        import grpc

        if self.requests is not None:
            self.requests.put(None)  # ends the request stream: the server then ends its answers
            try:
                for _ in self.answers:
                    pass
            except grpc.RpcError:  # the stream had already failed (counted where it did)
                pass
        self.channel.close()


def _drive(make: Callable[[], _Client], texts: list[str], clients: int, seconds: float, width: int,
           result: WireResult | None) -> float:
    """``clients`` closed-loop clients for ``seconds``, each with its own ``make()``; their latencies
    and failures go to ``result`` (``None``: a warm-up). Answers when the last client finished."""
    lock = threading.Lock()
    made = [make() for _ in range(clients)]  # connected before the clock starts
    until = time.monotonic() + seconds

    def client(k: int) -> None:
        sender, place = made[k], k
        while time.monotonic() < until:
            text = texts[place % len(texts)]
            place += clients
            t0 = time.monotonic()
            try:
                vector = sender.send(text)
                if len(vector) != width:
                    raise PoolkitError(f"an answer of {len(vector)} numbers, not the model's {width}")
            except Exception as exc:  # noqa: BLE001 - every failure is counted and the first kept
                if result is not None:
                    with lock:
                        result.errors += 1
                        result.first_error = result.first_error or f"{type(exc).__name__}: {str(exc)[:300]}"
                sender.close()
                sender = make()  # a broken stream or connection is not used again
                continue
            if result is not None:
                latency = time.monotonic() - t0
                with lock:
                    result.latencies.append(latency)
        sender.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - began


def _probe(url: str, headers: dict[str, str]) -> tuple[str, int]:
    """The server's first model (``GET /v1/models``) and its embeddings' width (one request)."""
    status, listed = _exchange(url, "GET", "/v1/models", headers=headers)
    if status != 200 or not isinstance(listed, dict) or not listed.get("data"):
        raise PoolkitError(f"GET /v1/models answered {status}: --wire needs the server's model")
    model = listed["data"][0]["id"]
    status, answer = _exchange(url, "POST", "/v1/embeddings", {"model": model, "input": "Hello, world."}, headers)
    if status != 200 or not isinstance(answer, dict):
        raise PoolkitError(f"POST /v1/embeddings answered {status} for model '{model}': {str(answer)[:300]}")
    return model, len(answer["data"][0]["embedding"])


def run_wires(url: str, grpc_target: str, *, clients: int, seconds: float, warmup: float,
              api_key: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Every wire of :data:`WIRES` against the server at ``url`` (HTTP) and ``grpc_target``
    (``host:port`` of its ``--grpc-port``), one after the other; see the module docstring."""
    if clients < 1 or seconds <= 0 or warmup < 0:
        raise InvalidRequest("--wire needs at least one client, a duration above 0 and a warm-up of at least 0")
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    model, width = _probe(url, headers)
    metadata = [("x-model", model), *headers.items()]
    # Short single texts (about 10 to 50 tokens), the same for every wire.
    texts = make_corpus(1024, 14, 0.4, seed, max_words=30)
    makers: dict[str, Callable[[], _Client]] = {
        "grpc-unary": lambda: _Grpc(grpc_target, metadata, stream=False),
        "grpc-stream": lambda: _Grpc(grpc_target, metadata, stream=True),
        **{wire: (lambda e=encoding: _Http(url, model, e, headers)) for wire, encoding in _ENCODINGS.items()},
    }
    rows = []
    if warmup > 0:
        # The server's first minutes of a model cost more (its first batch shapes): they are paid
        # before the first wire, which would otherwise carry them alone.
        _drive(makers[BASELINE], texts, clients, warmup, width, None)
    for wire in WIRES:
        result = WireResult(wire)
        if warmup > 0:
            _drive(makers[wire], texts, clients, warmup, width, None)
        before = server_metric(url, "process_cpu_seconds_total", headers)
        result.seconds = _drive(makers[wire], texts, clients, seconds, width, result)
        after = server_metric(url, "process_cpu_seconds_total", headers)
        result.server_cpu_s = None if before is None or after is None else after - before
        rows.append(result.as_dict())
    base = next(r["requests_per_s"] for r in rows if r["wire"] == BASELINE)
    for row in rows:
        row["vs_http_json"] = round(row["requests_per_s"] / base, 2) if base else None
    return {"url": url, "grpc_target": grpc_target, "model": model, "dimensions": width, "clients": clients,
            "seconds_per_wire": seconds, "warmup_per_wire": warmup, "wires": rows}


def format_wires(report: dict[str, Any]) -> str:
    """The report as a table: one row per wire."""
    lines = [
        f"{report['url']} (gRPC {report['grpc_target']}): model {report['model']} ({report['dimensions']} dimensions), "
        f"one text a request, {report['clients']} clients, {report['seconds_per_wire']} s per wire "
        f"after a {report['warmup_per_wire']} s warm-up",
        f"  {'wire':<12} {'requests':>9} {'req/s':>9} {'vs json':>8} {'p50 ms':>8} {'p99 ms':>8} {'server CPU ms/req':>18} {'errors':>7}",
    ]
    for r in report["wires"]:
        cpu = "-" if r["server_cpu_ms_per_request"] is None else f"{r['server_cpu_ms_per_request']:.3f}"
        ratio = "-" if r["vs_http_json"] is None else f"{r['vs_http_json']:.2f}"
        lines.append(f"  {r['wire']:<12} {r['requests']:>9} {r['requests_per_s']:>9.1f} {ratio:>8} {r['p50_ms']:>8.2f} "
                     f"{r['p99_ms']:>8.2f} {cpu:>18} {r['errors']:>7}")
    for r in report["wires"]:
        if r["first_error"]:
            lines.append(f"  first error of {r['wire']}: {r['first_error']}")
    return "\n".join(lines)
