"""TEI's gRPC API against a hostile client (hardening 6): the key before any message is read, a
call's bytes bounded and each stream message checked as it arrives, a stream that stops reading
stops being taken from, one admission limit shared with HTTP, bytes that are not TEI's message
answered in one line, and an open stream never answering with an adapter no longer loaded."""

from __future__ import annotations

import logging
import queue
import threading

import pytest

pytest.importorskip("fastapi")
grpc = pytest.importorskip("grpc")
pytest.importorskip("grpc_tools.protoc")

from fastapi.testclient import TestClient  # noqa: E402
from test_grpc import on, post, refused, tei  # noqa: E402,F401 - tei: the generated client (a fixture)
from test_grpc_streams import _hold  # noqa: E402
from waits import until  # noqa: E402

from poolkit import LLM  # noqa: E402
from poolkit.entrypoints.server import ServerLimits, create_app  # noqa: E402
from poolkit.entrypoints.serving.admission import STREAM_WINDOW, stream_share  # noqa: E402

KEY = [("authorization", "Bearer s3cret")]
WRONG = [("authorization", "Bearer wrong")]
LIMITS = ServerLimits(max_body_bytes=256 * 1024, max_concurrent_requests=4, max_inputs_per_request=64)


@pytest.fixture(scope="module")
def minilm32(minilm_dir):
    return LLM(str(minilm_dir), dtype="float32")


@pytest.fixture(scope="module")
def served(minilm32):
    """One model behind a key, with small limits: its HTTP client, state and gRPC channel."""
    app = create_app(minilm32, served_model_name="minilm", grpc_port=0, api_key="s3cret", limits=LIMITS)
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    with TestClient(app) as http, grpc.insecure_channel(f"127.0.0.1:{app.state.poolkit.grpc_port}", options) as channel:
        yield http, app.state.poolkit, channel


@pytest.fixture
def embed(served, tei):
    return tei[0], tei[1].EmbedStub(served[2])


def _blocking(first: list, gate: threading.Event):
    """A request iterator that sends ``first`` and then waits for ``gate`` before ending."""
    yield from first
    gate.wait(60)


def test_the_key_is_checked_before_a_message_is_read(served, embed):
    """A wrong key with a message over the receive limit is refused for the key (the message was
    never read: HTTP's 401 before its 413); a stream whose first message never comes is refused too."""
    pb, stub = embed
    huge = pb.EmbedRequest(inputs="a" * (2 * LIMITS.max_body_bytes))
    assert refused(lambda: stub.Embed(huge, metadata=WRONG), grpc.StatusCode.UNAUTHENTICATED) == "No valid auth token"
    refused(lambda: stub.Embed(huge, metadata=KEY), grpc.StatusCode.RESOURCE_EXHAUSTED)  # the receive limit is the body limit
    gate = threading.Event()
    try:
        refused(lambda: list(stub.EmbedStream(_blocking([], gate), metadata=WRONG)), grpc.StatusCode.UNAUTHENTICATED)
        refused(lambda: stub.EmbedAll(huge, metadata=[]), grpc.StatusCode.UNAUTHENTICATED)
    finally:
        gate.set()
    metrics = served[0].get("/metrics", headers={"Authorization": "Bearer s3cret"}).text
    assert 'poolkit_requests_total{route="/tei.v1.Embed/Embed",status="UNAUTHENTICATED"}' in metrics


def test_bytes_that_are_not_teis_message_are_invalid_argument_in_one_line(served, caplog):
    channel = served[2]
    unary = channel.unary_unary("/tei.v1.Embed/Embed")  # bytes as they are, no generated message
    stream = channel.stream_stream("/tei.v1.Embed/EmbedStream")
    # field 1 (inputs) holding invalid UTF-8; a length past the end; no valid tag
    wires = [b"\x0a\x02\xff\xfe", b"\x0a\x10ab", b"\xff\xff\xff"]
    with caplog.at_level(logging.DEBUG):
        for wire in wires:
            for metadata in (KEY, WRONG):
                code = grpc.StatusCode.INVALID_ARGUMENT if metadata is KEY else grpc.StatusCode.UNAUTHENTICATED
                message = refused(lambda: unary(wire, metadata=metadata), code)
                assert "\n" not in message
        good = b"\x0a\x02ok"
        answers = stream(iter([good, wires[0]]), metadata=KEY)
        assert next(answers)  # the message before the bad one is answered
        message = refused(lambda: next(answers), grpc.StatusCode.INVALID_ARGUMENT, "not a valid message of /tei.v1.Embed/EmbedStream")
    assert message == "the request is not a valid message of /tei.v1.Embed/EmbedStream"
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


