"""``poolkit serve``'s settings from where deployments give them: a ``POOLKIT_<OPTION>`` environment
variable for every option (listed in ``--help``), a ``--config`` YAML file in vLLM's format (the
options' long names as keys; the command line wins, then the environment, then the file), the
deployment options (CORS, ``--root-path``, TLS, ``--log-format json``, ``--no-warmup``), and a bad
value from any of them as one ``Error: ...`` line and exit code 1 before anything loads. Each test
reads what the server would be started with, its ``run`` replaced (``served``, tests/cli/conftest.py);
the same settings over real HTTP(S) are tests/server/test_deployment.py's."""

from __future__ import annotations

import json
import re

import pytest
import typer.main
from certificates import certificates
from typer.testing import CliRunner

from poolkit.entrypoints.cli import app
from poolkit.entrypoints.cli.sources import variable


def _serve(*argv: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, ["serve", *argv], env=env)


def _started(result, served) -> dict:
    assert result.exit_code == 0, result.output
    assert len(served) == 1
    return served[0]


def _refused(result, served) -> str:
    assert result.exit_code == 1, result.output
    assert not served  # nothing was started, nothing loaded
    line = result.stderr.splitlines()[0]
    assert line.startswith("Error: ")
    return line


def _serve_command():
    return typer.main.get_command(app).commands["serve"]


def test_every_option_of_serve_has_its_environment_variable_in_the_help():
    params = [p for p in _serve_command().params if not getattr(p, "hidden", False) and p.name != "help"]
    assert len(params) > 60
    help_text = " ".join(CliRunner().invoke(app, ["serve", "--help"]).output.split())
    for param in params:
        envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
        assert envvars and envvars[0] == variable(param.name), param.name
        assert f"env var: {variable(param.name)}" in help_text, param.name
    assert variable("model") == "POOLKIT_MODEL"


def test_environment_variables_set_the_options(served, minilm_dir):
    env = {
        "POOLKIT_MODEL": str(minilm_dir), "POOLKIT_PORT": "9123", "POOLKIT_HOST": "0.0.0.0",
        "POOLKIT_MAX_BATCH_TOKENS": "4096", "POOLKIT_MAX_CONCURRENT_REQUESTS": "7", "POOLKIT_AUTO_TRUNCATE": "true",
        "POOLKIT_WARMUP": "false", "POOLKIT_ALLOWED_ORIGINS": "https://app.example.com", "POOLKIT_ROOT_PATH": "/api/",
        "POOLKIT_API_KEY": "secret",
    }
    call = _started(_serve(env=env), served)
    assert call["models"] == [str(minilm_dir)]
    assert (call["host"], call["port"]) == ("0.0.0.0", 9123)
    assert call["limits"].max_batch_tokens == 4096 and call["limits"].max_concurrent_requests == 7
    assert call["auto_truncate"] is True and call["warmup"] is False
    assert call["cors"].origins == ("https://app.example.com",)
    assert call["root_path"] == "/api"
    assert call["api_key"] == "secret"


