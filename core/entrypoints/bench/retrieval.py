"""Workload R: multi-vector retrieval, what each reduction of the stored token vectors costs and keeps.

The corpus (:func:`make_retrieval_corpus`) is built in code from a seed, nothing downloaded: a set
of people, each named by a first and a last name drawn from two short lists (so that many share
one of the two), and each given one value of every attribute (:data:`ATTRIBUTES`: the city they
were born in, their work, the instrument they play ...). A passage is about one person and states
two or three of their attributes, then mentions a second person who shares the first's first or
last name and states one of that person's attributes, and ends with a filler sentence. A query asks
for one attribute of one person without naming its value ("Which instrument does Marta Kowal
play?"); its relevant passages are exactly those that state that attribute of that person,
whether as the passage's subject or as the one mentioned. The distractors are built in: the
person's other passages (the same name, other attributes), passages where the name is only
mentioned, and passages about a namesake stating the same attribute. At ``--scale 1`` (seed 0): 3,000
passages about 576 people, 300 queries with 2.44 relevant passages each on average; ``--scale``
multiplies both counts.

Every document is encoded once into the model's token vectors (``token_embed``, plain texts: a
model without query and document sides encodes both alike), and every reduction is applied to the
same vectors: token pooling with factors 2 and 3 (``hierarchical_pool``, what the engine applies for a
request's ``PoolingParams(token_pool_factor=k)``, on the documents only), binary tokens (Cohere's
``ubinary``: the sign bits packed, queries binary too, scored by Hamming MaxSim; and float queries
against the binary documents as ``±1`` vectors), int8 tokens (scored by the cosine of the rows),
and MUVERA fixed-dimensional encodings (fastembed's defaults) whose dot products fetch 100
candidates that float MaxSim reranks. For each: the bytes a document stores, nDCG@10 and
recall@100 over the queries, the time to prepare a document (against the forward pass) and the
search time per query over the whole corpus.
"""

from __future__ import annotations

import math
import random
import re
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from .base import SkipWorkload
from .measure import TRUNCATE, Result

#: Passages and queries at ``--scale 1``.
PASSAGES = 3000
QUERIES = 300
#: The first stage's candidates and the cut-offs of the metrics.
CANDIDATES = 100
NDCG_AT = 10
RECALL_AT = 100

FIRST_NAMES = (
    "Marta", "Ilse", "Tomas", "Anna", "Pieter", "Nadia", "Oskar", "Lena", "Hugo", "Clara", "Felix", "Irene", "Jonas",
    "Sofia", "Mateo", "Greta", "Viktor", "Elena", "Rafael", "Nora", "Emil", "Lucia", "Anton", "Mira",
)
LAST_NAMES = (
    "Kowal", "Novak", "Berger", "Lindqvist", "Moreau", "Rossi", "Hansen", "Costa", "Weber", "Horvat", "Janssen", "Dubois",
    "Fischer", "Silva", "Nielsen", "Petrov", "Keller", "Marino", "Varga", "Ortega", "Brandt", "Okafor", "Sato", "Quinn",
)


@dataclass(frozen=True)
class Attribute:
    """One property every person has: its values, how a passage states it and how a query asks for it."""

    values: tuple[str, ...]
    states: tuple[str, ...]  # "{name} ... {value}" clauses, the name first (a passage's second clause drops it)
    asks: tuple[str, ...]  # questions naming "{name}", never the value


#: A line an attribute: its name, its values, the clauses that state it and the questions that ask for it.
_ATTRIBUTE_TABLE = """
city | Lisbon Porto Vienna Krakow Lyon Turin Bergen Gdansk Seville Utrecht Graz Tartu
     | {name} was born in {value}; {name} grew up in {value} | Where was {name} born?; Which city did {name} grow up in?
work | baker pilot nurse carpenter chemist librarian surveyor architect translator welder
     | {name} works as a {value}; {name} earns a living as a {value} | What does {name} do for a living?; What is the job of {name}?
instrument | violin cello trumpet harp accordion clarinet piano banjo oboe flute
     | {name} plays the {value}; {name} has played the {value} since childhood
     | Which instrument does {name} play?; What instrument can {name} play?
pet | parrot tortoise ferret rabbit goldfish greyhound cat hamster iguana pony
     | {name} keeps a {value} at home; {name} owns a {value} | What pet does {name} keep?; Which animal does {name} own?
sport | rowing fencing archery judo curling cycling handball climbing sailing squash
     | {name} competes in {value}; {name} trains for {value} every weekend
     | Which sport does {name} compete in?; What sport does {name} train for?
subject | geology linguistics astronomy economics botany philosophy statistics chemistry history
     | {name} studied {value} at university; {name} holds a degree in {value}
     | What did {name} study at university?; Which subject is {name}'s degree in?
food | risotto dumplings paella goulash pancakes curry lasagne falafel ramen borscht
     | {name} cooks {value} for friends; {name} likes eating {value} best
     | What is the favourite dish of {name}?; What does {name} cook for friends?
language | Polish Danish Greek Catalan Finnish Czech Dutch Hungarian Portuguese Swedish
     | {name} speaks {value} at home; {name} learned {value} as a child
     | Which language does {name} speak at home?; What language did {name} learn as a child?
"""