def test_rerank_stream_holds_at_most_a_body_and_checks_each_message(served, tei):
    """RerankStream's messages together are bounded by the HTTP body limit, and a bad message is
    refused as it arrives, before the client has finished sending."""
    pb, services = tei
    rerank = services.RerankStub(served[2])
    part = "word " * (LIMITS.max_body_bytes // 5 // 8)  # eight of these pass the limit
    message = refused(lambda: rerank.RerankStream(iter([pb.RerankStreamRequest(query="q", text=part)] * 12), metadata=KEY),
                      grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert message == f"the stream's messages are larger than the limit of {LIMITS.max_body_bytes} bytes"
    many = [pb.RerankStreamRequest(query="q", text="t")] * (LIMITS.max_inputs_per_request + 1)
    refused(lambda: rerank.RerankStream(iter(many), metadata=KEY), grpc.StatusCode.INVALID_ARGUMENT,
            f"maximum allowed batch size {LIMITS.max_inputs_per_request}")
    gate = threading.Event()
    try:  # the client is still sending when the empty pair is refused
        refused(lambda: rerank.RerankStream(_blocking([pb.RerankStreamRequest(query="q", text="t"), pb.RerankStreamRequest()], gate),
                                            metadata=KEY),
                grpc.StatusCode.INVALID_ARGUMENT, "cannot be empty")
    finally:
        gate.set()
    ranks = rerank.RerankStream(iter([pb.RerankStreamRequest(query="q", text=t) for t in ("a", "b")]), metadata=KEY).ranks
    assert sorted(r.index for r in ranks) == [0, 1]


def test_a_stream_whose_client_stops_reading_stops_being_taken(served, embed):
    """300 messages sent, none of the answers read: the server takes the stream's window (and what
    the transport absorbs), not the 300; once read, every answer comes, in order."""
    pb, stub = embed
    state = served[1]
    batcher = state.first.batcher
    before = batcher.stats.requests
    texts = [f"text number {i} " + "word " * 200 for i in range(300)]  # answers of ~200 vectors each
    answers = stub.EmbedAllStream(iter([pb.EmbedAllRequest(inputs=t, truncate=True) for t in texts]), metadata=KEY)
    until(lambda: batcher.stats.requests - before >= STREAM_WINDOW, "the stream's window taken")
    until(lambda: state.in_flight == 0 and batcher.queue_depth == 0, "the window's messages answered")
    taken = batcher.stats.requests - before
    assert taken < 2 * STREAM_WINDOW + 16, taken  # before: all 300 computed and held
    got = [len(a.token_embeddings) for a in answers]
    assert len(got) == 300 and got[0] > 1


def test_streams_share_the_one_admission_limit_with_http(served, embed):
    """Streams waiting for room hold at most their share of --max-concurrent-requests, so an HTTP
    request is still admitted (before: each stream had a limit of its own, 12 in flight, HTTP 429)."""
    pb, stub = embed
    http, state, _ = served
    gate, holder = _hold(state)
    streams, statuses = [], []
    try:
        for k in range(3):
            requests = iter([pb.EmbedRequest(inputs=f"stream {k} text {i}") for i in range(10)])
            streams.append(stub.EmbedStream(requests, metadata=KEY))
        share = stream_share(LIMITS.max_concurrent_requests)
        until(lambda: state.admission.streamed == share, "the streams' share taken")
        assert state.in_flight == share <= LIMITS.max_concurrent_requests
        asking = threading.Thread(target=lambda: statuses.append(
            http.post("/v1/embeddings", json={"input": "http"}, headers={"Authorization": "Bearer s3cret"}).status_code))
        asking.start()
        until(lambda: state.in_flight == share + 1, "the HTTP request admitted")
        assert state.admission.streamed == share
    finally:
        gate.set()
        holder.join()
    asking.join()
    assert statuses == [200]
    for answers in streams:
        assert len(list(answers)) == 10
    assert state.in_flight == 0


@pytest.fixture
def adapters(tmp_path, tei, monkeypatch):
    """A base encoder served with runtime LoRA updates on, and two adapters' folders of other weights."""
    peft = pytest.importorskip("peft")
    import torch
    import transformers as T
    from tiny_models import build_encoder

    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    base = build_encoder(tmp_path / "bert", "bert")
    folders = {}
    for seed, name in ((1, "one"), (2, "two")):
        torch.manual_seed(seed)
        adapter = peft.get_peft_model(T.AutoModel.from_pretrained(base), peft.LoraConfig(
            r=4, lora_alpha=8, init_lora_weights=False, target_modules=["query", "value"]))
        adapter.save_pretrained(tmp_path / name)
        folders[name] = str(tmp_path / name)
    llm = LLM(str(base), enable_lora=True, dtype="float32")
    app = create_app(llm, served_model_name="base", grpc_port=0)
    with TestClient(app) as client, grpc.insecure_channel(f"127.0.0.1:{app.state.poolkit.grpc_port}") as channel:
        yield client, tei[0], tei[1].EmbedStub(channel), folders


def test_an_open_stream_never_outlives_its_adapter(adapters):
    """An EmbedStream opened with x-model z answers each message with the adapter loaded as z when
    the message arrives: the new weights after an in-place reload, NOT_FOUND once z is unloaded."""
    client, pb, stub, folders = adapters

    def load(path: str, inplace: bool = False) -> None:
        r = client.post("/v1/load_lora_adapter", json={"lora_name": "z", "lora_path": path, "load_inplace": inplace})
        assert r.status_code == 200, r.text

    load(folders["one"])
    sent: queue.Queue = queue.Queue()

    def requests():
        while (text := sent.get()) is not None:
            yield pb.EmbedRequest(inputs=text)

    answers = stub.EmbedStream(requests(), metadata=on("z"))
    try:
        sent.put("a text")
        first = list(next(answers).embeddings)
        assert [first] == post(client, "/embed", "z", {"inputs": "a text"})
        load(folders["two"], inplace=True)
        sent.put("a text")
        second = list(next(answers).embeddings)
        assert [second] == post(client, "/embed", "z", {"inputs": "a text"}) and second != first
        assert client.post("/v1/unload_lora_adapter", json={"lora_name": "z"}).status_code == 200
        sent.put("a text")
        refused(lambda: next(answers), grpc.StatusCode.NOT_FOUND, "z")
    finally:
        sent.put(None)
