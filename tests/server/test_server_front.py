"""The server's HTTP front (issue 29, item 4): plain inference requests read and answered without
h11 and uvicorn's request cycle, everything else left to them. A request answered by the front reads
exactly as the same request answered by h11 (sent in two pieces, which the front never takes), for
results and for errors; pipelined and overlapping requests are answered in order."""

from __future__ import annotations

import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from served import connect, read_response, served  # noqa: E402

from poolkit.entrypoints.server import (
    ServerLimits,  # noqa: E402
    front,  # noqa: E402
)


def request(body: bytes, path: bytes = b"/v1/embeddings", extra: bytes = b"", rid: bytes = b"same") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\nx-request-id: %s\r\n%scontent-length: %d\r\n\r\n%s"
        % (path, rid, extra, len(body), body)
    )


EMBED = json.dumps({"model": "minilm", "input": ["Hello, my name is", "A man is eating food."]}).encode()


@pytest.fixture(scope="module")
def port(minilm):
    with served(minilm, served_model_name="minilm", limits=ServerLimits(shutdown_timeout=2.0), log_level="warning") as port:
        yield port


@pytest.fixture()
def taken(monkeypatch):
    """How many requests the front read itself."""
    count = [0]
    real = front.read_plain_request

    def spy(data):
        got = real(data)
        count[0] += got is not None
        return got

    monkeypatch.setattr(front, "read_plain_request", spy)
    return count


def ask(port: int, raw: bytes, pieces: int = 1) -> tuple[str, dict[str, str], bytes]:
    """Send ``raw`` on a fresh connection in ``pieces`` writes a little apart; the response."""
    with connect(port) as sock:
        step = -(-len(raw) // pieces)
        for i in range(0, len(raw), step):
            sock.sendall(raw[i : i + step])
            if pieces > 1:
                time.sleep(0.05)
        status, headers, body, rest = read_response(sock)
        assert not rest
        headers.pop("date")
        return status, headers, body


def same_json(a: bytes, b: bytes) -> None:
    x, y = json.loads(a), json.loads(b)
    if isinstance(x, dict):
        x.pop("created", None), y.pop("created", None)  # whole seconds: may tick between the two
    assert x == y


def test_a_plain_request_is_the_fronts_and_reads_as_h11s(port, taken, minilm):
    by_front = ask(port, request(EMBED))
    assert taken[0] == 1
    by_h11 = ask(port, request(EMBED), pieces=2)  # a head split across reads is h11's
    assert taken[0] == 1
    assert by_front[0] == by_h11[0] == "HTTP/1.1 200 OK"
    assert by_front[1] == by_h11[1]
    same_json(by_front[2], by_h11[2])
    data = json.loads(by_front[2])
    assert data["id"] == "embd-same"
    for item, want in zip(data["data"], minilm.embed(["Hello, my name is", "A man is eating food."])):
        assert item["embedding"] == want.outputs.embedding


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (request(b'{"model": "minilm", "input": "hi",}'), 400),  # not JSON: FastAPI's wording
        (request(b'{"model": "minilm", "input": 3.5}'), 400),  # not a valid request
        (request(b'{"model": "minilm", "input": "hi", "dimensions": "many"}'), 400),
        (request(b'{"model": "other", "input": "hi"}'), 404),
        (request(b'{"model": "minilm", "input": "hi"}').replace(b"application/json", b"text/plain"), 415),
        (request(b'{"model": "minilm", "input": "hi"}', extra=b"content-type: text/plain\r\n"), 200),  # the first counts
        (request(b'{"input": "a"}', path=b"/classify"), 400),  # a task the model lacks
        (request(b'{"text_1": "a", "text_2": "b"}', path=b"/score"), 200),
        (request(b'{"prompt": "hello"}', path=b"/tokenize"), 200),
    ],
)
def test_answers_and_errors_read_the_same_either_way(port, taken, raw, status):
    by_front = ask(port, raw)
    by_h11 = ask(port, raw, pieces=3)
    assert taken[0] == 1
    assert by_front[:2] == by_h11[:2]
    same_json(by_front[2], by_h11[2])
    assert by_front[0].split()[1] == str(status)


def test_pipelined_and_overlapping_requests_are_answered_in_order(port, taken):
    bodies = [json.dumps({"model": "minilm", "input": f"text number {i}"}).encode() for i in range(4)]
    with connect(port) as sock:
        sock.sendall(request(bodies[0], rid=b"r0") + request(bodies[1], rid=b"r1"))  # one write: h11's
        sock.sendall(request(bodies[2], rid=b"r2"))  # while those are answered
        time.sleep(0.01)
        sock.sendall(request(bodies[3], rid=b"r3"))
        rest, ids = b"", []
        for _ in range(4):
            status, _, body, rest = read_response(sock, rest)
            assert status == "HTTP/1.1 200 OK"
            ids.append(json.loads(body)["id"])
        assert ids == ["embd-r0", "embd-r1", "embd-r2", "embd-r3"] and not rest


