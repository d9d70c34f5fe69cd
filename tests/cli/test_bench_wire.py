"""``poolkit bench-serve --wire``: one server over TEI's gRPC (unary and stream) and three HTTP
encodings, each answer decoded and checked by its client.

The run is a subprocess, as a user runs the command: it starts its own server and clients.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

pytest.importorskip("grpc")
pytest.importorskip("fastapi")

WIRES = ["grpc-unary", "grpc-stream", "http-json", "http-base64", "vllm-bytes"]


def test_wire_compares_the_five_wires_on_one_started_server(minilm_dir):
    run = subprocess.run(
        [sys.executable, "-m", "poolkit", "bench-serve", str(minilm_dir), "--wire",
         "--clients", "2", "--duration", "1", "--warmup", "0.5", "--json"],
        capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["dimensions"] == 384 and report["clients"] == 2
    assert [row["wire"] for row in report["wires"]] == WIRES
    for row in report["wires"]:
        assert row["requests"] > 0 and row["errors"] == 0 and row["first_error"] is None, row
        assert row["requests_per_s"] > 0 and row["p50_ms"] <= row["p99_ms"], row
        assert row["server_cpu_ms_per_request"] > 0, row
    baseline = next(row for row in report["wires"] if row["wire"] == "http-json")
    assert baseline["vs_http_json"] == 1.0


def test_wire_against_a_url_needs_the_grpc_target():
    from poolkit.entrypoints.cli import app
    from poolkit.plugins import get_manager

    get_manager().register_commands(app)  # bench-serve comes from a plugin
    result = CliRunner().invoke(app, ["bench-serve", "--wire", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == (
        "Error: --wire against --url needs --grpc-target HOST:PORT (the server's --grpc-port)"
    )
