"""poolkit's TEI routes as TEI's own spec describes them (issue 52, item 11).

The spec is TEI v1.7.1: its published OpenAPI document (``tests/data/tei/openapi-1.7.1.json``,
vendored unmodified), the same release's router (``router/src/http/server.rs``: the statuses each
route annotates, the routes ``GET /`` and ``POST /`` by model type; ``types.rs``: how a body
deserialises) and core (``core/src/tokenization.rs``: which inputs are empty), and the requests
of its README and quick tour. schemathesis generates requests from TEI's document for each of its
12 operations and checks every answer of poolkit against it (no 5xx, documented statuses, content
types, headers and bodies); hand-written tests pin what the document cannot say: an empty side of
a pair is scored, empty inputs are TEI's 413 ``Validation``, empty lists its 400 ``Empty``, ``POST /``
reranks on a reranker, ``GET /`` is TEI's health alias.

Where poolkit departs from TEI on purpose, the test says ``DEPARTURE`` and why.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_server_tei import SPLADE, assert_tei_error  # noqa: E402

from poolkit import LLM  # noqa: E402
from poolkit.contracts.io import Prompt  # noqa: E402
from poolkit.entrypoints.server import ServerLimits, create_app  # noqa: E402

TEI_DOCUMENT = Path(__file__).parents[1] / "data" / "tei" / "openapi-1.7.1.json"
#: The checks an answer must pass to conform to TEI's document.
CONFORMANCE = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
               response_schema_conformance]
#: The model each of TEI's operations runs on here (the route's model type in TEI).
OPERATIONS = {
    ("POST", "/embed"): "minilm", ("POST", "/embed_all"): "minilm", ("POST", "/similarity"): "minilm",
    ("POST", "/tokenize"): "minilm", ("POST", "/decode"): "minilm", ("GET", "/info"): "minilm",
    ("GET", "/health"): "minilm", ("GET", "/metrics"): "minilm", ("POST", "/v1/embeddings"): "minilm",
    ("POST", "/rerank"): "reranker", ("POST", "/predict"): "classifier", ("POST", "/embed_sparse"): "splade",
}
#: DEPARTURE: /v1/embeddings is poolkit's OpenAI route, answering as OpenAI's API and vLLM do (its
#: errors are ``{"error": {"message", "type", "param", "code"}}`` with a 400 for a bad input and a
#: 404 for a ``model`` it does not serve, where TEI's are ``{"message", "code", "type"}`` with TEI's
#: statuses and ignore ``model``): OpenAI's clients read it. Its 200s are TEI's shape (tested below).
NOT_TEI_S = {("POST", "/v1/embeddings")}
EXAMPLES = 12
ERROR = {"error", "error_type"}


def tei_spec() -> dict:
    """TEI's document, with what TEI v1.7.1's router annotates (``server.rs``'s ``utoipa::path``)
    and sends but the published document omits: the 400 ``Empty`` of every inference route
    (``Batch is empty``), the 413 ``Validation`` of /tokenize and /decode, and ``Empty`` among the
    error types."""
    doc = json.loads(TEI_DOCUMENT.read_text())
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for path, item in doc["paths"].items():
        answers = item.get("post", {}).get("responses")
        if answers is None:
            continue
        if path != "/v1/embeddings":
            answers.setdefault("400", {"description": "Batch is empty", "content": copy.deepcopy(error)})
        if path in ("/tokenize", "/decode"):
            answers.setdefault("413", {"description": "Batch size error", "content": copy.deepcopy(error)})
    doc["components"]["schemas"]["ErrorType"]["enum"].append("Empty")
    return doc


def teis_empty_verdict(path: str, body) -> tuple[int, str] | None:
    """What TEI v1.7.1 answers a body of ``path`` that its rules on emptiness refuse (before any
    model runs), or ``None``: a list the route checks itself is a 400 ``Empty``; an input with
    nothing in it (a text, a pair of two, token ids) TEI's tokenizer's 413 ``Validation``
    (``EncodingInput::is_empty``: a pair is empty only when both sides are)."""
    if not isinstance(body, dict):
        return None
    empty, validation = (400, "Empty"), (413, "Validation")
    if path in ("/embed", "/embed_all", "/embed_sparse"):
        inputs = body.get("inputs")
        if isinstance(inputs, list) and inputs and not all(isinstance(i, int) for i in inputs):
            return validation if any(i in ("", []) for i in inputs) else None
        return validation if inputs in ("", []) else None  # TEI reads [] as one input of no token ids
    if path == "/predict":
        inputs = body.get("inputs")
        if isinstance(inputs, str):
            return validation if inputs == "" else None
        if not isinstance(inputs, list) or not inputs:
            return None  # [] does not deserialise: 422
        items = [inputs] if all(isinstance(i, str) for i in inputs) else inputs
        return validation if any(isinstance(i, list) and i and all(t == "" for t in i) for i in items) else None
    if path == "/rerank":
        texts = body.get("texts")
        if texts == []:
            return empty
        return validation if isinstance(texts, list) and body.get("query") == "" and "" in texts else None
    if path == "/similarity":
        inputs = body.get("inputs") if isinstance(body.get("inputs"), dict) else {}
        if inputs.get("sentences") == []:
            return empty
        texts = [inputs.get("source_sentence"), *(inputs.get("sentences") or [])]
        return validation if "" in texts else None
    if path == "/tokenize":
        inputs = body.get("inputs")
        if inputs == []:
            return empty
        return validation if inputs == "" or (isinstance(inputs, list) and "" in inputs) else None
    if path == "/decode":
        ids = body.get("ids")
        return validation if ids == [] or (isinstance(ids, list) and [] in ids) else None
    return None


def _empty_refusal(response) -> bool:
    """Whether ``response`` refuses an input for being empty."""
    try:
        message = response.json().get("error", "")
    except (ValueError, AttributeError):
        return False
    return isinstance(message, str) and ("cannot be empty" in message or "an empty string" in message)


def teis_verdict_on_empty_inputs(ctx, response, case):
    """A valid request per TEI's document that TEI's rules on emptiness refuse gets TEI's status and
    type; one they let through (a pair with one empty side) is not refused for being empty."""
    expected = teis_empty_verdict(case.operation.path, case.body)
    if expected is not None:
        got = (response.status_code, (_json(response) or {}).get("error_type"))
        assert got == expected, f"TEI answers {expected}, poolkit {got}: {response.text[:200]}"
    else:
        assert not _empty_refusal(response), f"TEI does not refuse this as empty: {response.text[:200]}"
    return None


def _json(response):
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


#: DEPARTURE: /rerank and /tokenize are vLLM's paths too. A body that is not a JSON object with
#: TEI's field (``texts``; ``inputs``), or has one of vLLM's, is vLLM's request and gets vLLM's
#: answer (a 400 in vLLM's error shape, where TEI's framework answers in plain text): its status
#: is held to TEI's document, not its body.
SHARED = {"/rerank": ("texts", ("documents",)), "/tokenize": ("inputs", ("prompt", "messages"))}


def _vllms(path: str, body) -> bool:
    if path not in SHARED:
        return False
    field, vllm_fields = SHARED[path]
    return not isinstance(body, dict) or field not in body or any(f in body for f in vllm_fields)


def conformance_failures(app, method: str, path: str, examples: int = EXAMPLES) -> list[str]:
    """Every answer of ``app`` to schemathesis' requests for one operation of TEI's document,
    positive and negative, that fails a check of :data:`CONFORMANCE` (and, for a valid request,
    :func:`teis_verdict_on_empty_inputs`): its request and why."""
    schema = schemathesis.openapi.from_dict(tei_spec())
    schema.app = app
    (operation,) = [r.ok() for r in schema.get_all_operations() if r.ok().path == path and r.ok().method.upper() == method]
    failures: list[str] = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        extra = [teis_verdict_on_empty_inputs] if mode is GenerationMode.POSITIVE else []

        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case):
            checks = [not_a_server_error, status_code_conformance] if _vllms(path, case.body) else CONFORMANCE + extra
            try:
                case.call_and_validate(checks=checks)
            except (Exception, FailureGroup) as exc:  # a check failed: note it, go on
                failures.append(f"{mode.value} {json.dumps(case.body)[:200]}: {' '.join(str(exc).split())[:400]}")

        try:
            run()
        except Unsatisfiable:  # no invalid request for an operation without parameters
            assert mode is GenerationMode.NEGATIVE and method == "GET"
    return failures


# -- models ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import build_classifier

    root = tmp_path_factory.mktemp("tei-spec")
    return {"classifier": LLM(str(build_classifier(root / "c3", "bert", 3))), "reranker": LLM(str(build_classifier(root / "r1", "bert", 1)))}


@pytest.fixture(scope="module")
def apps(minilm, tiny, splade_dir):
    limits = ServerLimits(max_request_tokens=20_000)
    models = {"minilm": minilm, **tiny, "splade": LLM(str(splade_dir), hf_overrides=SPLADE)}
    return {name: create_app(llm, served_model_name=name, limits=limits) for name, llm in models.items()}


@pytest.fixture(scope="module")
def clients(apps):
    with TestClient(apps["minilm"]) as m, TestClient(apps["reranker"]) as r, TestClient(apps["classifier"]) as c:
        with TestClient(apps["splade"]) as s:
            yield {"minilm": m, "reranker": r, "classifier": c, "splade": s}


# -- every operation of TEI's document -------------------------------------------------------------


def test_the_spec_has_teis_twelve_operations():
    doc = tei_spec()
    operations = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    assert operations == set(OPERATIONS)
    assert doc["info"]["version"] == "1.7.1"


@pytest.mark.parametrize(("method", "path"), sorted(set(OPERATIONS) - NOT_TEI_S), ids=lambda x: x)
def test_each_operation_conforms_to_teis_document(apps, method, path):
    failures = conformance_failures(apps[OPERATIONS[method, path]], method, path)
    assert not failures, "\n".join(failures[:5])


def test_openai_embeddings_200s_conform_to_teis_document(apps):
    """DEPARTURE (see :data:`NOT_TEI_S`): only the route's valid requests are held to TEI's document."""
    schema = schemathesis.openapi.from_dict(tei_spec())
    schema.app = apps["minilm"]
    (operation,) = [r.ok() for r in schema.get_all_operations() if r.ok().path == "/v1/embeddings"]
    seen = []

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    def run(case):
        response = case.call()
        seen.append(response.status_code)
        if response.status_code == 200:
            case.validate_response(response, checks=CONFORMANCE)
        else:  # poolkit's (OpenAI's) error body; a `model` it does not serve is a 404 (TEI ignores the field)
            assert response.status_code in (400, 404, 413) and set(response.json()) == {"error"}, response.text

    run()
    assert 200 in seen


# -- the documented examples (README, quick tour, the document's own) ------------------------------


def test_readme_examples(clients, minilm, tiny, splade_dir):
    m, r, c, s = clients["minilm"], clients["reranker"], clients["classifier"], clients["splade"]
    one = m.post("/embed", json={"inputs": "What is Deep Learning?"})
    assert one.status_code == 200 and len(one.json()) == 1 and len(one.json()[0]) == 384
    batch = m.post("/embed", json={"inputs": ["Today is a nice day", "I like you"]})
    assert batch.status_code == 200 and len(batch.json()) == 2
    ranks = r.post("/rerank", json={"query": "What is Deep Learning?", "texts": ["Deep Learning is not...", "Deep learning is..."],
                                    "raw_scores": False})
    assert ranks.status_code == 200 and sorted(x["index"] for x in ranks.json()) == [0, 1]
    assert [set(x) for x in ranks.json()] == [{"index", "score"}] * 2
    predicted = c.post("/predict", json={"inputs": "I like you."})
    assert predicted.status_code == 200 and {x["label"] for x in predicted.json()} == {"class_0", "class_1", "class_2"}
    batch = c.post("/predict", json={"inputs": [["I like you."], ["I hate pineapples"]]})
    assert batch.status_code == 200 and [len(row) for row in batch.json()] == [3, 3]
    sparse = s.post("/embed_sparse", json={"inputs": "I like you."})
    assert sparse.status_code == 200 and all(set(x) == {"index", "value"} for x in sparse.json()[0])


def test_the_documents_examples(clients):
    """The ``example`` of each request schema of TEI's document, sent as it is."""
    examples = tei_spec()["components"]["schemas"]
    m = clients["minilm"]
    similarity = {"inputs": {"source_sentence": examples["SimilarityInput"]["properties"]["source_sentence"]["example"],
                             "sentences": examples["SimilarityInput"]["properties"]["sentences"]["example"]}}
    answer = m.post("/similarity", json=similarity)
    assert answer.status_code == 200 and len(answer.json()) == 1
    rerank = {"query": examples["RerankRequest"]["properties"]["query"]["example"],
              "texts": examples["RerankRequest"]["properties"]["texts"]["example"]}
    assert clients["reranker"].post("/rerank", json=rerank).status_code == 200
    assert clients["classifier"].post("/predict", json={"inputs": examples["PredictInput"]["example"]}).status_code == 200
    tokens = m.post("/tokenize", json={"inputs": "test"}).json()
    assert [set(t) for t in tokens[0]] == [set(examples["TokenizeResponse"]["example"][0][0])] * len(tokens[0])
    assert m.post("/decode", json={"ids": [t["id"] for t in tokens[0]]}).json() == examples["DecodeResponse"]["example"]


# -- what the document cannot say: empty inputs ----------------------------------------------------

EMPTY_INPUTS = "Input validation error: `inputs` cannot be empty"


def test_a_pair_with_one_empty_side_is_scored_as_teis(clients, tiny):
    """TEI's ``EncodingInput::Dual`` is empty only when both sides are: a RAG pipeline's empty chunk
    is scored, by /rerank and /predict alike."""
    reranker, r = tiny["reranker"], clients["reranker"]
    for query, texts in (("what is paris", ["", "paris is in france"]), ("", ["paris is in france", "x"])):
        got = r.post("/rerank", json={"query": query, "texts": texts, "return_text": True})
        assert got.status_code == 200, got.text
        expected = [o.outputs.score for o in reranker.score(query, texts)]
        assert {x["index"]: x["score"] for x in got.json()} == pytest.approx(dict(enumerate(expected)), abs=1e-6)
        assert {x["index"]: x["text"] for x in got.json()} == dict(enumerate(texts))
    for pair in (["", "paris is in france"], ["what is paris", ""]):
        got = r.post("/predict", json={"inputs": pair})
        assert got.status_code == 200, got.text
        (expected,) = reranker.classify(Prompt(text=pair[0], text_pair=pair[1]))
        assert got.json()[0]["score"] == pytest.approx(expected.outputs.probs[0], abs=1e-6)
    batch = clients["classifier"].post("/predict", json={"inputs": [["a", ""], ["", "b"], ["c"]]})
    assert batch.status_code == 200 and [len(row) for row in batch.json()] == [3, 3, 3]


def test_empty_inputs_are_teis_413_validation(clients):
    """An input with nothing in it (a text, a pair of two, token ids): TEI's tokenizer refuses it,
    ``Input validation error: ... cannot be empty``, 413 ``Validation``."""
    m, r, c = clients["minilm"], clients["reranker"], clients["classifier"]
    for path in ("/embed", "/embed_all"):
        for inputs in ("", [], ["a", ""], ["a", []], [[]]):  # TEI reads [] as one input of no token ids
            assert_tei_error(m.post(path, json={"inputs": inputs}), 413, "Validation", EMPTY_INPUTS)
    assert_tei_error(clients["splade"].post("/embed_sparse", json={"inputs": ""}), 413, "Validation", EMPTY_INPUTS)
    assert_tei_error(r.post("/rerank", json={"query": "", "texts": ["a", ""]}), 413, "Validation", EMPTY_INPUTS)
    for inputs in ("", [""], ["", ""], [["a"], ["", ""]]):
        assert_tei_error(c.post("/predict", json={"inputs": inputs}), 413, "Validation", EMPTY_INPUTS)
    similarity = {"inputs": {"source_sentence": "", "sentences": ["a"]}}
    assert_tei_error(m.post("/similarity", json=similarity), 413, "Validation", EMPTY_INPUTS)
    assert_tei_error(m.post("/tokenize", json={"inputs": ""}), 413, "Validation", EMPTY_INPUTS)
    assert_tei_error(m.post("/tokenize", json={"inputs": ["a", ""]}), 413, "Validation", EMPTY_INPUTS)
    for ids in ([], [[]], [[101], []]):
        assert_tei_error(m.post("/decode", json={"ids": ids}), 413, "Validation", "Input validation error: `input_ids` cannot be empty")


def test_empty_lists_are_teis_400_empty(clients):
    """A list TEI's route checks itself before anything runs: 400 ``Empty``."""
    m = clients["minilm"]
    assert_tei_error(clients["reranker"].post("/rerank", json={"query": "q", "texts": []}), 400, "Empty", "`texts` cannot be empty")
    assert_tei_error(m.post("/similarity", json={"inputs": {"source_sentence": "a", "sentences": []}}), 400, "Empty",
                     "`inputs.sentences` cannot be empty")
    assert_tei_error(m.post("/tokenize", json={"inputs": []}), 400, "Empty", "`inputs` cannot be empty")
    # TEI: `[]` does not deserialise as /predict's inputs (serde's invalid length 0); DEPARTURE: the
    # 422 is JSON in TEI's error shape where TEI's framework answers plain text.
    assert_tei_error(clients["classifier"].post("/predict", json={"inputs": []}), 422, "Validation", contains="invalid length 0")


# -- the root routes -------------------------------------------------------------------------------


def test_post_root_reranks_on_a_reranker(clients, tiny):
    """TEI's ``POST /`` is the route of the model's type: /rerank for a reranker (a one-label
    classifier), /predict for a classifier, /embed_sparse for SPLADE, /embed for any other."""
    r = clients["reranker"]
    body = {"query": "what is paris", "texts": ["paris is in france", "", "berlin"], "return_text": True}
    assert r.post("/", json=body).json() == r.post("/rerank", json=body).json()
    assert set(r.post("/", json=body).json()[0]) == {"index", "text", "score"}
    assert_tei_error(r.post("/", json={"query": "q", "texts": []}), 400, "Empty", "`texts` cannot be empty")
    # poolkit also predicts with a body of /predict's shape (huggingface_hub's text_classification),
    # which TEI refuses with a 422 on a reranker
    assert r.post("/", json={"inputs": "I like you"}).json() == r.post("/predict", json={"inputs": "I like you"}).json()
    c = clients["classifier"]
    assert c.post("/", json={"inputs": ["a", ""]}).json() == c.post("/predict", json={"inputs": ["a", ""]}).json()
    s = clients["splade"]
    assert s.post("/", json={"inputs": "paris"}).json() == s.post("/embed_sparse", json={"inputs": "paris"}).json()
    m = clients["minilm"]
    assert m.post("/", json={"inputs": "paris"}).json() == m.post("/embed", json={"inputs": "paris"}).json()
    assert_tei_error(m.post("/", json={"query": "q", "texts": ["a"]}), 422, "Validation")  # an embedding model embeds


def test_get_root_is_teis_health_alias(clients, minilm):
    """TEI's ``GET /`` (and ``/health``): 200 with an empty body, public like /health; 503
    ``Unhealthy`` otherwise."""
    ok = clients["minilm"].get("/")
    assert ok.status_code == 200 and ok.content == b""
    with TestClient(create_app(minilm, served_model_name="m", api_key="secret")) as c:
        assert c.get("/").status_code == 200  # no key needed, as /health
        assert c.post("/", json={"inputs": "x"}).status_code == 401  # POST / still needs it
        c.app.state.poolkit.draining = True
        try:
            assert_tei_error(c.get("/"), 503, "Unhealthy")
        finally:
            c.app.state.poolkit.draining = False


def test_poolkits_openapi_for_teis_routes_says_what_they_do(apps):
    """poolkit's /openapi.json: a pair with one empty side is valid, two are not; an empty text or
    id list is not; GET / is public with 200 and 503; POST / of a reranker takes /rerank's body."""
    import jsonschema

    def valid(doc, name, body):
        return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]}).is_valid(body)

    with TestClient(apps["reranker"]) as c:
        doc = c.get("/openapi.json").json()
    for name, body in (("TeiRerankRequest", {"query": "", "texts": ["a"]}), ("TeiRerankRequest", {"query": "q", "texts": ["", "a"]}),
                       ("PredictRequest", {"inputs": ["", "b"]}), ("PredictRequest", {"inputs": [["a", ""], ["b"]]})):
        assert valid(doc, name, body), (name, body)
    for name, body in (("TeiRerankRequest", {"query": "", "texts": ["a", ""]}), ("TeiRerankRequest", {"query": "q", "texts": []}),
                       ("PredictRequest", {"inputs": ""}), ("PredictRequest", {"inputs": ["", ""]}),
                       ("PredictRequest", {"inputs": [[""]]}), ("DecodeRequest", {"ids": []})):
        assert not valid(doc, name, body), (name, body)
    root = doc["paths"]["/"]
    assert set(root) == {"get", "post"}
    assert "TeiRerankRequest" in json.dumps(root["post"]["requestBody"])
    assert set(root["get"]["responses"]) == {"200", "503"} and "security" not in root["get"]
    assert "content" not in root["get"]["responses"]["200"]
    answers = doc["paths"]["/predict"]["post"]["responses"]
    assert {"200", "400", "413", "422", "424", "429"} <= set(answers)
    assert "empty" in answers["413"]["description"]