def _attributes(table: str) -> dict[str, Attribute]:
    """:data:`_ATTRIBUTE_TABLE` read: an entry starts on an unindented line, its fields split by ``|``."""
    entries = re.sub(r"\n\s+\|", " |", table.strip()).splitlines()  # continuation lines joined to their entry
    out = {}
    for entry in entries:
        name, values, states, asks = (field.strip() for field in entry.split("|"))
        out[name] = Attribute(tuple(values.split()), tuple(states.split("; ")), tuple(asks.split("; ")))
    return out


ATTRIBUTES = _attributes(_ATTRIBUTE_TABLE)

FILLERS = (
    "The town hall opens at nine on weekdays.", "Most of the street was repaved last spring.",
    "A small market is held by the river on Saturdays.", "The local library lends bicycles as well as books.",
    "Trains to the coast leave every hour.", "The old bridge was closed for repairs in winter.",
    "Several neighbours meet at the cafe on the corner.", "The school choir performs twice a year.",
)


@dataclass(frozen=True)
class RetrievalCorpus:
    """Passages, queries, and for each query the indices of the passages relevant to it."""

    passages: list[str]
    queries: list[str]
    relevant: list[frozenset[int]]


def make_retrieval_corpus(passages: int = PASSAGES, queries: int = QUERIES, seed: int = 0) -> RetrievalCorpus:
    """The labelled corpus of the module's docstring: ``passages`` passages and ``queries`` queries
    (fewer if fewer facts are stated), the same for the same arguments on every run."""
    rng = random.Random(seed)
    pairs = [(f, ln) for f in FIRST_NAMES for ln in LAST_NAMES]
    people = rng.sample(pairs, min(len(pairs), max(2, passages // 3)))
    facts = {person: {name: rng.choice(a.values) for name, a in ATTRIBUTES.items()} for person in people}
    by_first: dict[str, list[tuple[str, str]]] = {}
    by_last: dict[str, list[tuple[str, str]]] = {}
    for person in people:
        by_first.setdefault(person[0], []).append(person)
        by_last.setdefault(person[1], []).append(person)

    def clause(person: tuple[str, str], attribute: str) -> str:
        return rng.choice(ATTRIBUTES[attribute].states).format(name=" ".join(person), value=facts[person][attribute])

    texts: list[str] = []
    stated: dict[tuple[tuple[str, str], str], set[int]] = {}
    for index in range(passages):
        person = people[index % len(people)]
        said = rng.sample(sorted(ATTRIBUTES), rng.choice((2, 3)))
        namesakes = [p for p in by_first[person[0]] + by_last[person[1]] if p != person] or [rng.choice(people)]
        other, other_said = rng.choice(namesakes), rng.choice(sorted(ATTRIBUTES))
        sentences = [clause(person, said[0]) + ", and " + clause(person, said[1]).replace(" ".join(person), "also", 1)]
        sentences += [clause(person, a) for a in said[2:]]
        sentences += [f"A friend, {clause(other, other_said)}", rng.choice(FILLERS).rstrip(".")]
        texts.append(". ".join(s[0].upper() + s[1:] for s in sentences) + ".")
        for key in [(person, a) for a in said] + [(other, other_said)]:
            stated.setdefault(key, set()).add(index)
    keys = sorted(stated)
    chosen = rng.sample(keys, min(queries, len(keys)))
    asked = [rng.choice(ATTRIBUTES[a].asks).format(name=" ".join(p)) for p, a in chosen]
    return RetrievalCorpus(texts, asked, [frozenset(stated[k]) for k in chosen])


def ndcg_at(ranking: list[int], relevant: frozenset[int], k: int = NDCG_AT) -> float:
    """Binary-relevance nDCG of the first ``k`` of ``ranking`` (passage indices, best first)."""
    gain = sum(1 / math.log2(i + 2) for i, doc in enumerate(ranking[:k]) if doc in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return gain / ideal if ideal else 0.0


def recall_at(ranking: list[int], relevant: frozenset[int], k: int = RECALL_AT) -> float:
    """The share of ``relevant`` among the first ``k`` of ``ranking``."""
    return len(relevant.intersection(ranking[:k])) / len(relevant) if relevant else 0.0


@dataclass
class Setting:
    """One way of storing and searching the documents, and what it measured."""

    #: The figures' prefix in the report's ``stages``.
    key: str
    name: str
    bytes_per_doc: float
    vectors_per_doc: float
    ndcg_at_10: float
    recall_at_100: float
    #: Milliseconds to turn one document's token vectors into what is stored (0: stored as they come).
    prepare_ms_per_doc: float
    #: Milliseconds to score one query against the whole corpus (its own preparation included).
    search_ms_per_query: float


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and the seconds it took."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _rankings(scores: Any, depth: int) -> list[list[int]]:
    """Each row's ``depth`` best columns, best first."""
    import torch

    return torch.topk(scores, min(depth, scores.shape[1]), dim=1).indices.tolist()


def retrieval_workload(bench: Any) -> Result:
    """Workload R on the :class:`~poolkit.entrypoints.bench.workloads.Bench`'s model (one with token vectors).

    Raises:
        SkipWorkload: the model gives no token vectors (it refuses the ``token_embed`` task).
    """
    import numpy as np
    import torch
    from poolkit.api.muvera import Muvera
    from poolkit.api.st_functions import maxsim, maxsim_compact

    from ...contracts.errors import PoolkitError
    from ...plugins.lookup import select_kernel
    from ..encodings import compact_tokens

    hierarchical_pool = select_kernel("token_pool", "cpu")
    corpus = make_retrieval_corpus(bench._n(PASSAGES), bench._n(QUERIES))
    n_docs, n_queries = len(corpus.passages), len(corpus.queries)

    def encode(texts: list[str]) -> list[torch.Tensor]:
        outputs = bench.llm.encode(texts, pooling_task="token_embed", tokenization_kwargs=TRUNCATE, use_tqdm=False)
        return [torch.as_tensor(o.outputs.data, dtype=torch.float32) for o in outputs]

    try:
        encode(corpus.passages[:32])  # warm-up (the first batches prepare kernels), and the check that the model gives token vectors
    except PoolkitError as exc:
        raise SkipWorkload(f"workload R needs token vectors: {exc}") from None
    docs, forward_s = _timed(lambda: encode(corpus.passages))
    queries, query_forward_s = _timed(lambda: encode(corpus.queries))
    dim = docs[0].shape[1]
    per_doc = lambda seconds: 1000 * seconds / n_docs  # noqa: E731
    per_query = lambda seconds: 1000 * seconds / n_queries  # noqa: E731
    settings: list[Setting] = []

    def add(key: str, name: str, stored_bytes: float, vectors: float, rankings: list[list[int]], prepare_s: float, search_s: float) -> None:
        settings.append(Setting(
            key, name, stored_bytes / n_docs, vectors / n_docs,
            statistics.mean(ndcg_at(r, rel) for r, rel in zip(rankings, corpus.relevant)),
            statistics.mean(recall_at(r, rel) for r, rel in zip(rankings, corpus.relevant)),
            per_doc(prepare_s), per_query(search_s),
        ))

    tokens = sum(len(d) for d in docs)
    full_scores, full_s = _timed(lambda: maxsim(queries, docs))
    add("full", "float32 (full)", 4 * dim * tokens, tokens, _rankings(full_scores, RECALL_AT), 0.0, full_s)
    for factor in (2, 3):
        # what the engine applies for a request's PoolingParams(token_pool_factor=factor) on a model without a pooling module
        pooled, pool_s = _timed(lambda: [hierarchical_pool(d, factor) for d in docs])  # the engine's token_pool kernel
        scores, search_s = _timed(lambda: maxsim(queries, pooled))
        kept = sum(len(d) for d in pooled)
        add(f"pool{factor}", f"token_pool_factor {factor}", 4 * dim * kept, kept, _rankings(scores, RECALL_AT), pool_s, search_s)
    bits, bits_s = _timed(lambda: [compact_tokens(d, "ubinary") for d in docs])
    scores, search_s = _timed(lambda: maxsim_compact([compact_tokens(q, "ubinary") for q in queries], bits, "ubinary"))
    add("binary", "binary (Hamming)", sum(b.nbytes for b in bits), tokens, _rankings(scores, RECALL_AT), bits_s, search_s)
    # Float queries against the binary documents: each stored bit read back as a ±1/sqrt(dim) coordinate.
    signs = lambda b: torch.from_numpy(np.unpackbits(b, axis=-1).astype(np.float32) * 2 - 1) / math.sqrt(dim)  # noqa: E731
    scores, search_s = _timed(lambda: maxsim(queries, [signs(b) for b in bits]))
    add("binary_float_queries", "binary, float queries", sum(b.nbytes for b in bits), tokens, _rankings(scores, RECALL_AT), bits_s, search_s)
    int8, int8_s = _timed(lambda: [compact_tokens(d, "int8") for d in docs])
    scores, search_s = _timed(lambda: maxsim_compact([compact_tokens(q, "int8") for q in queries], int8, "int8"))
    add("int8", "int8 (cosine)", sum(b.nbytes for b in int8), tokens, _rankings(scores, RECALL_AT), int8_s, search_s)

    muvera = Muvera(dim)
    encodings, muvera_s = _timed(lambda: np.stack([muvera.process_document(d) for d in docs]))
    table = torch.from_numpy(encodings)

    def first_stage() -> Any:
        return torch.from_numpy(np.stack([muvera.process_query(q) for q in queries])) @ table.T

    def reranked() -> list[list[int]]:
        candidates = _rankings(first_stage(), CANDIDATES)
        out = []
        for query, found in zip(queries, candidates):
            order = torch.argsort(maxsim([query], [docs[i] for i in found])[0], descending=True, stable=True).tolist()
            out.append([found[i] for i in order])
        return out

    scores, first_s = _timed(first_stage)
    add("muvera", "MUVERA alone", encodings.nbytes, n_docs, _rankings(scores, RECALL_AT), muvera_s, first_s)
    rankings, rerank_s = _timed(reranked)
    add("muvera_rerank", f"MUVERA top {CANDIDATES} + MaxSim", encodings.nbytes + 4 * dim * tokens, tokens + n_docs, rankings, muvera_s, rerank_s)

    result = Result(
        "R", f"multi-vector retrieval: {n_docs} passages, {n_queries} queries", n_docs, tokens, n_docs / forward_s, None,
        tokens / forward_s, None, None, [{"poolkit_s": forward_s}],
    )
    result.stages = {"forward_ms_per_doc": per_doc(forward_s), "forward_ms_per_query": per_query(query_forward_s)}
    for s in settings:
        result.stages.update({f"{s.key}.{field}": value for field, value in asdict(s).items() if field not in ("key", "name")})
    result.notes = format_settings(settings, per_doc(forward_s), per_query(query_forward_s), dim)
    return result


def format_settings(settings: list[Setting], forward_ms: float, query_forward_ms: float, dim: int) -> str:
    """The settings as a table, with the forward pass each step is set against."""
    lines = [
        f"forward pass: {forward_ms:.2f} ms per document, {query_forward_ms:.2f} ms per query; token vectors {dim} wide",
        f"{'setting':<26} {'bytes/doc':>10} {'vectors/doc':>11} {'nDCG@10':>8} {'recall@100':>10} "
        f"{'prepare ms/doc':>14} {'% of forward':>12} {'search ms/query':>15}",
    ]
    for s in settings:
        lines.append(
            f"{s.name:<26} {s.bytes_per_doc:>10,.0f} {s.vectors_per_doc:>11.1f} {s.ndcg_at_10:>8.3f} {s.recall_at_100:>10.3f} "
            f"{s.prepare_ms_per_doc:>14.3f} {100 * s.prepare_ms_per_doc / forward_ms:>11.1f}% {s.search_ms_per_query:>15.2f}"
        )
    return "\n".join(lines)
