"""``poolkit bench-serve``: load and soak a running server, or one it starts.

N closed-loop clients (one thread and one keep-alive connection each) send requests for a fixed
time: embedding requests to one route, or in turn every route of the server for each model that
can run it (:mod:`.mix`). A warm-up runs first, under the same load, so that the allocator's
first high-water mark is not counted as growth. The report gives throughput, p50/p99 latency,
the responses by status code, in total and per route, and the server's resident memory (its
``process_resident_memory_bytes`` metric) over the run: at the start, "before" and at the end.
"before" and the end are both taken once every answer of the phase before them is in and the
server has been idle a few seconds: under 128 clients the memory swings by a quarter with the
requests in flight, idle it holds still, so two idle samples compare what the server kept. A soak passes when no response is a 5xx or a
connection error and the memory at the end stays within 10% of the memory before; without a
warm-up, "before" is the memory after the first minute (under load). Only the standard library
talks to the server.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import urlsplit

from ...config.settings import EngineArgs
from ...contracts.errors import InvalidRequest, PoolkitError
from .corpus import make_corpus
from .mix import ROUTE_MODES, Call, ServedModel, endpoint_call, every_route

#: Without a warm-up, the memory sample this long after the start is the soak's baseline.
BASELINE_SECONDS = 60.0
#: How much the memory may grow from the baseline to the end for a soak to pass.
RSS_GROWTH_LIMIT = 0.10
#: How long the server is left idle before "before" and the end are sampled: longer than its
#: batchers wait before they hand freed memory back (``poolkit.runtime.batching.TRIM_INTERVAL``).
IDLE_SECONDS = 3.0
#: Failed requests (5xx, connection errors) the report keeps whole, to be reproduced.
KEPT_FAILURES = 20


def _quantiles(latencies: list[float]) -> list[float]:
    return statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99


def _codes(statuses: Counter) -> dict[str, int]:
    return {str(k): v for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0]))}


def _failed(status: int | str) -> bool:
    """A 5xx, or a connection error (recorded under the exception's name)."""
    return isinstance(status, str) or status >= 500


@dataclass
class LoadReport:
    """What one run measured (``as_dict`` for JSON).

    ``seconds``, ``latencies``, ``statuses`` and ``routes`` cover the measured phase, after the
    warm-up; ``warmup_routes`` the warm-up's answers, which count for the soak's verdict too (a
    5xx is a bug whenever it comes); ``rss`` times are seconds since the load began, its last
    sample the end.
    """

    url: str
    clients: int
    seconds: float
    inputs_per_request: int
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB)
    warmup: float = 0.0
    rss_before: float | None = None  # after the warm-up, once its answers are all in
    inputs_done: int = 0  # inputs of the measured phase's 200 answers
    routes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    route_latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    warmup_routes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    skipped: dict[str, str] = field(default_factory=dict)  # route -> why no served model runs it
    failures: list[dict[str, Any]] = field(default_factory=list)  # the first 5xx / connection errors, whole
    refusals: dict[str, str] = field(default_factory=dict)  # route -> its first 4xx answer

    def rss_at(self, seconds: float) -> float | None:
        """The first memory sample taken at or after ``seconds``, else the last one."""
        later = [mb for t, mb in self.rss if t >= seconds]
        return later[0] if later else (self.rss[-1][1] if self.rss else None)

    def as_dict(self) -> dict[str, Any]:
        q = _quantiles(self.latencies)
        total = self.warmup + self.seconds
        first_minute = self.rss_at(BASELINE_SECONDS) if total >= BASELINE_SECONDS else None
        before = self.rss_before if self.warmup > 0 else first_minute
        end = self.rss[-1][1] if self.rss else None
        growth = (end - before) / before if before and end is not None else None
        growth_first = (end - first_minute) / first_minute if first_minute and end is not None else None
        warm = sum(self.warmup_routes.values(), Counter())
        everything = [*self.statuses.items(), *warm.items()]
        server_errors = sum(n for s, n in everything if isinstance(s, int) and s >= 500)
        connection_errors = sum(n for s, n in everything if isinstance(s, str))
        if server_errors or connection_errors:
            ok: bool | None = False
        else:
            ok = None if growth is None else growth <= RSS_GROWTH_LIMIT
        routes = {}
        for label, statuses in self.routes.items():
            rq = _quantiles(self.route_latencies.get(label, []))
            routes[label] = {
                "requests": sum(statuses.values()),
                "status_codes": _codes(statuses),
                "p50_ms": round(rq[49] * 1000, 1),
                "p99_ms": round(rq[98] * 1000, 1),
            }
        return {
            "url": self.url,
            "clients": self.clients,
            "seconds": round(self.seconds, 1),
            "warmup_seconds": round(self.warmup, 1),
            "requests": sum(self.statuses.values()),
            "requests_per_s": round(sum(self.statuses.values()) / self.seconds, 2),
            "inputs_per_s": round(self.inputs_done / self.seconds, 1),
            "p50_ms": round(q[49] * 1000, 1),
            "p99_ms": round(q[98] * 1000, 1),
            "status_codes": _codes(self.statuses),
            "routes": routes,
            "skipped_routes": dict(self.skipped),
            "warmup_requests": sum(warm.values()),
            "warmup_status_codes": _codes(warm),
            "server_errors": server_errors,
            "connection_errors": connection_errors,
            "failures": list(self.failures),
            "refusals": dict(self.refusals),
            "rss_mb": {
                "start": self.rss[0][1] if self.rss else None,
                "before": before,
                "after_first_minute": first_minute,
                "end": end,
                "max": max((mb for _, mb in self.rss), default=None),
            },
            "rss_growth": None if growth is None else round(growth, 4),
            "rss_growth_after_first_minute": None if growth_first is None else round(growth_first, 4),
            "soak_ok": ok,
        }


