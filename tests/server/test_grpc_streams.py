"""TEI's gRPC streams, deadlines, cancellation and shutdown against ``poolkit serve --grpc-port``,
with a client generated from TEI's proto (test_grpc.py's): every stream answers each message as
its unary RPC does, in order, also with several streams at once; a bad message ends its stream
after the answers before it; a call past its deadline or cancelled drops its queued work; SIGTERM
lets the calls in flight finish and the process exit 0."""

from __future__ import annotations

import asyncio
import queue
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
grpc = pytest.importorskip("grpc")
pytest.importorskip("grpc_tools.protoc")

from fastapi.testclient import TestClient  # noqa: E402
from test_grpc import DOCS, QUERY, TEXTS, on, refused, tei  # noqa: E402,F401 - tei: the generated client (a fixture)
from test_server import _free_port, start_server, stop_server  # noqa: E402
from waits import until  # noqa: E402

from poolkit import LLM  # noqa: E402
from poolkit.entrypoints.server import create_app  # noqa: E402

MANY = [f"text number {i}: " + "word " * (i % 13) for i in range(40)]


@pytest.fixture(scope="module")
def served(minilm_dir, splade_dir, tmp_path_factory):
    from tiny_models import build_classifier

    # float32: a stream's messages run batched together, a unary call alone, equal to float32's batch invariance
    c3 = LLM(str(build_classifier(tmp_path_factory.mktemp("grpc-streams") / "c3", "bert", 3)), dtype="float32")
    splade = LLM(str(splade_dir), hf_overrides={"architectures": ["BertSpladeSparseEmbeddingModel"]}, dtype="float32")
    minilm = LLM(str(minilm_dir), dtype="float32")
    app = create_app([minilm, c3, splade], served_model_name=["minilm", "c3", "splade"], grpc_port=0)
    with TestClient(app):
        with grpc.insecure_channel(f"127.0.0.1:{app.state.poolkit.grpc_port}") as channel:
            yield app.state.poolkit, channel


@pytest.fixture
def stubs(served, tei):
    pb, services = tei
    return pb, {name: getattr(services, f"{name}Stub")(served[1]) for name in ("Embed", "Predict", "Tokenize")}


def test_every_stream_answers_as_its_unary_rpc_in_order(stubs):
    pb, stub = stubs
    embed, predict, tokenize = stub["Embed"], stub["Predict"], stub["Tokenize"]
    cases = [
        (embed.Embed, embed.EmbedStream, [pb.EmbedRequest(inputs=t) for t in MANY], "minilm"),
        (embed.EmbedAll, embed.EmbedAllStream, [pb.EmbedAllRequest(inputs=t) for t in TEXTS], "minilm"),
        (embed.EmbedSparse, embed.EmbedSparseStream, [pb.EmbedSparseRequest(inputs=t) for t in TEXTS], "splade"),
        (predict.Predict, predict.PredictStream, [pb.PredictRequest(inputs=t) for t in TEXTS], "c3"),
        (predict.PredictPair, predict.PredictPairStream, [pb.PredictPairRequest(inputs=[QUERY, d]) for d in DOCS], "c3"),
        (tokenize.Tokenize, tokenize.TokenizeStream, [pb.EncodeRequest(inputs=t, add_special_tokens=True) for t in TEXTS], "minilm"),
        (tokenize.Decode, tokenize.DecodeStream, [pb.DecodeRequest(ids=[101, 7592 + i, 102]) for i in range(5)], "minilm"),
    ]
    for unary, stream, requests, model in cases:
        want = [unary(r, metadata=on(model)) for r in requests]
        got = list(stream(iter(requests), metadata=on(model)))
        assert len(got) == len(want), stream
        for g, w in zip(got, want):  # the stream's messages ran batched together, the unary calls alone
            assert _numbers(g) == pytest.approx(_numbers(w), abs=1e-5), stream
            assert _rest(g) == _rest(w), stream


