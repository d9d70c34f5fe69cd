"""``poolkit serve``: the HTTP server over one model, loaded in the background."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from ...config.settings import EngineArgs
from .app import app
from .options import QuietOpt, VerboseOpt, engine_options, errors, grouped, option_groups, setup_logging
from .sources import SourcedCommand, from_environment


@dataclass
class LimitOptions:
    """The options of the server's limits (``ServerLimits``, by field name); its ``max_batch_tokens``
    is the load setting ``--max-batch-tokens``."""

    max_queue_tokens: int = grouped(typer.Option(1_000_000, "--max-queue-tokens", help="Estimated tokens allowed to wait for the model; beyond it 429."))
    max_concurrent_requests: int = grouped(typer.Option(512, "--max-concurrent-requests", help="Requests handled at once; beyond it 429."))
    max_inputs_per_request: int = grouped(typer.Option(2048, "--max-inputs-per-request", "--max-client-batch-size", help="Inputs (texts, documents, images) in one request (TEI: --max-client-batch-size)."))
    max_request_tokens: int = grouped(typer.Option(300_000, "--max-request-tokens", help="Tokens in one request (estimated before tokenizing)."))
    max_body_bytes: int = grouped(typer.Option(16 * 1024 * 1024, "--max-body-bytes", "--payload-limit", help="Largest request body; beyond it 413 (TEI: --payload-limit)."))
    shutdown_timeout: float = grouped(typer.Option(30.0, "--shutdown-timeout", help="Seconds to finish in-flight work on SIGTERM."))
    header_timeout: float = grouped(typer.Option(10.0, "--header-timeout", help="Seconds a client has to send a request's headers; beyond it 408 and the connection is closed."))
    body_timeout: float = grouped(typer.Option(30.0, "--body-timeout", help="Seconds a request has to send its whole body once its headers are in; beyond it 408 and the connection is closed."))
    max_response_bytes: int = grouped(typer.Option(64 * 1024 * 1024, "--max-response-bytes", help="Largest response, estimated before the work (inputs or tokens times the result's width) and checked before it is written; beyond it 413."))


@dataclass
class DeployOptions:
    """The options of where the server is deployed (vLLM's spellings): CORS, a path prefix, TLS, the
    log format and the warm-up (:mod:`poolkit.entrypoints.server.deployment`)."""

    allowed_origins: Optional[list[str]] = grouped(typer.Option(None, "--allowed-origins", help="Origins browsers may call from (CORS): a JSON list as in vLLM ('[\"https://app.example.com\"]'), comma-separated, or repeated; '*' for any. Default: no CORS headers."))
    allowed_methods: Optional[list[str]] = grouped(typer.Option(None, "--allowed-methods", help="With --allowed-origins: the methods allowed cross-origin (default: any)."))
    allowed_headers: Optional[list[str]] = grouped(typer.Option(None, "--allowed-headers", help="With --allowed-origins: the request headers allowed cross-origin (default: any)."))
    allow_credentials: bool = grouped(typer.Option(False, "--allow-credentials", help="With --allowed-origins: allow cookies and Authorization cross-origin."))
    root_path: Optional[str] = grouped(typer.Option(None, "--root-path", help="The path prefix a proxy serves poolkit under (/embeddings): routes answer with or without it, and the OpenAPI document names it."))
    ssl_keyfile: Optional[str] = grouped(typer.Option(None, "--ssl-keyfile", help="The private key of --ssl-certfile (PEM), if not in it."))
    ssl_certfile: Optional[str] = grouped(typer.Option(None, "--ssl-certfile", help="Serve HTTPS (and gRPC over TLS) with this certificate chain (PEM)."))
    ssl_ca_certs: Optional[str] = grouped(typer.Option(None, "--ssl-ca-certs", help="The authorities client certificates must chain to (PEM)."))
    ssl_cert_reqs: int = grouped(typer.Option(0, "--ssl-cert-reqs", help="Client certificates: 0 not asked, 1 optional, 2 required (needs --ssl-ca-certs)."))
    log_format: str = grouped(typer.Option("text", "--log-format", help="text, or json: one JSON object a line (timestamp, level, message, target), for log collectors."))
    json_output: bool = grouped(typer.Option(False, "--json-output", help="TEI's spelling of --log-format json."))
    warmup: bool = grouped(typer.Option(True, "--warmup/--no-warmup", help="Run each model once at its largest batch and longest input before /health says ready, and log the rate and peak memory."))


@app.command(cls=SourcedCommand)
@from_environment
@engine_options(model_argument=True)
@option_groups
def serve(
    args: EngineArgs,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 listens on every interface."),
    port: int = typer.Option(8000, "--port", help="Port to bind."),
    models: Optional[list[str]] = typer.Option(None, "--model", help="Serve this model too (repeatable, after MODEL if one is given): several models in one server, chosen by each request's 'model' (or X-Model header)."),
    served_model_name: Optional[list[str]] = typer.Option(None, "--served-model-name", help="The name requests give in 'model' (default: the model as given); once per model, in the same order (repeatable, or several after one flag as in vLLM)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="POOLKIT_API_KEY", help="Require 'Authorization: Bearer KEY' on every inference route (or set POOLKIT_API_KEY)."),
    limit_options: LimitOptions = LimitOptions(),
    deploy: DeployOptions = DeployOptions(),
    chat_template: Optional[str] = typer.Option(None, "--chat-template", help="Chat template for 'messages' requests instead of the tokenizer's (a Jinja file or text); a cross-encoder also scores with it unless --score-template is given, as in vLLM."),
    score_template: Optional[str] = typer.Option(None, "--score-template", help="Score template for /score and /rerank with LLM rerankers: a Jinja file or text."),
    cache_size: int = typer.Option(0, "--cache-size", help="Keep the results of up to N embedded inputs per model and answer repeats from them (LRU; 0: no cache)."),
    cache_max_bytes: int = typer.Option(256 * 1024 * 1024, "--cache-max-bytes", help="Bytes the cache of each model may hold (its results, token ids and inputs); the least recently used entries go first."),
    auto_truncate: bool = typer.Option(False, "--auto-truncate", help="TEI's routes: truncate inputs longer than the model's limit unless a request says truncate: false."),
    default_prompt_name: Optional[str] = typer.Option(None, "--default-prompt-name", help="TEI's routes: the prompt of the model's sentence-transformers config used when a request names none."),
    allowed_media_domains: Optional[list[str]] = typer.Option(None, "--allowed-media-domains", help="Hosts whose http(s) image URLs requests may name (repeatable, several after one flag, or comma-separated; vLLM's option); they are fetched with a size cap (POOLKIT_MAX_IMAGE_BYTES), a deadline (POOLKIT_MEDIA_FETCH_TIMEOUT, 5 s) and a request's limits (POOLKIT_MAX_REQUEST_MEDIA_FETCHES, 64 images; POOLKIT_MAX_REQUEST_MEDIA_BYTES, 64 MiB). Default: none, images come as data: URIs."),
    ray_serve: bool = typer.Option(False, "--ray-serve", help="Serve as a Ray Serve deployment: --num-replicas replicas, each loading the model(s) and answering every route, behind Ray Serve's HTTP proxy on --host:--port (needs ray[serve])."),
    num_replicas: int = typer.Option(2, "--num-replicas", help="With --ray-serve: the replicas to run."),
    autoscaling_config: Optional[str] = typer.Option(None, "--autoscaling-config", help='With --ray-serve: Ray Serve\'s autoscaling settings as JSON ({"min_replicas": 1, "max_replicas": 8}), instead of --num-replicas.'),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="With --ray-serve: the Ray cluster to join ('auto', an address, or ray://host:port; or set RAY_ADDRESS); on exit the server deletes the applications it deployed and leaves the cluster running. Joining a cluster with token authentication at an address (not 'auto') needs RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token). Default: start a Ray of its own on this machine, stopped on exit."),
    otlp_traces_endpoint: Optional[str] = typer.Option(None, "--otlp-traces-endpoint", envvar="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", help="Export an OpenTelemetry trace of each inference request (queue, tokenize, run, respond; the caller's traceparent honoured) to this OTLP/HTTP collector URL, e.g. http://localhost:4318/v1/traces (vLLM's option; or set OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); needs poolkit[otel]. Default: no tracing."),
    lora_modules: Optional[list[str]] = typer.Option(None, "--lora-modules", help="A LoRA adapter to serve, as name=path or vLLM's JSON {\"name\": ..., \"path\": ..., \"base_model_name\": ...} (repeatable, or several after one flag as in vLLM; needs --enable-lora): a request whose 'model' names it runs with it, and /v1/models lists it with its parent."),
    grpc_port: Optional[int] = typer.Option(None, "--grpc-port", help="Also serve Text Embeddings Inference's gRPC API (tei.v1: Info, Embed, Predict, Rerank, Tokenize, their streams, and gRPC health) on this port of --host, from the same process, models, limits and API key (metadata 'authorization: Bearer KEY'); the metadata 'x-model' picks a served model. Needs poolkit[grpc]. Default: no gRPC."),
    api_server_count: int = typer.Option(1, "--api-server-count", help="API server processes (vLLM's option): above 1, the models load first and that many processes parse, validate and answer requests, one of them running the models; for many small requests on a host with cores to spare."),
    quiet: bool = QuietOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Serve MODEL over HTTP: OpenAI /v1/embeddings, /pooling, /classify, /score, /rerank, Cohere /v2/embed, TEI /embed.

    Every task the model supports is served; each request chooses its own. --model serves
    several models in one process (each request names one; the first answers requests that
    name none). Binds 127.0.0.1
    unless --host says otherwise. SIGTERM drains in-flight requests and exits 0. --max-batch-tokens
    is also the token budget the server merges concurrent requests up to. vLLM's spellings of the
    options work too (--max_model_len, --override-pooler-config, --task, ...), and so do several
    values after one flag (--lora-modules a=/p/a b=/p/b): they run to the next option, so MODEL
    goes first. Every option can be set from its POOLKIT_<OPTION> environment variable (shown
    below) or a --config YAML file; the command line wins, then the environment, then the file.
    """
    with errors():
        try:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError:
            from ...contracts.errors import MissingDependency

            raise MissingDependency("poolkit serve needs FastAPI and uvicorn: pip install 'poolkit[serve]'") from None
        from ..server import ServerLimits, run

        limits = ServerLimits(
            **dataclasses.asdict(limit_options),
            **({"max_batch_tokens": args.max_batch_tokens} if args.max_batch_tokens is not None else {}),
        )
        if api_server_count < 1:
            from ...contracts.errors import InvalidRequest

            raise InvalidRequest(f"--api-server-count must be at least 1, got {api_server_count}")
        from ...inputs.media import MediaPolicy
        from ..server.deployment import Cors, Tls, root_path_of

        MediaPolicy.of(allowed_media_domains)  # a bad host name is an error before the model loads
        cors = Cors.of(deploy.allowed_origins, deploy.allowed_methods, deploy.allowed_headers, deploy.allow_credentials)
        tls = Tls.of(deploy.ssl_keyfile, deploy.ssl_certfile, deploy.ssl_ca_certs, deploy.ssl_cert_reqs)
        root_path = root_path_of(deploy.root_path)
        log_format = "json" if deploy.json_output else deploy.log_format
        if log_format not in ("text", "json"):
            from ...contracts.errors import InvalidRequest

            raise InvalidRequest(f"--log-format takes text or json, got '{log_format}'")
        if ray_serve and tls is not None:
            from ...contracts.errors import InvalidRequest

            raise InvalidRequest("--ssl-certfile: Ray Serve's HTTP proxy serves plain HTTP; put TLS in front of it")
        if otlp_traces_endpoint is not None:  # so are a bad URL and a missing OpenTelemetry
            from ..server.tracing import check_endpoint

            otlp_traces_endpoint = check_endpoint(otlp_traces_endpoint)
        if grpc_port is not None:  # checked before the model loads
            from ...contracts.errors import InvalidRequest
            from ..grpc.stubs import tei

            if not 0 < grpc_port < 65536 or grpc_port == port:
                raise InvalidRequest(f"--grpc-port must be a free port other than --port, from 1 to 65535; got {grpc_port}")
            if ray_serve or api_server_count > 1:
                raise InvalidRequest("--grpc-port is served by the process that runs the models: it takes neither --ray-serve nor --api-server-count above 1")
            tei()
        adapters = _lora_modules(lora_modules or [], args)
        if args.enable_lora and api_server_count > 1:  # an adapter loaded at run time would be one process's alone
            from ...contracts.errors import InvalidRequest

            raise InvalidRequest("--enable-lora serves adapters with one API process; leave --api-server-count at 1")
        chat_template = _template(chat_template, "--chat-template")
        score_template = _template(score_template, "--score-template")
        setup_logging(quiet, verbose, json_lines=log_format == "json")
        if not quiet:
            for logger_name in ("uvicorn", "uvicorn.error", "poolkit.entrypoints.server"):
                logging.getLogger(logger_name).setLevel(logging.INFO)
        paths = ([args.model] if "model" in args.model_fields_set or not models else []) + list(models or [])
        names = list(served_model_name or [])
        if len(names) > len(paths):
            from ...contracts.errors import InvalidRequest

            given = "model" in args.model_fields_set or models  # else MODEL may be among the names (vLLM refuses that too)
            raise InvalidRequest(
                f"{len(names)} --served-model-name for {len(paths)} model{'s' if len(paths) > 1 else ''}: poolkit names each "
                "model once, in order (vLLM's several names for one model are not supported)"
                + ("" if given else "; a flag's values run to the next option, so give MODEL first: "
                   "poolkit serve MODEL --served-model-name NAME")
            )
        names += paths[len(names):]
        log = logging.getLogger("poolkit.entrypoints.server")
        for path, name in zip(paths, names):
            log.info("serving %s as '%s' on %s://%s:%d%s", path, name, "https" if tls is not None else "http", host, port, root_path)
        if grpc_port is not None:
            log.info("serving TEI's gRPC API (tei.v1) on %s:%d%s", host, grpc_port, " over TLS" if tls is not None else "")
        options = dict(
            served_model_name=names if len(names) > 1 else names[0], api_key=api_key, limits=limits, chat_template=chat_template,
            score_template=score_template, cache_size=cache_size, cache_max_bytes=cache_max_bytes, auto_truncate=auto_truncate,
            default_prompt_name=default_prompt_name, allowed_media_domains=allowed_media_domains,
            otlp_traces_endpoint=otlp_traces_endpoint, lora_modules=adapters, cors=cors, root_path=root_path, warmup=deploy.warmup,
            **({"grpc_port": grpc_port} if grpc_port is not None else {}),
        )
        if ray_serve:
            from ..integrations import ray_serve as deployment

            scaling = _json_option(autoscaling_config, "--autoscaling-config")
            deployment.run([args.model_copy(update={"model": path}) for path in paths], host=host, port=port,
                           ray_address=ray_address, num_replicas=num_replicas, autoscaling_config=scaling, **options)
            return
        loaders = [_loader(args.model_copy(update={"model": path})) for path in paths]
        run(loaders if len(loaders) > 1 else loaders[0], host=host, port=port, log_level="warning" if quiet else "info",
            access_log=verbose, api_server_count=api_server_count, tls=tls, **options)


def _loader(args: EngineArgs) -> Callable[[], Any]:
    """Loading one model in the server's background thread."""

    def load() -> Any:
        from ...api.llm import LLM

        return LLM.from_args(args)

    return load


def _lora_modules(values: list[str], args: EngineArgs) -> list[Any]:
    """The adapters of ``--lora-modules``: ``name=path`` or vLLM's JSON form, numbered from 1."""
    from ...contracts.errors import InvalidRequest
    from ...lora.request import LoRARequest

    values = [value for value in values if value != ""]  # vLLM's LoRAParserAction skips empty items
    if values and not args.enable_lora:
        raise InvalidRequest("--lora-modules needs --enable-lora")
    adapters = []
    for i, value in enumerate(values, start=1):
        if value.lstrip().startswith("{"):
            spec = _json_option(value, "--lora-modules")
            unknown = set(spec) - {"name", "path", "base_model_name"}
            if unknown or not isinstance(spec.get("name"), str) or not isinstance(spec.get("path"), str):
                raise InvalidRequest(f"--lora-modules JSON takes \"name\" and \"path\" (and \"base_model_name\"), got {value}")
            adapters.append(LoRARequest(spec["name"], i, spec["path"], base_model_name=spec.get("base_model_name")))
            continue
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise InvalidRequest(f"--lora-modules takes name=path or a JSON object, got '{value}'")
        adapters.append(LoRARequest(name, i, path))
    return adapters


def _json_option(value: Optional[str], option: str) -> Optional[dict]:
    """A JSON object given on the command line, or ``None``."""
    if value is None:
        return None
    import json

    from ...contracts.errors import InvalidRequest

    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise InvalidRequest(f"{option} must be a JSON object: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidRequest(f"{option} must be a JSON object, got {type(parsed).__name__}")
    return parsed


def _template(value: Optional[str], option: str) -> Optional[str]:
    """Template text from ``value``: the file it names, or the text itself (vLLM's rule: text with
    braces or line breaks is a template, anything else must be a file)."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if not any(c in value for c in "{}\n") and len(value) < 4096:
        if not path.is_file():
            from ...contracts.errors import InvalidRequest

            raise InvalidRequest(f"{option} '{value}' is neither a Jinja template nor an existing file")
        return path.read_text(encoding="utf-8")
    return value