def _connection(url: str, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)


def server_metric(url: str, name: str, headers: Mapping[str, str] | None = None) -> float | None:
    """The value of the unlabelled metric ``name`` in the server's ``/metrics``; ``None`` if it does not say."""
    conn = _connection(url, 10)
    try:
        conn.request("GET", "/metrics", headers=dict(headers or {}))
        text = conn.getresponse().read().decode()
    except OSError:
        return None
    finally:
        conn.close()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def server_rss_mb(url: str, headers: dict[str, str] | None = None) -> float | None:
    """The server's resident memory in MiB, from its ``/metrics``; ``None`` if it does not say."""
    value = server_metric(url, "process_resident_memory_bytes", headers)
    return None if value is None else round(value / 2**20, 1)


def free_port() -> int:
    """A local TCP port that was free a moment ago (the OS's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exchange(
    url: str, method: str, path: str, body: dict[str, Any] | None = None, headers: Mapping[str, str] | None = None
) -> tuple[int, Any]:
    """One request on its own connection: the status and the parsed JSON answer (``None`` if not JSON)."""
    conn = _connection(url, 60)
    try:
        sent = dict(headers or {}, **({"content-type": "application/json"} if body is not None else {}))
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=sent)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, None


def served_models(url: str, headers: Mapping[str, str] | None = None) -> list[ServedModel]:
    """The server's models and what each can run (``GET /v1/models``), with token ids from each one's ``/tokenize``.

    Raises:
        PoolkitError: when ``/v1/models`` does not answer 200 (the mix cannot be built without it).
    """
    status, listed = _exchange(url, "GET", "/v1/models", headers=headers)
    if status != 200 or not isinstance(listed, dict):
        raise PoolkitError(f"GET /v1/models answered {status}: the mix of every route needs the server's list of models")
    models = []
    for entry in listed.get("data", []):
        name = entry["id"]
        status, tokens = _exchange(url, "POST", "/tokenize", {"model": name, "prompt": "Hello, world."}, headers)
        ids = tuple(tokens["tokens"]) if status == 200 and isinstance(tokens, dict) else ()
        models.append(ServedModel(name, frozenset(entry.get("tasks") or ()), entry.get("score_type"), ids))
    return models


def run_load(
    url: str,
    *,
    clients: int = 16,
    seconds: float = 60.0,
    inputs_per_request: int = 8,
    endpoint: str = "/v1/embeddings",
    routes: str = "endpoint",
    warmup: float = 0.0,
    api_key: str | None = None,
    sample_every: float = 5.0,
    seed: int = 0,
    rounds: int | None = None,
) -> LoadReport:
    """Drive ``url`` with ``clients`` closed-loop clients for ``warmup`` and then ``seconds``; see the module docstring.

    Args:
        routes: ``endpoint``: every request to ``endpoint`` with an OpenAI embeddings body;
            ``every``: each client's next request to the next entry of the mix of every route
            (:func:`.mix.every_route`), built from the server's own list of models.
        warmup: seconds of the same load before the measured phase; the memory once its answers
            are all in is the soak's baseline.
        rounds: an amount of work instead of a duration: each client stops once it has been
            through the mix this many times (``--routes every``: every route; else this many
            requests), or at ``seconds``, whichever comes first.
    """
    if clients < 1 or seconds <= 0 or inputs_per_request < 1 or warmup < 0 or (rounds is not None and rounds < 1):
        raise InvalidRequest(
            "clients, inputs per request and rounds must be positive, the duration above 0 and the warm-up at least 0"
        )
    if routes not in ROUTE_MODES:
        raise InvalidRequest(f"unknown routes mode '{routes}'; choose from {', '.join(ROUTE_MODES)}")
    texts = make_corpus(4096, 40, 0.8, seed)
    auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
    report = LoadReport(url, clients, seconds, inputs_per_request, warmup=warmup)
    if routes == "every":
        calls, report.skipped = every_route(served_models(url, auth), inputs_per_request)
    else:
        calls = [endpoint_call(endpoint, inputs_per_request)]
    for call in calls:
        report.routes[call.label] = Counter()  # in the mix's order, and listed even if never answered
    lock = threading.Lock()
    start = time.monotonic()
    done = threading.Event()

    def record(call: Call, sent: bytes | None, status: int | str, answer: bytes, t0: float, t1: float, warm: bool) -> None:
        with lock:
            if warm:
                report.warmup_routes[call.label][status] += 1
            else:
                report.latencies.append(t1 - t0)
                report.statuses[status] += 1
                report.routes[call.label][status] += 1
                report.route_latencies[call.label].append(t1 - t0)
                if status == 200:
                    report.inputs_done += call.inputs
            if _failed(status) and len(report.failures) < KEPT_FAILURES:
                report.failures.append({
                    "route": call.label, "method": call.method, "path": call.path, "headers": call.headers,
                    "body": None if sent is None else sent.decode(), "status": status,
                    "answer": answer[:1000].decode(errors="replace"), "seconds": round(t0 - start, 1),
                })
            elif isinstance(status, int) and 400 <= status < 500 and call.label not in report.refusals:
                report.refusals[call.label] = f"{status}: {answer[:300].decode(errors='replace')}"

    # Each client's place in the corpus and in the mix, kept from the warm-up to the measured phase;
    # clients start at different entries of the mix, so every route is busy at once.
    places = [[k * inputs_per_request, k] for k in range(clients)]

    def client(k: int, until: float, warm: bool) -> None:
        conn = _connection(url, 120)
        place = places[k]
        last = math.inf if warm or rounds is None else place[1] + rounds * len(calls)
        while time.monotonic() < until and place[1] < last:
            call = calls[place[1] % len(calls)]
            batch = [texts[(place[0] + j) % len(texts)] for j in range(inputs_per_request)]
            place[0] += clients * inputs_per_request
            place[1] += 1
            sent = None if call.body is None else json.dumps(call.body(batch)).encode()
            headers = {**auth, **call.headers, **({"content-type": "application/json"} if sent is not None else {})}
            t0 = time.monotonic()
            try:
                conn.request(call.method, call.path, body=sent, headers=headers)
                response = conn.getresponse()
                answer = response.read()
                status: int | str = response.status
            except (OSError, http.client.HTTPException) as exc:
                status, answer = type(exc).__name__, str(exc).encode()
                conn.close()
                conn = _connection(url, 120)
            record(call, sent, status, answer, t0, time.monotonic(), warm)
        conn.close()

    def drive(phase: float, warm: bool) -> float:
        """The clients' requests for ``phase`` seconds, until each has its last answer; when the phase began."""
        began = time.monotonic()
        threads = [threading.Thread(target=client, args=(k, began + phase, warm), daemon=True) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return began

    def sample() -> float | None:
        mb = server_rss_mb(url, auth)
        if mb is not None:
            with lock:
                report.rss.append((time.monotonic() - start, mb))
        return mb

    def sampler() -> None:
        while not done.is_set():
            sample()
            done.wait(sample_every)

    watcher = threading.Thread(target=sampler, daemon=True)
    watcher.start()
    if warmup > 0:
        drive(warmup, True)
        time.sleep(IDLE_SECONDS)
        report.rss_before = sample()  # "before": the warm-up's answers all in, the server idle
    began = drive(seconds, False)
    report.seconds = time.monotonic() - began
    done.set()
    watcher.join()
    time.sleep(IDLE_SECONDS)
    sample()
    report.rss.sort()
    return report


def _serve_flags(args: EngineArgs) -> list[str]:
    """``poolkit serve`` flags for the settings the user gave (the model is the argument)."""
    flags = []
    for name in sorted(args.model_fields_set - {"model"}):
        value = getattr(args, name)
        if value is None or value is False:
            continue
        option = "--" + name.replace("_", "-")
        if value is True:
            flags.append(option)
        elif hasattr(value, "model_dump"):
            flags += [option, json.dumps(value.model_dump(exclude_none=True))]
        else:
            flags += [option, json.dumps(value) if isinstance(value, dict) else str(value)]
    return flags


class StartedServer:
    """``poolkit serve`` in a child process on a free local port, stopped with SIGTERM.

    ``models`` and ``served_model_names`` are ``serve``'s repeatable ``--model`` and
    ``--served-model-name``, passed as ``serve`` takes them: ``args.model`` comes first, as the
    positional model, when it was given or no other model is; ``serve_flags`` are further
    ``serve`` options as they are (``["--cache-size", "512"]``); ``env`` replaces the environment
    the server inherits.
    """

    def __init__(
        self,
        args: EngineArgs,
        log_path: str | None = None,
        *,
        models: Sequence[str] = (),
        served_model_names: Sequence[str] = (),
        serve_flags: Sequence[str] = (),
        env: Optional[Mapping[str, str]] = None,
    ) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        positional = [args.model] if "model" in args.model_fields_set or not models else []
        cmd = [
            sys.executable, "-m", "poolkit", "serve", *positional,
            *(flag for model in models for flag in ("--model", model)),
            *(flag for name in served_model_names for flag in ("--served-model-name", name)),
            "--port", str(port), *_serve_flags(args), *serve_flags,
        ]
        self.log = open(log_path or "/dev/null", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=None if env is None else dict(env))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.close()
                where = f" (its log: {log_path})" if log_path else ""
                raise PoolkitError(f"the server exited with code {self.proc.returncode} before it was ready{where}")
            conn = _connection(self.url, 2)
            try:
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.3)
        self.stop()
        raise PoolkitError("the server was not ready within 300 s")

    def stop(self) -> int | None:
        """SIGTERM, then the server's exit code (``None``: it had to be killed after 120 s)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.log.close()
                return None
        self.log.close()
        return self.proc.returncode


def format_load(report: dict[str, Any]) -> str:
    """The report as lines of text: totals, each route of a mix, memory and the soak's verdict."""
    rss = report["rss_mb"]
    warmup = report.get("warmup_seconds", 0)
    lines = [
        f"{report['url']}: {report['clients']} clients for {report['seconds']} s"
        + (f" after a {warmup} s warm-up" if warmup else ""),
        f"  {report['requests']} requests ({report['requests_per_s']} req/s, {report['inputs_per_s']} inputs/s), "
        f"p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms",
        f"  status codes: {', '.join(f'{k}: {v}' for k, v in report['status_codes'].items())}",
    ]
    if warmup:
        codes = ", ".join(f"{k}: {v}" for k, v in report["warmup_status_codes"].items())
        lines.append(f"  warm-up: {report['warmup_requests']} requests, status codes: {codes}")
    routes = report.get("routes", {})
    if len(routes) > 1:
        width = max(map(len, routes))
        lines.append("  per route (requests, status codes, p50 / p99 ms):")
        for label, route in routes.items():
            codes = ", ".join(f"{k}: {v}" for k, v in route["status_codes"].items()) or "-"
            lines.append(f"    {label:<{width}}  {route['requests']:>6}  {codes:<20}  {route['p50_ms']} / {route['p99_ms']}")
    for label, reason in report.get("skipped_routes", {}).items():
        lines.append(f"  skipped {label}: {reason}")
    for label, answer in report.get("refusals", {}).items():
        lines.append(f"  first 4xx of {label}: {answer[:200]}")
    where = f"idle after the {warmup} s warm-up" if warmup else "after the first minute"
    lines.append(
        f"  server RSS (MiB): start {rss['start']}, before {rss.get('before')} ({where}), end {rss['end']}, max {rss['max']}"
    )
    if report.get("rss_growth") is not None:
        verdict = "within" if report["rss_growth"] <= RSS_GROWTH_LIMIT else "OVER"
        lines.append(f"  growth from before to the end: {report['rss_growth']:+.1%} ({verdict} the {RSS_GROWTH_LIMIT:.0%} limit)")
    if report.get("server_errors") or report.get("connection_errors"):
        lines.append(f"  5xx answers: {report['server_errors']}, connection errors: {report['connection_errors']}")
        for failure in report["failures"]:
            body = (failure["body"] or "")[:200]
            lines.append(f"    {failure['status']} at {failure['seconds']} s from {failure['route']}: {body} -> {failure['answer'][:200]}")
    if report["soak_ok"] is not None:
        lines.append(f"  soak: {'passes' if report['soak_ok'] else 'FAILS'}")
    return "\n".join(lines)
