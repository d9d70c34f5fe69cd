"""``poolkit bench-serve``: load and soak a running server, or one it starts.

N closed-loop clients (one thread and one keep-alive connection each) send embedding requests
for a fixed time; the report gives throughput, p50/p99 latency, the responses by status code and
the server's resident memory (its ``process_resident_memory_bytes`` metric) at the start, after
the first minute and at the end. A soak passes when the memory at the end stays within 10% of the
memory after the first minute. Only the standard library talks to the server.
"""

from __future__ import annotations

import http.client
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ...config.settings import EngineArgs
from ...contracts.errors import InvalidRequest, PoolkitError
from .corpus import make_corpus

#: The memory sample this long after the start is the soak's baseline.
BASELINE_SECONDS = 60.0
#: How much the memory may grow from the baseline to the end for a soak to pass.
RSS_GROWTH_LIMIT = 0.10


@dataclass
class LoadReport:
    """What one run measured (``as_dict`` for JSON)."""

    url: str
    clients: int
    seconds: float
    inputs_per_request: int
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB)

    def rss_at(self, seconds: float) -> float | None:
        """The first memory sample taken at or after ``seconds``, else the last one."""
        later = [mb for t, mb in self.rss if t >= seconds]
        return later[0] if later else (self.rss[-1][1] if self.rss else None)

    def as_dict(self) -> dict[str, Any]:
        ok = self.statuses.get(200, 0)
        q = statistics.quantiles(self.latencies, n=100) if len(self.latencies) >= 2 else [float("nan")] * 99
        baseline = self.rss_at(BASELINE_SECONDS) if self.seconds >= BASELINE_SECONDS else None
        end = self.rss[-1][1] if self.rss else None
        growth = (end - baseline) / baseline if baseline and end is not None else None
        return {
            "url": self.url,
            "clients": self.clients,
            "seconds": round(self.seconds, 1),
            "requests": sum(self.statuses.values()),
            "requests_per_s": round(sum(self.statuses.values()) / self.seconds, 2),
            "inputs_per_s": round(ok * self.inputs_per_request / self.seconds, 1),
            "p50_ms": round(q[49] * 1000, 1),
            "p99_ms": round(q[98] * 1000, 1),
            "status_codes": {str(k): v for k, v in sorted(self.statuses.items(), key=lambda kv: str(kv[0]))},
            "rss_mb": {
                "start": self.rss[0][1] if self.rss else None,
                "after_first_minute": baseline,
                "end": end,
                "max": max((mb for _, mb in self.rss), default=None),
            },
            "rss_growth_after_first_minute": None if growth is None else round(growth, 4),
            "soak_ok": None if growth is None else growth <= RSS_GROWTH_LIMIT,
        }


def _connection(url: str, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)


def server_rss_mb(url: str, headers: dict[str, str] | None = None) -> float | None:
    """The server's resident memory in MiB, from its ``/metrics``; ``None`` if it does not say."""
    conn = _connection(url, 10)
    try:
        conn.request("GET", "/metrics", headers=headers or {})
        text = conn.getresponse().read().decode()
    except OSError:
        return None
    finally:
        conn.close()
    for line in text.splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return round(float(line.split()[-1]) / 2**20, 1)
    return None


def run_load(
    url: str,
    *,
    clients: int = 16,
    seconds: float = 60.0,
    inputs_per_request: int = 8,
    endpoint: str = "/v1/embeddings",
    api_key: str | None = None,
    sample_every: float = 5.0,
    seed: int = 0,
) -> LoadReport:
    """Drive ``url`` with ``clients`` closed-loop clients for ``seconds``; see the module docstring."""
    if clients < 1 or seconds <= 0 or inputs_per_request < 1:
        raise InvalidRequest("clients and inputs per request must be positive, and the duration above 0")
    texts = make_corpus(4096, 40, 0.8, seed)
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    report = LoadReport(url, clients, seconds, inputs_per_request)
    lock = threading.Lock()
    start = time.monotonic()
    stop = start + seconds
    done = threading.Event()

    def client(k: int) -> None:
        conn = _connection(url, 120)
        i = k * inputs_per_request
        while time.monotonic() < stop:
            batch = [texts[(i + j) % len(texts)] for j in range(inputs_per_request)]
            i += clients * inputs_per_request
            body = json.dumps({"input": batch, "truncate_prompt_tokens": -1})
            t0 = time.monotonic()
            try:
                conn.request("POST", endpoint, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status: int | str = response.status
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                conn.close()
                conn = _connection(url, 120)
            with lock:
                report.latencies.append(time.monotonic() - t0)
                report.statuses[status] += 1
        conn.close()

    def sampler() -> None:
        while not done.is_set():
            mb = server_rss_mb(url, headers)
            if mb is not None:
                with lock:
                    report.rss.append((time.monotonic() - start, mb))
            done.wait(sample_every)

    watcher = threading.Thread(target=sampler, daemon=True)
    watcher.start()
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()
    mb = server_rss_mb(url, headers)
    if mb is not None:
        report.rss.append((time.monotonic() - start, mb))
    report.seconds = time.monotonic() - start
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
    """``poolkit serve`` in a child process on a free local port, stopped with SIGTERM."""

    def __init__(self, args: EngineArgs, log_path: str | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "poolkit", "serve", args.model, "--port", str(port), *_serve_flags(args)]
        self.log = open(log_path or "/dev/null", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PoolkitError(f"the server exited with code {self.proc.returncode} before it was ready")
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

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def format_load(report: dict[str, Any]) -> str:
    """The report as a few lines of text."""
    rss = report["rss_mb"]
    lines = [
        f"{report['url']}: {report['clients']} clients for {report['seconds']} s",
        f"  {report['requests']} requests ({report['requests_per_s']} req/s, {report['inputs_per_s']} inputs/s), "
        f"p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms",
        f"  status codes: {', '.join(f'{k}: {v}' for k, v in report['status_codes'].items())}",
        f"  server RSS (MiB): start {rss['start']}, after the first minute {rss['after_first_minute']}, "
        f"end {rss['end']}, max {rss['max']}",
    ]
    if report["rss_growth_after_first_minute"] is not None:
        verdict = "within" if report["soak_ok"] else "OVER"
        lines.append(
            f"  growth after the first minute: {report['rss_growth_after_first_minute']:+.1%} "
            f"({verdict} the {RSS_GROWTH_LIMIT:.0%} limit)"
        )
    return "\n".join(lines)
