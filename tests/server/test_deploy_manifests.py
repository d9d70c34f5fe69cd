"""The deployment files agree with the server they deploy: docs/kubernetes.yaml's probes, ports,
variables and autoscaling metric, and the Containerfiles' entrypoint, port, variables and health
check, each checked against what the server says of itself (its routes, the ``serve`` command's
options, a scrape of its ``/metrics``), so that neither can drift from it. ``.ci/container`` builds
and runs the images themselves."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")  # fastapi.testclient runs on it

import typer  # noqa: E402
import yaml  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from layout import PACKAGES  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from served import served  # noqa: E402
from waits import until  # noqa: E402

from poolkit.entrypoints.cli import app as cli  # noqa: E402
from poolkit.entrypoints.server import ServerLimits, create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
if not (ROOT / "Containerfile").is_file():  # an installed copy of the tests, without the checkout
    pytest.skip("needs the project's checkout (Containerfile, docs/kubernetes.yaml)", allow_module_level=True)

CONTAINERFILES = ("Containerfile", "Containerfile.cuda")
MANIFEST = ROOT / "docs" / "kubernetes.yaml"


# -- what the server says of itself ----------------------------------------------------------------


@pytest.fixture(scope="module")
def serve() -> Any:
    """The ``poolkit serve`` command as click builds it from the Typer app."""
    return typer.main.get_command(cli).commands["serve"]


def _option(command: Any, flag: str) -> Any:
    return next(p for p in command.params if flag in getattr(p, "opts", ()))


def _variables(param: Any) -> list[str]:
    envvar = param.envvar
    return [envvar] if isinstance(envvar, str) else list(envvar or ())


@pytest.fixture(scope="module")
def routes(minilm) -> dict[str, Any]:
    """The server's health and metrics paths, read from the application the factory builds, and a
    scrape of its ``/metrics`` after a request, as ``{name: type}`` of each metric family."""
    app = create_app(minilm, served_model_name="minilm")
    with TestClient(app) as client:
        health, metrics = app.url_path_for("health"), app.url_path_for("metrics")
        assert client.get(health).status_code == 200
        assert client.post("/v1/embeddings", json={"input": "hello"}).status_code == 200
        scraped = client.get(metrics)
        assert scraped.status_code == 200
    families = {f.name: f.type for f in text_string_to_metric_families(scraped.text)}
    return {"health": health, "metrics": metrics, "families": families}


# -- reading the files ------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """A Containerfile's instructions as ``(KEYWORD, arguments)``: continuation lines joined, comments dropped."""
    found, current = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        keyword, _, arguments = (current + line).partition(" ")
        found.append((keyword.upper(), arguments.strip()))
        current = ""
    return found