def test_a_client_gone_mid_request_leaves_the_server_answering(port, taken):
    big = json.dumps({"model": "minilm", "input": ["a long text " * 40] * 64}).encode()
    for _ in range(3):
        sock = connect(port)
        sock.sendall(request(big))
        sock.close()
    deadline = time.monotonic() + 10
    while taken[0] < 3 and time.monotonic() < deadline:  # read by the server in its own time
        time.sleep(0.01)
    assert taken[0] == 3
    status, _, body = ask(port, request(EMBED))
    assert status == "HTTP/1.1 200 OK" and len(json.loads(body)["data"]) == 2


@pytest.mark.parametrize(
    "raw",
    [
        request(b"{}", path=b"/v1/embeddings?x=1"),
        request(b"{}", path=b"/v1/models"),
        request(b"{}").replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        request(b"{}").replace(b"POST", b"PUT", 1),
        request(b"{}", extra=b"transfer-encoding: chunked\r\n"),
        request(b"{}", extra=b"expect: 100-continue\r\n"),
        request(b"{}", extra=b"connection: close\r\n"),
        request(b"{}", extra=b"x-forwarded-for: 10.0.0.1\r\n"),
        request(b"{}", extra=b"content-length: 2\r\n"),  # twice
        request(b"{}", extra=b"host: y\r\n"),  # twice
        request(b"{}").replace(b"Host: x\r\n", b""),
        request(b"{}", extra=b"bad header: 1\r\n"),
        request(b"{}", extra=b"x-folded: a\r\n b\r\n"),
        request(b"{}", extra=b"x-nul: a\x00b\r\n"),
        request(b"{}").replace(b"content-length: 2", b"content-length: +2"),
        request(b"{}")[:-1],  # the body not all there
        request(b"{}") + b"P",  # something after it
        request(b"{}").replace(b"\r\n\r\n", b"\r\n"),  # the head not all there
    ],
)
def test_anything_unusual_is_left_to_h11(raw):
    assert front.read_plain_request(raw) is None


def test_what_the_front_reads():
    target, headers, body = front.read_plain_request(request(b'{"a": 1}', extra=b"X-Mixed-Case:  v  a\tl \r\n"))
    assert target == b"/v1/embeddings" and body == b'{"a": 1}'
    assert headers == [
        (b"host", b"x"),
        (b"content-type", b"application/json"),
        (b"x-request-id", b"same"),
        (b"x-mixed-case", b"v  a\tl"),
        (b"content-length", b"8"),
    ]


# -- issue 52, item 1: header lines are read in linear time ----------------------------------------

#: A header value of spaces ending in a byte no header may hold: one pattern for the whole line
#: backtracked over the spaces (35,000 froze the event loop 8.5 s; this many would take hours).
HOSTILE = b"X-Pad:" + b" " * 300_000 + b"\x01\r\n"


def _finishes(work, guard: float = 60.0) -> bool:
    """Whether ``work`` returns within ``guard`` seconds (a hang guard: linear work takes milliseconds)."""
    done = threading.Event()
    threading.Thread(target=lambda: (work(), done.set()), daemon=True).start()
    return done.wait(guard)


@pytest.mark.parametrize("line", [HOSTILE, b"X-Pad: a" + b" \t" * 150_000 + b"b\x01\r\n", b"X" * 300_000 + b"\x01: v\r\n"])
def test_a_hostile_header_line_is_left_to_h11_at_once(line):
    got = []
    assert _finishes(lambda: got.append(front.read_plain_request(request(b"{}", extra=line))))
    assert got == [None]


def test_a_hostile_header_does_not_hold_the_event_loop(port):
    """The request is refused (h11's 400) and a /health asked meanwhile is answered."""
    with connect(port) as hostile, connect(port) as health:
        hostile.settimeout(60)
        hostile.sendall(request(EMBED, extra=HOSTILE))
        health.settimeout(60)
        health.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _, _ = read_response(health)
        assert status.startswith("HTTP/1.1 200"), status
        status, _, body, _ = read_response(hostile)
        assert status.startswith("HTTP/1.1 400"), (status, body)
        assert json.loads(body)["error"]["code"] == 400