def test_the_command_line_wins_over_the_environment_and_the_environment_over_the_file(served, tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text("port: 7001\nhost: 0.0.0.0\nmax-queue-tokens: 1234\n")
    call = _started(_serve("--config", str(config), "--port", "7003", env={"POOLKIT_PORT": "7002", "POOLKIT_HOST": "127.0.0.2"}), served)
    assert (call["port"], call["host"], call["limits"].max_queue_tokens) == (7003, "127.0.0.2", 1234)


def test_a_config_file_in_vllms_format(served, tmp_path, minilm_dir):
    config = tmp_path / "serve.yaml"
    config.write_text(
        f"model: {minilm_dir}\n"
        "served-model-name: minilm\n"          # a list option from one value
        "max_model_len: 128\n"                 # underscores, as vLLM's files often write them
        "allowed-origins: ['https://a.example.com', 'https://b.example.com']\n"
        "allow-credentials: true\n"
        "warmup: false\n"
        "enable-prefix-caching: false\n"
        "json-output: true\n"
    )
    call = _started(_serve("--config", str(config)), served)
    assert call["models"] == [str(minilm_dir)] and call["served_model_name"] == "minilm"
    assert call["cors"].origins == ("https://a.example.com", "https://b.example.com") and call["cors"].credentials
    assert call["warmup"] is False


def test_the_file_may_be_named_by_the_environment(served, tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text("port: 7011\n")
    assert _started(_serve(env={"POOLKIT_CONFIG": str(config)}), served)["port"] == 7011


def test_settings_reach_the_engine_from_the_file(monkeypatch, tmp_path, minilm_dir):
    import poolkit.entrypoints.server

    seen = []
    monkeypatch.setattr(poolkit.entrypoints.server, "run", lambda loaders, **kwargs: seen.append(loaders))
    config = tmp_path / "serve.yaml"
    config.write_text(f"model: {minilm_dir}\nmax_model_len: 128\ndtype: float32\n")
    result = _serve("--config", str(config))
    assert result.exit_code == 0, result.output
    from poolkit import LLM

    with monkeypatch.context() as m:
        m.setattr(LLM, "from_args", classmethod(lambda cls, args: args))
        args = seen[0]()
    assert (args.max_model_len, args.dtype) == (128, "float32")


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"POOLKIT_PORT": "abc"}, "Error: environment variable POOLKIT_PORT='abc' (--port): "),
        ({"POOLKIT_WARMUP": "maybe"}, "Error: environment variable POOLKIT_WARMUP='maybe' (--warmup): "),
        ({"POOLKIT_MAX_BODY_BYTES": "lots"}, "Error: environment variable POOLKIT_MAX_BODY_BYTES='lots' (--max-body-bytes): "),
        ({"POOLKIT_ALLOWED_ORIGINS": "app.example.com"}, "Error: --allowed-origins takes '*' or origins such as"),
        ({"POOLKIT_SSL_CERTFILE": "/no/such.pem"}, "Error: --ssl-certfile /no/such.pem: no such file"),
        ({"POOLKIT_LOG_FORMAT": "xml"}, "Error: --log-format takes text or json, got 'xml'"),
    ],
)
def test_a_bad_environment_variable_is_one_line_naming_it(served, env, expected):
    assert _refused(_serve(env=env), served).startswith(expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("bogus: 1\n", "unknown key 'bogus' (not an option of poolkit serve)"),
        ("port: abc\n", "the value of --port: "),
        ("port: [1\n", "not YAML (line 2, column 1): "),
        ("- port\n- 8000\n", "must hold a mapping of option names to values, got list"),
        ("ssl-certfile: /no/such.pem\n", "--ssl-certfile /no/such.pem: no such file"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_file_or_key(served, tmp_path, text, expected):
    config = tmp_path / "serve.yaml"
    config.write_text(text)
    line = _refused(_serve("--config", str(config)), served)
    assert expected in line
    if "no such file" not in expected:
        assert str(config) in line


def test_an_unreadable_config_file_is_named(served, tmp_path):
    line = _refused(_serve("--config", str(tmp_path / "missing.yaml")), served)
    assert re.match(rf"Error: --config {re.escape(str(tmp_path / 'missing.yaml'))}: cannot read it", line)


def test_the_deployment_options_reach_the_server(served, tmp_path):
    pem = certificates(tmp_path)
    call = _started(_serve(
        "--allowed-origins", '["https://app.example.com"]', "--allowed-methods", "GET,POST", "--allowed-headers", "authorization",
        "--root-path", "/api", "--ssl-certfile", str(pem["server.crt"]), "--ssl-keyfile", str(pem["server.key"]),
        "--ssl-ca-certs", str(pem["ca.crt"]), "--ssl-cert-reqs", "1", "--no-warmup",
    ), served)
    cors = call["cors"]
    assert (cors.origins, cors.methods, cors.headers, cors.credentials) == (("https://app.example.com",), ("GET", "POST"), ("authorization",), False)
    assert call["root_path"] == "/api" and call["warmup"] is False
    assert (call["tls"].certfile, call["tls"].cert_reqs) == (str(pem["server.crt"]), 1)
    served.clear()
    defaults = _started(_serve(), served)
    assert defaults["cors"] is None and defaults["tls"] is None and defaults["root_path"] == "" and defaults["warmup"] is True


@pytest.mark.parametrize("flag", [["--log-format", "json"], ["--json-output"]])
def test_json_logs_are_one_object_a_line(served, flag):
    result = _serve("--served-model-name", "minilm", *flag)
    _started(result, served)
    records = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    serving = next(r for r in records if r["message"].startswith("serving "))
    assert serving["level"] == "INFO" and serving["target"] == "poolkit.entrypoints.server"
    assert {"timestamp", "filename", "line_number"} <= set(serving) and serving["timestamp"].endswith("Z")


def test_a_server_started_from_a_file_and_the_environment_answers_as_they_say(minilm_dir, tmp_path):
    """The real process over real HTTP: the file names the model, its name, a key, JSON logs and no
    warm-up; the environment gives the port and overrides the file's input limit."""
    import os
    import signal
    import subprocess
    import sys

    import httpx
    from served import _free_port
    from waits import until

    config = tmp_path / "serve.yaml"
    config.write_text(
        f"model: {minilm_dir}\nserved-model-name: cfg-minilm\napi-key: k\nlog-format: json\nwarmup: false\nmax-inputs-per-request: 8\n"
    )
    port = _free_port()
    env = dict(os.environ, POOLKIT_CONFIG=str(config), POOLKIT_PORT=str(port), POOLKIT_MAX_INPUTS_PER_REQUEST="2",
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "poolkit", "serve"], stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(f"{base}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        until(healthy, "the server to load", guard=120)
        key = {"Authorization": "Bearer k"}
        ok = httpx.post(f"{base}/v1/embeddings", json={"model": "cfg-minilm", "input": ["a", "b"]}, headers=key, timeout=30)
        assert ok.status_code == 200 and len(ok.json()["data"]) == 2, ok.text
        assert httpx.post(f"{base}/v1/embeddings", json={"model": "cfg-minilm", "input": "a"}, timeout=30).status_code == 401
        over = httpx.post(f"{base}/v1/embeddings", json={"model": "cfg-minilm", "input": ["a", "b", "c"]}, headers=key, timeout=30)
        assert over.status_code in (400, 413, 422), over.text  # the environment's 2, not the file's 8
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(r["message"].startswith("serving ") and "as 'cfg-minilm'" in r["message"] for r in records)
    assert not any("warm-up of" in r["message"] for r in records)