def _numbers(answer) -> dict:
    """An answer's numbers by what they are of (a vector's position, a sparse index, a label)."""
    if hasattr(answer, "embeddings"):
        return dict(enumerate(answer.embeddings))
    if hasattr(answer, "token_embeddings"):
        return {(t, i): v for t, token in enumerate(answer.token_embeddings) for i, v in enumerate(token.embeddings)}
    if hasattr(answer, "sparse_embeddings"):
        return {v.index: v.value for v in answer.sparse_embeddings}
    if hasattr(answer, "predictions"):
        return {p.label: p.score for p in answer.predictions}
    return {}


def _rest(answer):
    """What an answer says beside its numbers and its timing: tokens, text, counts."""
    answer = type(answer).FromString(answer.SerializeToString())
    for field in ("embeddings", "token_embeddings", "sparse_embeddings", "predictions"):
        if hasattr(answer, field):
            answer.ClearField(field)
    if hasattr(answer, "metadata"):
        for timing in ("total_time_ns", "tokenization_time_ns", "queue_time_ns", "inference_time_ns"):
            setattr(answer.metadata, timing, 0)
    return answer


def test_streams_at_once_each_in_order(stubs):
    """Four streams of forty texts each, at once (their messages batched together): each stream's
    answers are its own texts' vectors, in its order."""
    pb, stub = stubs
    want = {t: list(stub["Embed"].Embed(pb.EmbedRequest(inputs=t), metadata=on("minilm")).embeddings) for t in MANY}

    def one_stream(k: int) -> list[list[float]]:
        texts = MANY[k:] + MANY[:k]
        answers = stub["Embed"].EmbedStream(iter([pb.EmbedRequest(inputs=t) for t in texts]), metadata=on("minilm"))
        return [list(a.embeddings) for a in answers], texts

    with ThreadPoolExecutor(4) as pool:
        for got, texts in pool.map(one_stream, (0, 7, 19, 33)):
            assert len(got) == len(texts)
            for vector, text in zip(got, texts):
                assert vector == pytest.approx(want[text], abs=1e-5)


def test_a_bad_message_ends_its_stream_after_the_answers_before_it(stubs):
    pb, stub = stubs
    requests = [pb.EmbedRequest(inputs="first"), pb.EmbedRequest(inputs="second"), pb.EmbedRequest(inputs=""), pb.EmbedRequest(inputs="fourth")]
    answers = stub["Embed"].EmbedStream(iter(requests), metadata=on("minilm"))
    assert len(next(answers).embeddings) == 384 and len(next(answers).embeddings) == 384
    with pytest.raises(grpc.RpcError) as info:
        next(answers)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "Input validation error: `inputs` cannot be empty"
    refused(lambda: list(stub["Embed"].EmbedStream(iter([pb.EmbedRequest(inputs="x")]), metadata=on("c3"))),
            grpc.StatusCode.FAILED_PRECONDITION, "not an embedding model")


def _hold(state):
    """Hold the default model's batcher (its worker thread) until the returned event is set; returns
    once the hold is taken (counted in, and the queue empty: earlier tests' requests count too)."""
    gate = threading.Event()
    loop = asyncio.new_event_loop()
    batcher = state.first.batcher
    before = batcher.stats.requests
    holder = threading.Thread(target=lambda: loop.run_until_complete(batcher.call(lambda: gate.wait(120), 1)))
    holder.start()
    until(lambda: batcher.stats.requests > before and batcher.queue_depth == 0, "the hold taken")
    return gate, holder


