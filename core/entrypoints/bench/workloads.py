"""The workloads: :class:`Bench` loads the model once and runs W1..W10 on it, each library in turn.

Each workload method returns a :class:`~poolkit.entrypoints.bench.measure.Result`; :data:`WORKLOADS` maps the
ids the command line takes to them.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import tempfile
import time
from typing import TYPE_CHECKING, Any, Callable

from ...config.settings import EngineArgs
from ...plugins.manager import registry
from . import host_calls
from .base import MASKED_LM, SEQUENCE_CLASSIFIER
from .breakdown import breakdown
from .corpus import make_corpus
from .measure import TRUNCATE, Result, _interleave, _median_ratio, emptier, gemm_peak_gflops, model_flops, peak_rss_mb
from .peers import PEERS, SkipWorkload, check_peer, poolkit_cold_start
from .prefix import prefix_rerank_workload, prefix_server_workload, prefix_workload
from .presets import resolve_bench_model
from .retrieval import retrieval_workload
from .transformers_peer import image_workload

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

    from ...api.llm import LLM

#: How the bench calls poolkit (``--api``): vLLM's ``LLM`` API, or the sentence-transformers drop-in classes.
APIS = ("llm", "sentence-transformers")


class Bench:
    """The workloads, sharing the loaded models.

    ``args`` are the load settings of every poolkit model the bench runs (``args.model`` may be a
    preset); ``vs`` names the peer (:data:`~poolkit.entrypoints.bench.peers.PEERS`): sentence-transformers, or
    ``"fallback"``, poolkit itself on the transformers fallback. ``peer_dtype`` is the dtype the peer
    runs in: by default poolkit's (equal precision), except sentence-transformers on CUDA, fp16
    (its usual GPU setting).

    Raises:
        InvalidRequest: an unknown peer, or a model that poolkit cannot compare with it (``--vs
            fallback`` on a model with no native code).
    """

    def __init__(
        self, args: EngineArgs, rounds: int, scale: float, memory: bool, peer_dtype: str | None = None,
        vs: str = "sentence-transformers", api: str = "llm", breakdown: bool = False,
    ) -> None:
        from poolkit import LLM

        from ...contracts.errors import InvalidRequest

        self.model_dir, self.weights = resolve_bench_model(args.model)
        self.llm = LLM.from_args(args.model_copy(update={"model": self.model_dir}))
        self.device = self.llm.model.device
        # the text model's config (a vision-language model's text tower): sizes of the matmul peak and W7's head
        self.config = self.llm.model.hf_config.get_text_config()
        #: The model's default task: what poolkit returns for a text (a retriever such as ColModernVBERT: a vector per token).
        self.task = registry("task").get(self.llm.default_task) if self.llm.default_task is not None else None
        self.dtype = str(self.llm.model.dtype).removeprefix("torch.")
        # the other models (derived, child processes) load like this one, on its dtype and device
        self.args = self.llm.args.model_copy(update={"dtype": self.dtype, "device": str(self.device)})
        self.peer = PEERS[check_peer(vs)](self.args, self.llm.engine)
        reason = self.peer.check_ours(self.llm.model)
        if reason is not None:
            raise InvalidRequest(f"--vs {vs}: {reason}; nothing to compare")
        self.peer_dtype = peer_dtype or self.peer.default_dtype(self.dtype, self.device.type)
        self.gemm_peak_gflops = gemm_peak_gflops(self.config, self.llm.model.dtype, self.device)
        self.rounds = rounds
        self.scale = scale
        self.memory = memory and self.device.type == "cpu"
        #: Whether the embedding workloads and W4's rerank also break one pass down (``--breakdown``).
        self.breakdown = breakdown
        #: The peer's embedding model (``None`` when its library is not installed).
        self.encoder = self._peer("SentenceTransformer", self.model_dir)
        if api not in APIS:
            raise InvalidRequest(f"--api '{api}' is not one of {', '.join(APIS)}")
        #: How poolkit's side is called: ``LLM`` (vLLM's API) or the sentence-transformers drop-in.
        self.api = api
        self.dropin = self._dropin("SentenceTransformer", self.llm)

    def _dropin(self, cls: str, llm: "LLM") -> Any:
        """poolkit's drop-in class ``cls`` around ``llm`` with ``--api sentence-transformers``; ``None`` otherwise."""
        if self.api != "sentence-transformers":
            return None
        import poolkit

        return getattr(poolkit, cls).from_llm(llm)

    def _ours_embed(self) -> Callable[[Any], Any]:
        """poolkit's embedding call of the bench's API: texts (or one text) to embeddings."""
        if self.dropin is not None:
            return lambda texts: self.dropin.encode(texts, batch_size=32)
        return self._encode

    def _encode(self, prompts: Any) -> list[Any]:
        """poolkit's embeddings of ``prompts`` (token vectors where the default task gives them), over-long ones truncated."""
        if self._per_token():
            return self.llm.encode(prompts, pooling_task=self.task.name, tokenization_kwargs=TRUNCATE)
        return self.llm.embed(prompts, tokenization_kwargs=TRUNCATE)

    def _per_token(self) -> bool:
        """Whether the model's default task gives a vector per token rather than per input."""
        return self.task is not None and self.task.granularity == "token"

    def _vectors(self, outputs: list[Any]) -> Any:
        """The float32 rows of poolkit's ``outputs``: one per input, or every input's token rows in turn."""
        import torch

        if not self._per_token():
            return torch.tensor([o.outputs.embedding for o in outputs])
        return torch.cat([torch.as_tensor(o.outputs.data, dtype=torch.float32) for o in outputs])

    def _peer(self, cls: str, path: str, dtype: str | None = None) -> Any:
        """The peer's model of kind ``cls`` (a sentence-transformers class name) on the bench's
        device, in the peer's dtype; ``None`` without the peer's library."""
        return self.peer.model(cls, path, str(self.device), dtype or self.peer_dtype)

    def _settings(self, model: str) -> EngineArgs:
        """The bench's load settings for another model directory (a derived task model)."""
        return self.args.model_copy(update={"model": model})

    def _n(self, n: int) -> int:
        return max(4, int(n * self.scale))

    def embed_workload(self, name: str, description: str, texts: list[str]) -> Result:
        import torch

        embed = self._ours_embed()
        ours = lambda: embed(texts)  # noqa: E731
        theirs = (lambda: self.encoder.encode(texts, batch_size=32)) if self.encoder is not None else None  # noqa: E731
        rounds = _interleave(self.rounds, ours, theirs, cold=(self.llm, self.encoder))
        outputs = self._encode(texts)
        lengths = [len(o.prompt_token_ids) for o in outputs]
        # model_flops reads a text model's config; a vision-language model's text tower is not told apart
        flops = model_flops(self.llm.model, lengths) if self.config is self.llm.model.hf_config else 0.0
        result = self._result(name, description, len(texts), sum(lengths), rounds, flops)
        result.padding_fraction_peer = self.peer.padding_fraction(lengths)
        if self.breakdown:
            result.breakdown = breakdown(ours)
        sample = texts[: min(len(texts), 256)]
        ref = self._reference(sample)
        if ref is not None:
            if self.dropin is not None:  # what the drop-in returns is what is compared
                got = torch.from_numpy(self.dropin.encode(sample))
            else:
                got = self._vectors(outputs[: len(sample)])
            result.min_cosine = float(torch.nn.functional.cosine_similarity(got, ref).min())
            result.max_abs_diff = float((got - ref).abs().max())
            if self._approximate_peer():  # what its own dtype or export costs the peer, for comparison
                theirs = self.encoder.encode(sample, convert_to_tensor=True).float().cpu()
                result.peer_min_cosine = float(torch.nn.functional.cosine_similarity(theirs, ref).min())
                result.peer_max_abs_diff = float((theirs - ref).abs().max())
        if self.memory:
            result.poolkit_peak_rss_mb = peak_rss_mb("poolkit", self.args, texts, self.dtype)
            if self.encoder is not None:
                result.peer_peak_rss_mb = self.peer.peak_rss_mb(self.args, texts, self.peer_dtype)
        return result

    def _approximate_peer(self) -> bool:
        """Whether the peer's model is not the parity reference itself (another dtype, an export)."""
        return self.peer_dtype != "float32" or not self.peer.own_reference

    def _reference_model(self, cls: str, path: str) -> Any:
        """The parity reference of kind ``cls`` (a sentence-transformers class name) for ``path``:
        the peer's own model in fp32 (sentence-transformers', or poolkit's fallback), or the one it
        names (sentence-transformers fp32 for an export)."""
        return self.peer.reference(cls, path, str(self.device))

    def _reference(self, texts: list[str]) -> Any:
        """The reference's vectors of ``texts``."""
        if self.encoder is None:
            return None
        fp32 = self._reference_model("SentenceTransformer", self.model_dir) if self._approximate_peer() else self.encoder
        return fp32.encode(texts, convert_to_tensor=True).float().cpu()

    def _result(
        self, name: str, description: str, items: int, tokens: int, rounds: list[dict[str, float]], flops: float = 0.0
    ) -> Result:
        ours = statistics.median(r["poolkit_s"] for r in rounds)
        theirs = statistics.median(r["peer_s"] for r in rounds) if rounds and "peer_s" in rounds[0] else None
        result = Result(
            name, description, items, tokens, items / ours, items / theirs if theirs else None,
            tokens / ours, tokens / theirs if theirs else None, _median_ratio(rounds), rounds,
        )
        if flops:
            result.poolkit_gflops = flops / ours / 1e9
            result.peer_gflops = flops / theirs / 1e9 if theirs else None
        return result

    def _derived_model(self, path: str, auto_class: str) -> None:
        """Save the model's encoder under a task head of its own family (``auto_class``, a transformers
        ``AutoModelFor...`` name; the head randomly initialised)."""
        import torch
        import transformers

        from ...contracts.errors import InvalidRequest

        config = transformers.AutoConfig.from_pretrained(self.model_dir)
        config.num_labels = 1
        torch.manual_seed(0)
        try:
            model = getattr(transformers, auto_class).from_config(config)
        except ValueError:
            raise InvalidRequest(f"workloads W4 and W7 need a {auto_class} of the model's family; {config.model_type} has none") from None
        model.config.architectures = [type(model).__name__]
        model.base_model.load_state_dict(transformers.AutoModel.from_pretrained(self.model_dir).state_dict(), strict=False)
        model.tie_weights()
        if auto_class == MASKED_LM:
            self._calibrate_sparsity(model, config)
        model.save_pretrained(path)
        transformers.AutoTokenizer.from_pretrained(self.model_dir).save_pretrained(path)

    @staticmethod
    def _calibrate_sparsity(model: PreTrainedModel, config: PretrainedConfig, active: float = 0.01) -> None:
        """Shift the MLM output bias so that about ``active`` of the vocabulary scores above zero, as
        in trained SPLADE models (a random head would light up half the vocabulary)."""
        import torch

        with torch.no_grad():
            ids = torch.randint(1000, int(config.vocab_size), (8, 32), generator=torch.Generator().manual_seed(7))
            pooled = model(input_ids=ids).logits.float().amax(1)  # SPLADE max-pools each term over the tokens
            model.cls.predictions.bias -= torch.quantile(pooled.flatten(), 1 - active)

    def w1(self) -> Result:
        texts = make_corpus(self._n(2000), 22, 0.35, seed=1)
        result = self.embed_workload("W1", "short sentences, 16-64 tokens", texts)
        ours, theirs = self._latency(texts[:50])
        latency = f"one sentence per call: p50 {ours:.1f} ms" + (f" vs {theirs:.1f} ms" if theirs else "")
        result.notes = "; ".join(n for n in (latency, result.notes) if n)
        return result

    def _latency(self, texts: list[str]) -> tuple[float, float | None]:
        """Median milliseconds of embedding one text per call (a single-request server's latency), each library."""
        embed = self._ours_embed()
        for text in texts:  # warm-up: kernels are prepared once per input shape
            embed(text)
            if self.encoder is not None:
                self.encoder.encode(text)
        calls = [embed] + ([self.encoder.encode] if self.encoder is not None else [])
        timings: list[list[float]] = [[] for _ in calls]
        empty = emptier(self.llm, self.encoder)  # the warm-up's states of the same texts are not read
        for text in texts:
            for call, samples in zip(calls, timings):
                empty()
                start = time.perf_counter()
                call(text)
                samples.append(1000 * (time.perf_counter() - start))
        medians = [statistics.median(samples) for samples in timings]
        return medians[0], medians[1] if len(medians) > 1 else None

    def w2(self) -> Result:
        texts = make_corpus(self._n(200), 600, 0.05, seed=2)
        return self.embed_workload("W2", "long documents, truncated to the model limit", texts)

    def w3(self) -> Result:
        texts = make_corpus(self._n(1000), 60, 1.0, seed=3, max_words=600)
        random.Random(3).shuffle(texts)
        return self.embed_workload("W3", "mixed lengths 8-512 tokens, random order", texts)

    def w4(self) -> Result:
        """Rerank 32 queries x 100 documents with a cross-encoder of the model's shape (random head);
        the notes give the latency of one query x 100 documents."""
        import torch

        queries = make_corpus(max(1, int(32 * self.scale)), 8, 0.3, seed=4)
        docs = make_corpus(self._n(100), 120, 0.3, seed=5)
        with tempfile.TemporaryDirectory() as tmp:
            self._derived_model(tmp, SEQUENCE_CLASSIFIER)
            from poolkit import LLM

            reranker = LLM.from_args(self._settings(tmp))
            reason = self.peer.check_ours(reranker.model)
            if reason is not None:
                raise SkipWorkload(f"its cross-encoder: {reason}")
            pairs = [(q, d) for q in queries for d in docs]
            cross = self._dropin("CrossEncoder", reranker)
            if cross is not None:
                ours = lambda: cross.predict(pairs, batch_size=32)  # noqa: E731
            else:
                ours = lambda: [reranker.score(q, docs, tokenization_kwargs=TRUNCATE) for q in queries]  # noqa: E731
            ce = self._peer("CrossEncoder", tmp)
            theirs = (lambda: ce.predict(pairs, batch_size=32)) if ce is not None else None  # noqa: E731
            rounds = _interleave(self.rounds, ours, theirs, cold=(reranker, ce))
            scored = [s for q in queries for s in reranker.score(q, docs, tokenization_kwargs=TRUNCATE)]
            lengths = [len(s.prompt_token_ids) for s in scored]
            result = self._result(
                "W4", f"rerank {len(queries)} queries x {len(docs)} documents", len(pairs), sum(lengths), rounds,
                model_flops(reranker.model, lengths),
            )
            result.padding_fraction_peer = self.peer.padding_fraction(lengths)
            if self.breakdown:
                result.breakdown = breakdown(ours)
            if ce is not None:
                ref = torch.tensor(self._reference_model("CrossEncoder", tmp).predict(pairs, batch_size=32))
                got = torch.tensor(cross.predict(pairs) if cross is not None else [s.outputs.score for s in scored])
                result.max_abs_diff = float((got - ref).abs().max())
                if self._approximate_peer():
                    result.peer_max_abs_diff = float((torch.tensor(ce.predict(pairs, batch_size=32)) - ref).abs().max())
            single = _interleave(
                max(3, self.rounds), lambda: reranker.score(queries[0], docs, tokenization_kwargs=TRUNCATE),
                (lambda: ce.predict(pairs[: len(docs)], batch_size=32)) if ce is not None else None, cold=(reranker, ce),
            )
            latency = {k: 1000 * statistics.median(r[k] for r in single) for k in single[0]}
            result.notes = (
                f"cross-encoder: the model's encoder with a random one-output head; 1 query x {len(docs)} documents: "
                f"{latency['poolkit_s']:.0f} ms" + (f" vs {latency['peer_s']:.0f} ms" if "peer_s" in latency else "")
            )
            if self.memory:
                result.poolkit_peak_rss_mb = peak_rss_mb("poolkit", self._settings(tmp), (queries, docs), self.dtype, "rerank")
                if ce is not None:
                    result.peer_peak_rss_mb = self.peer.peak_rss_mb(self._settings(tmp), (queries, docs), self.peer_dtype, "rerank")
        return result

    def w5(self) -> Result:
        """Inputs of about 50 tokens each (33 words, little spread): the published GPU records'
        short-input shape, next to W2's 512."""
        texts = make_corpus(self._n(2000), 33, 0.1, seed=5)
        return self.embed_workload("W5", "~50-token inputs", texts)

    def w6(self) -> Result:
        """MaxSim of 1 query (32 x 128) against 1,000 documents (<= 300 x 128): kernel vs einsum."""
        import torch

        from ...plugins.lookup import select_kernel

        gen = torch.Generator().manual_seed(6)
        lens = torch.randint(50, 300, (self._n(1000),), generator=gen).tolist()
        query = torch.nn.functional.normalize(torch.randn(32, 128, generator=gen), dim=-1).to(self.device)
        docs = [torch.nn.functional.normalize(torch.randn(n, 128, generator=gen), dim=-1).to(self.device) for n in lens]
        flat = torch.cat(docs)
        cu = torch.tensor([0] + lens, device=self.device).cumsum(0)
        kernel = select_kernel("maxsim", self.device)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)

        def einsum() -> Any:
            padded = torch.nn.utils.rnn.pad_sequence(docs, batch_first=True)
            mask = torch.arange(padded.shape[1], device=self.device)[None] < torch.tensor(lens, device=self.device)[:, None]
            sims = torch.einsum("qd,ntd->nqt", query, padded).masked_fill(~mask[:, None], float("-inf"))
            return sims.max(-1).values.sum(-1)

        def synced(fn: Callable[[], Any]) -> Callable[[], Any]:
            return lambda: (fn(), sync())

        rounds = _interleave(self.rounds, synced(lambda: kernel(query, flat, cu)), synced(einsum))
        result = self._result("W6", f"ColBERT MaxSim, 1 query x {len(lens)} documents", len(lens), sum(lens), rounds)
        result.max_abs_diff = float((kernel(query, flat, cu) - einsum()).abs().max())
        result.notes = f"peer: padded einsum (the PyLate-style baseline); kernel selected for {self.device.type}"
        return result

    def w7(self) -> Result:
        """SPLADE on short sentences: sparse vectors of a masked-LM of the model's shape vs ``SparseEncoder``."""
        import torch
        from poolkit import LLM

        texts = make_corpus(self._n(1000), 22, 0.35, seed=7)
        with tempfile.TemporaryDirectory() as tmp:
            self._derived_model(tmp, MASKED_LM)
            llm = LLM.from_args(self._settings(tmp))
            encoder = self._peer("SparseEncoder", tmp)
            sparse = self._dropin("SparseEncoder", llm)
            if sparse is not None:
                ours = lambda: sparse.encode(texts, batch_size=32)  # noqa: E731
            else:
                ours = lambda: llm.sparse_embed(texts, tokenization_kwargs=TRUNCATE)  # noqa: E731
            theirs = (lambda: encoder.encode(texts, batch_size=32)) if encoder is not None else None  # noqa: E731
            rounds = _interleave(self.rounds, ours, theirs, cold=(llm, encoder))
            outputs = llm.sparse_embed(texts, tokenization_kwargs=TRUNCATE)
            lengths = [len(o.prompt_token_ids) for o in outputs]
            decoder = 2 * int(self.config.hidden_size) * int(self.config.vocab_size)  # the tied MLM decoder
            flops = model_flops(llm.model, lengths, per_token=decoder)
            result = self._result("W7", "SPLADE sparse vectors, short sentences", len(texts), sum(lengths), rounds, flops)
            result.padding_fraction_peer = self.peer.padding_fraction(lengths)
            if encoder is not None:
                sample = texts[: min(len(texts), 64)]
                if sparse is not None:
                    got = sparse.encode(sample).to_dense().float()
                else:
                    got = torch.stack([torch.as_tensor(o.outputs.data).float() for o in llm.encode(sample, pooling_task="sparse_embed", tokenization_kwargs=TRUNCATE)])
                ref = self._reference_model("SparseEncoder", tmp).encode(sample, convert_to_tensor=True).to_dense().float().cpu()
                result.min_cosine = float(torch.nn.functional.cosine_similarity(got, ref).min())
                result.max_abs_diff = float((got - ref).abs().max())
            if self.memory:
                result.poolkit_peak_rss_mb = peak_rss_mb("poolkit", self._settings(tmp), texts, self.dtype, "sparse")
                if encoder is not None:
                    result.peer_peak_rss_mb = self.peer.peak_rss_mb(self._settings(tmp), texts, self.peer_dtype, "sparse")
            active = statistics.mean(len(o.outputs.indices) for o in outputs)
            result.notes = (
                f"masked-LM of the model's shape (its encoder, a random MLM head biased to ~1% active terms); "
                f"{active:.0f} non-zero terms per text on average"
            )
        return result

    def w9(self) -> Result:
        """Cold start: a fresh process from start to its first embedding."""
        ours = poolkit_cold_start(self.args)
        theirs = self.peer.cold_start(self.args, self.model_dir, str(self.device))
        run = lambda cmd: subprocess.run(cmd, check=True, capture_output=True)  # noqa: E731
        rounds = _interleave(max(1, self.rounds), lambda: run(ours), (lambda: run(theirs)) if self.encoder is not None else None)
        result = self._result("W9", "cold start: process start to first embedding", 1, 0, rounds)
        result.notes = "items/s here is 1 / seconds"
        return result

    def host(self) -> Result:
        """The host's work per ~50-token text, stage by stage, against the tokenizer's own speed.

        On a model whose compute is negligible (``-m host-bert``) what is left is the host's work:
        tokenizers' ``encode_batch`` on the same texts and threads (the floor, reported as the
        peer), transformers' tokenizer call, the engine's text path alone (prompts to token ids,
        truncation detected and counted), ``LLM.embed`` on the texts and on their token ids, in
        turn in each round, each embed also less the time inside the model's forward passes and
        heads (``Engine.compute_seconds``: what is left is the host's own work); the engine's
        text path and ``encode_batch`` again on 600-word texts cut at the model's limit (512
        tokens on the BERT presets: the ``_long`` stages, against their own floor), and
        ``LLM.embed`` on their first 256 token ids (``embed_token_ids_256``); then
        single-text requests per second to ``poolkit serve`` from 32 clients on this machine
        (with the server extra).
        """
        texts = make_corpus(self._n(20000), 33, 0.1, seed=11)
        import copy

        tok = self.llm.get_tokenizer()
        backend = copy.deepcopy(tok.backend_tokenizer)  # as the engine asks: no padding, cut at the model's limit
        backend.no_padding()
        limit = self.llm.model.max_model_len.value
        if limit:
            backend.enable_truncation(limit)
        ids = [{"prompt_token_ids": e.ids} for e in backend.encode_batch(texts)]
        engine = self.llm.engine

        def engine_tokenize(texts: list[str]) -> Any:  # the text path alone: prompts, special tokens, truncation and its count
            task, prompts, params = self.llm.prepare(texts, TRUNCATE, pooling_task="embed")
            return engine.tokenize(prompts, params, False, engine.input_cap(task))

        # The long case: 600-word texts cut at the model's limit (512 tokens on the BERT presets),
        # where every text is at the limit and must be told cut or not.
        long_texts = make_corpus(max(2, self._n(2000)), 600, 0.1, seed=12)
        long_encoded = backend.encode_batch(long_texts)  # cut at the model's limit
        ids_256 = [{"prompt_token_ids": e.ids[:256]} for e in long_encoded]  # 256 tokens a text
        stages = {
            "encode_batch": lambda: backend.encode_batch(texts),
            "transformers_tokenizer": lambda: tok(texts),
            "engine_tokenize": lambda: engine_tokenize(texts),
            "embed_texts": lambda: self.llm.embed(texts, tokenization_kwargs=TRUNCATE),
            "embed_token_ids": lambda: self.llm.embed(ids),
            "encode_batch_long": lambda: backend.encode_batch(long_texts),
            "engine_tokenize_long": lambda: engine_tokenize(long_texts),
            "embed_token_ids_256": lambda: self.llm.embed(ids_256),
        }
        for run in stages.values():  # warm-up
            run()
        seconds: dict[str, list[float]] = {name: [] for name in stages}
        host: dict[str, list[float]] = {"embed_texts": [], "embed_token_ids": [], "embed_token_ids_256": []}  # less the model's
        for _ in range(self.rounds):
            for name, run in stages.items():
                computed = engine.compute_seconds
                start = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - start)
                if name in host:
                    host[name].append(seconds[name][-1] - (engine.compute_seconds - computed))
        median = {name: statistics.median(s) for name, s in seconds.items()}
        rounds = [{"poolkit_s": a, "peer_s": b} for a, b in zip(seconds["embed_texts"], seconds["encode_batch"])]
        tokens = sum(len(i["prompt_token_ids"]) for i in ids)
        result = self._result("H", "host work per ~50-token text (floor: tokenizers' encode_batch)", len(texts), tokens, rounds)
        long = {name for name in stages if name.endswith(("_long", "_256"))}  # per text of long_texts
        result.stages = {f"{name}_us_per_text": 1e6 * s / len(long_texts if name in long else texts) for name, s in median.items()}
        result.stages.update({
            f"{name}_vs_floor": s / median["encode_batch_long" if name in long else "encode_batch"] for name, s in median.items()
        })
        result.stages["long_tokens_per_text"] = sum(len(e.ids) for e in long_encoded) / len(long_texts)
        result.stages.update({
            f"{name}_host_us_per_text": 1e6 * statistics.median(s) / len(long_texts if name in long else texts) for name, s in host.items()
        })
        requests = self._serve_rate()
        if requests is not None:
            result.stages["serve_single_text_requests_per_s"] = requests
        result.stages.update(self._host_calls())
        over = host_calls.over_budget(result.stages)
        result.notes = ", ".join(
            f"{name} {result.stages[name + '_us_per_text']:.1f} us ({result.stages[name + '_vs_floor']:.2f}x)"
            for name in stages if name not in long
        ) + f"; {len(long_texts)} texts cut at {result.stages['long_tokens_per_text']:.0f} tokens: " + ", ".join(
            f"{name} {result.stages[name + '_us_per_text']:.1f} us ({result.stages[name + '_vs_floor']:.2f}x)" for name in sorted(long)
        ) + "; host work alone (less the model's forward passes and heads): " + ", ".join(
            f"{name} {result.stages[name + '_host_us_per_text']:.1f} us" for name in host
        ) + (f"; serve: {requests:.0f} single-text requests/s from 32 clients" if requests is not None else "") + (
            "; Python calls: " + ", ".join(f"{name} {result.stages[name]:.0f} (budget {budget})"
                                           for name, budget in host_calls.BUDGETS.items() if name in result.stages)
            + (f" -- OVER BUDGET: {'; '.join(over)}" if over else "")
        )
        return result

    def _host_calls(self) -> dict[str, float]:
        """The single-text path's Python calls (:mod:`~poolkit.entrypoints.bench.host_calls`): the
        engine's always, the server's with the server extra."""
        counts = {"engine_calls_per_batch": host_calls.engine_calls(self.llm)}
        try:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError:
            return counts
        return {**counts, **host_calls.serve_calls(self.llm)}

    def _serve_rate(self, clients: int = 32) -> float | None:
        """Single-text requests per second to ``poolkit serve`` on the bench's model; ``None`` without the server extra."""
        try:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError:
            return None
        from .load import StartedServer, run_load

        server = StartedServer(self.args.model_copy(update={"model": self.model_dir}))
        try:
            run_load(server.url, clients=clients, seconds=2.0, inputs_per_request=1)  # warm-up
            report = run_load(server.url, clients=clients, seconds=max(5.0, 20.0 * self.scale), inputs_per_request=1)
        finally:
            server.stop()
        return report.as_dict()["requests_per_s"]

    def w10(self) -> Result:
        texts = [("pathological input " * 30000)[: 100_000 + 20_000 * i] for i in range(self._n(20))]
        return self.embed_workload("W10", "pathological: 100k-500k character inputs, truncated", texts)


WORKLOADS = {
    "W1": Bench.w1, "W2": Bench.w2, "W3": Bench.w3, "W4": Bench.w4, "W5": Bench.w5, "W6": Bench.w6, "W7": Bench.w7, "W9": Bench.w9,
    "W10": Bench.w10, "H": Bench.host, "P": prefix_workload,
    "PR": prefix_rerank_workload, "PS": prefix_server_workload, "I": image_workload, "R": retrieval_workload,
}