def _stages(path: Path) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """The instructions before the first ``FROM``, and each stage: its base, name and instructions."""
    head: list[tuple[str, str]] = []
    stages: list[dict[str, Any]] = []
    for keyword, arguments in _instructions(path):
        if keyword == "FROM":
            base, _, name = re.sub(r"\s+AS\s+", " AS ", arguments, flags=re.I).partition(" AS ")
            stages.append({"base": base.strip(), "name": name.strip() or None, "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((keyword, arguments))
        else:
            head.append((keyword, arguments))
    return head, stages


def _final(path: Path) -> dict[str, Any]:
    return _stages(path)[1][-1]


def _last(stage: dict[str, Any], keyword: str) -> str:
    values = [a for k, a in stage["instructions"] if k == keyword]
    assert values, f"no {keyword} in the final stage"
    return values[-1]


def _env(stage: dict[str, Any]) -> dict[str, str]:
    pairs = [token.split("=", 1) for k, a in stage["instructions"] if k == "ENV" for token in shlex.split(a)]
    return dict(pairs)


def _args(instructions: list[tuple[str, str]]) -> dict[str, str | None]:
    return {name: (value if sep else None) for k, a in instructions if k == "ARG" for name, sep, value in [a.partition("=")]}


def _healthcheck(stage: dict[str, Any]) -> str:
    """The shell command of the final stage's ``HEALTHCHECK ... CMD command``."""
    _, _, command = _last(stage, "HEALTHCHECK").partition(" CMD ")
    assert command and not command.lstrip().startswith("["), "HEALTHCHECK's command is a shell command (it reads $POOLKIT_PORT)"
    return command.strip()


@pytest.fixture(scope="module")
def manifest() -> dict[str, dict[str, Any]]:
    """docs/kubernetes.yaml's documents by kind."""
    documents = [d for d in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if d]
    kinds = {d["kind"]: d for d in documents}
    assert sorted(kinds) == ["Deployment", "HorizontalPodAutoscaler", "Service"]
    return kinds


def _container(manifest: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = manifest["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _port(container: dict[str, Any], port: int | str) -> int:
    """A port of the container by number or by name."""
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)


# -- the Kubernetes manifest -------------------------------------------------------------------------


def test_the_probes_ask_the_servers_health_route_on_its_port(manifest, routes, serve):
    container = _container(manifest)
    probes = {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    for kind, probe in probes.items():
        assert probe["httpGet"]["path"] == routes["health"], kind
        assert _port(container, probe["httpGet"]["port"]) == _option(serve, "--port").default, kind
    assert [p["containerPort"] for p in container["ports"]] == [_option(serve, "--port").default]


def test_the_service_sends_the_servers_port_to_the_deployments_pods(manifest, serve):
    deployment, service = manifest["Deployment"], manifest["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    default = _option(serve, "--port").default
    assert port["port"] == default
    assert _port(_container(manifest), port["targetPort"]) == default


def test_prometheus_is_pointed_at_the_servers_metrics_route(manifest, routes, serve):
    annotations = manifest["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == routes["metrics"]
    assert int(annotations["prometheus.io/port"]) == _option(serve, "--port").default


def test_the_autoscaler_scales_the_deployment_on_a_gauge_the_server_exports(manifest, routes):
    hpa, deployment = manifest["HorizontalPodAutoscaler"], manifest["Deployment"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (deployment["kind"], deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    # a gauge: a per-pod average of it is a load; a counter would only ever grow
    assert routes["families"].get(name) == "gauge", f"/metrics exports no gauge {name}: {sorted(routes['families'])}"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_kubernetes_waits_for_the_drain_before_it_kills(manifest, serve):
    """The grace period covers the preStop pause and the server's own drain (``--shutdown-timeout``)."""
    pod = manifest["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pause = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > float(pause[1]) + _option(serve, "--shutdown-timeout").default


def test_the_pod_runs_as_the_images_user_and_mounts_what_it_writes(manifest):
    pod = manifest["Deployment"]["spec"]["template"]["spec"]
    container = _container(manifest)
    for name in CONTAINERFILES:
        stage = _final(ROOT / name)
        assert _last(stage, "USER").split(":")[0] == str(pod["securityContext"]["runAsUser"]), name
        # a read-only root: every directory the image writes to is a volume of the pod
        env = _env(stage)
        written = {env["HOME"], env["HF_HOME"].rsplit("/", 1)[0], env["XDG_CACHE_HOME"], "/tmp"}
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert written <= {m["mountPath"] for m in container["volumeMounts"]}, name
    assert pod["securityContext"]["runAsNonRoot"] is True
    models = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert models["readOnly"] is True
    model = next(e["value"] for e in container["env"] if e["name"] == "POOLKIT_MODEL")
    assert model.startswith(models["mountPath"] + "/")


def test_every_variable_the_images_and_the_pod_set_is_one_poolkit_serve_reads(manifest, serve):
    variables = {v for p in serve.params for v in _variables(p)}
    model = next(p for p in serve.params if p.name == "model")
    assert "POOLKIT_MODEL" in _variables(model)
    set_by_pod = {e["name"] for e in _container(manifest)["env"]}
    set_by_images = {k for name in CONTAINERFILES for k in _env(_final(ROOT / name))}
    poolkit = {v for v in set_by_pod | set_by_images if v.startswith("POOLKIT_")}
    assert poolkit and poolkit <= variables, poolkit - variables


# -- the Containerfiles ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONTAINERFILES)
def test_the_image_runs_poolkit_serve_in_exec_form_on_its_port(name, serve):
    stage = _final(ROOT / name)
    (script,) = [e.name for e in distribution("poolkit").entry_points if e.group == "console_scripts" and e.value == "poolkit.entrypoints.cli:main"]
    entrypoint = json.loads(_last(stage, "ENTRYPOINT"))  # exec form: the server is PID 1 and gets SIGTERM
    assert entrypoint[0] == script and entrypoint[1:] == [serve.name]
    port = _option(serve, "--port")
    assert _last(stage, "EXPOSE") == str(port.default)
    env = _env(stage)
    assert env["POOLKIT_PORT"] == str(port.default) and "POOLKIT_PORT" in _variables(port)
    assert env["POOLKIT_HOST"] == "0.0.0.0" and "POOLKIT_HOST" in _variables(_option(serve, "--host"))
    # the script is found first on the PATH, in the virtual environment the builder stage made
    copied = [a.split()[-1] for k, a in stage["instructions"] if k == "COPY" and a.startswith("--from=")]
    assert str(Path(env["PATH"].split(":")[0]).parent) in copied


@pytest.mark.parametrize("name", CONTAINERFILES)
def test_the_health_check_asks_the_health_route_on_the_servers_port(name, routes, serve):
    command = _healthcheck(_final(ROOT / name))
    url = re.search(r"http://127\.0\.0\.1:\$\{(\w+):-(\d+)\}(/\S*?)[\"' ]", command + " ")
    assert url, command
    port = _option(serve, "--port")
    assert url.group(1) in _variables(port) and int(url.group(2)) == port.default
    assert url.group(3) == routes["health"]


def test_the_health_check_fails_while_the_model_loads_and_passes_once_it_serves(minilm, tmp_path):
    """Each Containerfile's HEALTHCHECK command, run by a shell against a real server."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    release = threading.Event()

    def loading():
        release.wait(60)
        return minilm

    def check(command: str, port: int) -> int:
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "POOLKIT_PORT": str(port)}
        return subprocess.run(["sh", "-c", command], env=env, capture_output=True, timeout=60).returncode

    commands = [_healthcheck(_final(ROOT / name)) for name in CONTAINERFILES]
    with served(loading, served_model_name="minilm", limits=ServerLimits(shutdown_timeout=2.0), log_level="warning") as port:
        try:
            assert [check(c, port) for c in commands] == [1, 1]  # 503: loading
        finally:
            release.set()
        until(lambda: check(commands[0], port) == 0, "the health check to pass once the model is loaded")
        assert [check(c, port) for c in commands] == [0, 0]


@pytest.mark.parametrize("name", CONTAINERFILES)
def test_the_image_is_built_in_stages_from_the_base_image_argument(name):
    head, stages = _stages(ROOT / name)
    base = _args(head)["BASE_IMAGE"]
    assert base is not None
    pattern = r"python:3\.\d+-slim" if name == "Containerfile" else r"nvidia/cuda:[\w.]+-runtime-[\w.]+"
    assert re.fullmatch(pattern, base), base
    assert len(stages) >= 2
    named = set()
    for stage in stages:  # every stage starts from the base argument, or from a stage that did
        assert stage["base"] == "${BASE_IMAGE}" or stage["base"] in named, stage["base"]
        if stage["name"]:
            named.add(stage["name"])
    builders = {s["name"] for s in stages[:-1]}
    copied = [a for k, a in stages[-1]["instructions"] if k == "COPY" and a.startswith("--from=")]
    assert copied and all(a.split()[0].removeprefix("--from=") in builders for a in copied)
    assert not any(k == "COPY" and not a.startswith("--from=") for k, a in stages[-1]["instructions"])  # no sources in the image


@pytest.mark.parametrize("name", CONTAINERFILES)
def test_the_image_runs_as_a_user_that_is_not_root(name):
    user = _last(_final(ROOT / name), "USER").split(":")[0]
    assert user.isdigit() and int(user) != 0  # numeric: Kubernetes' runAsNonRoot can check it


@pytest.mark.parametrize("name", CONTAINERFILES)
def test_the_build_arguments_install_the_readmes_torch_and_poolkits_extras(name):
    _, stages = _stages(ROOT / name)
    builder = next(s for s in stages if s["name"] == "builder")
    args = _args(builder["instructions"])
    pins = set(re.findall(r"pip install torch==([\d.]+)", (ROOT / "README.md").read_text(encoding="utf-8")))
    assert pins == {args["TORCH_VERSION"]}
    assert args["WITH_DEFAULT_MODEL"] == "1"
    assert {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "TORCH_INDEX_URL"} <= set(args)
    runs = " ".join(a for k, a in builder["instructions"] if k == "RUN")
    named = {e for group in re.findall(r'extras="(?:\$extras,)?([a-z0-9,-]+)', runs) for e in group.split(",")}
    assert "serve" in named and "minilm" in named
    assert named <= set(distribution("poolkit").metadata.get_all("Provides-Extra")), named


def test_the_build_context_keeps_what_the_wheel_is_built_from():
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = [*PACKAGES, "pyproject.toml", "setup.py", "README.md"]
    assert not [(n, p) for n in needed for p in patterns if fnmatch.fnmatch(n, p)]
    assert {".git", ".venv"} <= set(patterns)