def test_a_deadline_or_a_cancel_drops_the_queued_work(served, stubs):
    state, _ = served
    pb, stub = stubs
    batcher = state.first.batcher
    gate, holder = _hold(state)
    try:
        cancelled = batcher.stats.cancelled
        refused(lambda: stub["Embed"].Embed(pb.EmbedRequest(inputs="too late"), metadata=on("minilm"), timeout=0.5),
                grpc.StatusCode.DEADLINE_EXCEEDED)
        until(lambda: batcher.stats.cancelled == cancelled + 1, "the expired call's work dropped")
        future = stub["Embed"].Embed.future(pb.EmbedRequest(inputs="never mind"), metadata=on("minilm"))
        until(lambda: batcher.queue_depth == 1, "the call queued")
        assert future.cancel()
        until(lambda: batcher.stats.cancelled == cancelled + 2, "the cancelled call's work dropped")
        stream = stub["Embed"].EmbedStream(iter([pb.EmbedRequest(inputs=t) for t in MANY[:3]]), metadata=on("minilm"))
        until(lambda: batcher.queue_depth == 3, "the stream's messages queued")
        stream.cancel()
        until(lambda: batcher.stats.cancelled == cancelled + 5, "the cancelled stream's work dropped")
    finally:
        gate.set()
        holder.join()
    assert batcher.queue_depth == 0
    assert stub["Embed"].Embed(pb.EmbedRequest(inputs="after"), metadata=on("minilm")).embeddings


def test_sigterm_lets_the_calls_in_flight_finish(minilm_dir, tei, tmp_path):
    """``poolkit serve --grpc-port``: a stream still sending when SIGTERM arrives is answered to
    its end, new calls are refused as Unavailable, and the process exits 0."""
    pb, services = tei
    port = _free_port()
    server = start_server(minilm_dir, tmp_path / "server.log", "--grpc-port", str(port))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            embed = services.EmbedStub(channel)
            assert len(embed.Embed(pb.EmbedRequest(inputs="ready")).embeddings) == 384
            sent: queue.Queue = queue.Queue()

            def requests():
                while (text := sent.get()) is not None:
                    yield pb.EmbedRequest(inputs=text)

            answers = embed.EmbedStream(requests())
            sent.put("before")
            assert len(next(answers).embeddings) == 384
            server.proc.send_signal(signal.SIGTERM)
            until(lambda: "shutting down" in server.logs().lower() or server.proc.poll() is not None, "SIGTERM taken")
            refused(lambda: embed.Embed(pb.EmbedRequest(inputs="new"), timeout=30), grpc.StatusCode.UNAVAILABLE)
            for text in ("during", "the", "drain"):
                sent.put(text)
                assert len(next(answers).embeddings) == 384
            sent.put(None)
            assert list(answers) == []
    finally:
        code = stop_server(server)
    assert code == 0, server.logs()


def test_grpc_port_refusals_before_the_model_loads(tmp_path):
    from typer.testing import CliRunner

    from poolkit.entrypoints.cli import app

    for args, message in (
        (["--grpc-port", "9001", "--api-server-count", "2"], "--grpc-port is served by the process that runs the models"),
        (["--grpc-port", "0"], "--grpc-port must be a free port other than --port"),
        (["--grpc-port", "8000"], "--grpc-port must be a free port other than --port"),
    ):
        result = CliRunner().invoke(app, ["serve", str(tmp_path / "no-such-model"), *args])
        assert result.exit_code == 1 and result.stderr.startswith(f"Error: {message}"), result.output


def test_without_the_grpc_extra_serve_says_what_to_install(monkeypatch, tmp_path):
    import sys

    from typer.testing import CliRunner

    from poolkit.entrypoints.cli import app
    from poolkit.entrypoints.grpc import stubs

    monkeypatch.setitem(sys.modules, "grpc_tools", None)  # not installed
    stubs.tei.cache_clear()
    try:
        result = CliRunner().invoke(app, ["serve", str(tmp_path / "no-such-model"), "--grpc-port", "9001"])
    finally:
        stubs.tei.cache_clear()
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        "Error: the gRPC server needs grpcio, grpcio-tools and grpcio-health-checking: pip install 'poolkit[grpc]'"
    )
