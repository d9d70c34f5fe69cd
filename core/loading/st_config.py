"""Reading a sentence-transformers model directory faithfully.

``modules.json`` is the spec: every Pooling mode (concatenated when several are on, in
sentence-transformers' order), ``include_prompt``, Dense layers with their activation,
Normalize, ``sentence_bert_config.json`` (``max_seq_length``, ``do_lower_case``, the Transformer module's
"message" modality and ``processing_kwargs``) and the prompts of ``config_sentence_transformers.json``,
a SparseEncoder's ``SpladePooling`` (also as the document route of its ``Router``, whose
``router_config.json`` says which module each route runs: :func:`read_router`) and a CrossEncoder's
``LogitScore``. A module poolkit cannot honour is an error, never silently skipped. What is read fills a
:class:`~poolkit.contracts.sentence_transformers.STConfig` (the contract plugins read it by).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Collection

from ..contracts.errors import ModelLoadError
from ..contracts.sentence_transformers import DenseSpec, RouterSpec, STConfig, TokenPoolingSpec
from .weights import checkpoint_files, iter_tensors

#: sentence-transformers pooling mode -> poolkit pooler name, in ST's concatenation order.
ST_POOLING_MODES = {
    "cls": "CLS",
    "max": "MAX",
    "mean": "MEAN",
    "mean_sqrt_len_tokens": "MEAN_SQRT_LEN",
    "weightedmean": "WEIGHTEDMEAN",
    "lasttoken": "LAST",
}
_LEGACY_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_TOKENIZER_CONFIGS = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
)
#: The modules that are the model itself (read from config.json and the weights, or by a layout:
#: :class:`~poolkit.contracts.checkpoint.Layout`), not settings around it.
_BODY_MODULES = {"Transformer", "MLMTransformer", "StaticEmbedding"}
#: ``model_type`` of multi-vector saves: sentence-transformers' own, and PyLate 3's.
_MULTI_VECTOR_TYPES = frozenset({"MultiVectorEncoder", "ColBERT"})
#: sentence-transformers ``SpladePooling`` settings poolkit implements.
SPLADE_STRATEGIES = ("max", "sum")
SPLADE_ACTIVATIONS = ("relu", "log1p_relu")
#: A Router's file of routes (``types``, ``structure``, ``parameters``).
ROUTER_CONFIG = "router_config.json"
#: The Routers poolkit serves: route -> the module classes it runs, in order (a masked LM's module
#: is an ``MLMTransformer``, or a ``Transformer`` with ``transformer_task="fill-mask"``).
ROUTER_ROUTES = {"query": (("SparseStaticEmbedding",),), "document": (("MLMTransformer", "Transformer"), ("SpladePooling",))}
_ROUTES_SERVED = "query: SparseStaticEmbedding, document: MLMTransformer + SpladePooling"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None


def parse_pooling(config: dict[str, Any]) -> tuple[tuple[str, ...], bool]:
    """Pooling modes (poolkit names) and ``include_prompt`` from a Pooling ``config.json``."""
    if "pooling_mode" in config:
        raw = config["pooling_mode"]
        modes = (raw,) if isinstance(raw, str) else tuple(raw)
    else:
        modes = tuple(mode for key, mode in _LEGACY_KEYS.items() if config.get(key)) or ("mean",)
    unknown = [m for m in modes if m not in ST_POOLING_MODES]
    if unknown:
        raise ModelLoadError(
            f"unknown sentence-transformers pooling mode {unknown[0]!r}; valid modes: {', '.join(ST_POOLING_MODES)}"
        )
    return tuple(ST_POOLING_MODES[m] for m in modes), bool(config.get("include_prompt", True))


def parse_splade_pooling(config: dict[str, Any]) -> dict[str, str]:
    """Strategy and activation of a SpladePooling ``config.json`` (sentence-transformers' defaults)."""
    strategy = config.get("pooling_strategy", "max")
    activation = config.get("activation_function", "relu")
    if strategy not in SPLADE_STRATEGIES:
        raise ModelLoadError(
            f"unknown SpladePooling pooling_strategy {strategy!r}; valid: {', '.join(SPLADE_STRATEGIES)}"
        )
    if activation not in SPLADE_ACTIVATIONS:
        raise ModelLoadError(
            f"unknown SpladePooling activation_function {activation!r}; valid: {', '.join(SPLADE_ACTIVATIONS)}"
        )
    return {"strategy": strategy, "activation": activation}


def parse_logit_score(config: dict[str, Any]) -> dict[str, Any]:
    """``true_token_id`` and ``false_token_id`` of a CrossEncoder ``LogitScore`` ``config.json``."""
    true_id, false_id = config.get("true_token_id"), config.get("false_token_id")
    for name, value in (("true_token_id", true_id), ("false_token_id", false_id)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ModelLoadError(f"LogitScore {name} must be a token id, got {value!r}")
    if true_id is None:
        raise ModelLoadError("LogitScore has no true_token_id")
    if config.get("module_input_name", "causal_logits") != "causal_logits":
        raise ModelLoadError(
            f"LogitScore reads '{config['module_input_name']}'; poolkit reads the LM head's logits (causal_logits) only"
        )
    return {"true_token_id": true_id, "false_token_id": false_id}


def _read_transformer(config: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The "message" modality ``format`` and the ``processing_kwargs`` of a Transformer module's config."""
    modalities = config.get("modality_config") or {}
    message = modalities.get("message")
    message_format = None if message is None else str((message or {}).get("format") or "auto")
    if message_format not in (None, "flat", "structured", "auto"):
        raise ModelLoadError(f"unknown 'message' modality format {message_format!r}; valid: flat, structured, auto")
    kwargs = config.get("processing_kwargs") or {}
    if not isinstance(kwargs, dict) or not all(isinstance(v, dict) for v in kwargs.values()):
        raise ModelLoadError(f"processing_kwargs must map names to dicts of settings, got {kwargs!r}")
    return message_format, kwargs


def _read_dense(model_dir: Path, path: str, allow_pickle: bool) -> DenseSpec:
    folder = model_dir / path
    config = _read_json(folder / "config.json")
    tensors = dict(iter_tensors(checkpoint_files(folder, allow_pickle)))
    weight = next((tensors[k] for k in ("linear.weight", "weight", "dense.weight") if k in tensors), None)
    bias = next((tensors[k] for k in ("linear.bias", "bias", "dense.bias") if k in tensors), None)
    if weight is None:
        raise ModelLoadError(f"Dense module {path} has no linear weight")
    expected = (config.get("out_features"), config.get("in_features"))
    if None not in expected and tuple(weight.shape) != expected:
        raise ModelLoadError(f"Dense module {path} weight has shape {tuple(weight.shape)}, config says {expected}")
    if not config.get("bias", True):
        bias = None
    return DenseSpec(path, weight.float(), None if bias is None else bias.float(), config.get("activation_function", ""))


def parse_token_pooling(config: dict[str, Any], path: str) -> TokenPoolingSpec:
    """A ``HierarchicalTokenPooling`` module's config (sentence-transformers 6: ``pool_factor``,
    ``num_protected_tokens``, ``normalize_embeddings``, ``tasks``, with its defaults 1.0, 1, true and
    ``["document"]``).

    Raises:
        ModelLoadError: a value sentence-transformers would refuse.
    """
    factor, protected = config.get("pool_factor", 1.0), config.get("num_protected_tokens", 1)
    tasks = config.get("tasks") or ["document"]
    tasks = [tasks] if isinstance(tasks, str) else tasks
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1:
        raise ModelLoadError(f"HierarchicalTokenPooling module {path}: pool_factor must be >= 1, got {factor!r}")
    if isinstance(protected, bool) or not isinstance(protected, int) or protected < 0:
        raise ModelLoadError(f"HierarchicalTokenPooling module {path}: num_protected_tokens must be >= 0, got {protected!r}")
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise ModelLoadError(f"HierarchicalTokenPooling module {path}: tasks must be task names, got {tasks!r}")
    return TokenPoolingSpec(float(factor), protected, bool(config.get("normalize_embeddings", True)), tuple(tasks))


def read_router(model_dir: Path, path: str) -> RouterSpec:
    """The sentence-transformers ``Router`` of ``model_dir`` whose folder is ``path``: its
    ``router_config.json`` (or the older ``config.json`` of the same fields), read as
    sentence-transformers' ``Router.load`` reads it (a module named ``""`` is the Router's own
    folder, where the published checkpoints keep their masked LM), and its default route as
    ``Router.__init__`` sets it (``allow_empty_key``: the first route).

    Raises:
        ModelLoadError: a Router poolkit does not serve (other routes or modules, ``route_mappings``),
            a module its types do not name or whose folder is missing, no default route.
    """
    folder = model_dir / path
    config = _read_json(folder / ROUTER_CONFIG) if (folder / ROUTER_CONFIG).is_file() else None
    if config is None and (folder / "config.json").is_file():
        config = _read_json(folder / "config.json")
    if not isinstance(config, dict) or not isinstance(config.get("structure"), dict) or not isinstance(config.get("types"), dict):
        raise ModelLoadError(f"the sentence-transformers Router in {folder} has no {ROUTER_CONFIG} (types, structure)")
    types, structure, parameters = config["types"], config["structure"], config.get("parameters") or {}
    if parameters.get("route_mappings"):
        raise ModelLoadError(f"{ROUTER_CONFIG} routes by route_mappings; poolkit serves a Router of {_ROUTES_SERVED}")

    def kind(module: object) -> str:
        if not isinstance(module, str) or module not in types:
            raise ModelLoadError(f"{ROUTER_CONFIG} routes module {module!r}, which its types do not name")
        if module and not (folder / module).is_dir():
            raise ModelLoadError(f"{ROUTER_CONFIG} names module '{module}', whose folder {folder / module} is missing")
        return str(types[module]).rsplit(".", 1)[-1]

    routes = {name: [kind(m) for m in (modules if isinstance(modules, list) else [modules])] for name, modules in structure.items()}
    served = set(routes) == set(ROUTER_ROUTES) and all(
        len(routes[name]) == len(allowed) and all(k in a for k, a in zip(routes[name], allowed)) for name, allowed in ROUTER_ROUTES.items()
    )
    if not served:
        shown = "; ".join(f"{name}: {' + '.join(kinds) or 'nothing'}" for name, kinds in routes.items())
        raise ModelLoadError(f"the sentence-transformers Router's routes are {shown}; poolkit serves a Router of {_ROUTES_SERVED}")
    default = parameters.get("default_route")
    if default is None and parameters.get("allow_empty_key", True):
        default = next(iter(structure))
    if default not in ROUTER_ROUTES:
        raise ModelLoadError(f"the sentence-transformers Router's default_route {default!r} is not one of its routes (query, document)")
    query, document = structure["query"], structure["document"]
    return RouterSpec(path, default, query[0], document[0], routes["document"][0], document[1])


def read_st_config(model_dir: Path, allow_pickle: bool = False, own: Collection[str] = ()) -> STConfig | None:
    """The sentence-transformers settings of ``model_dir``, or ``None`` if it has no modules.json;
    the module types in ``own`` are the architecture's to run (its ``st_modules``), passed over."""
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return None
    st = STConfig()
    modules = _read_json(modules_file)
    for module in sorted(modules, key=lambda m: m.get("idx", 0)):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = module.get("path", "")
        if kind in _BODY_MODULES or module.get("type") in own:
            continue
        if kind == "Router":
            st.router = read_router(model_dir, path)
            pooling = st.router.folder(model_dir, st.router.pooling) / "config.json"
            st.splade = parse_splade_pooling(_read_json(pooling) if pooling.is_file() else {})
            st.splade["path"] = f"{Path(path, st.router.pooling).as_posix()}/config.json" if pooling.is_file() else "defaults"
            continue
        if kind == "Pooling":
            st.pooling_modes, st.include_prompt = parse_pooling(_read_json(model_dir / path / "config.json"))
            st.pooling_path = f"{path}/config.json"
        elif kind == "Dense":
            st.dense.append(_read_dense(model_dir, path, allow_pickle))
        elif kind == "Normalize":
            st.normalize = True
        elif kind == "LogitScore":
            st.logit_score = parse_logit_score(_read_json(model_dir / path / "config.json"))
            st.logit_score["path"] = f"{path}/config.json"
        elif kind == "MultiVectorMask":  # its skiplist is read with the other ColBERT settings (io_processors/colbert.py)
            if _read_json(model_dir / path / "config.json").get("keep_only_token_ids"):
                raise ModelLoadError(
                    f"MultiVectorMask module {path} keeps only some token ids (image patches); poolkit does not"
                )
        elif kind == "HierarchicalTokenPooling":
            st.token_pooling = parse_token_pooling(_read_json(model_dir / path / "config.json"), path)
        elif kind == "SpladePooling":
            config_path = model_dir / path / "config.json"
            has_config = bool(path) and config_path.is_file()  # path "" would be the model's own config.json
            st.splade = parse_splade_pooling(_read_json(config_path) if has_config else {})
            st.splade["path"] = f"{path}/config.json" if has_config else "defaults"
        else:
            raise ModelLoadError(
                f"sentence-transformers module '{module.get('type')}' in {modules_file.name} is not supported; "
                "poolkit would give different results, so it refuses the model"
            )
    body = st.router.folder(model_dir, st.router.document) if st.router is not None else model_dir
    for name in _TOKENIZER_CONFIGS:
        if (body / name).is_file():
            cfg = _read_json(body / name)
            st.max_seq_length = cfg.get("max_seq_length")
            st.do_lower_case = bool(cfg.get("do_lower_case", False))
            st.tokenizer_config_file = name
            st.message_format, st.processing_kwargs = _read_transformer(cfg)
            break
    extra = model_dir / "config_sentence_transformers.json"
    if extra.is_file():
        cfg = _read_json(extra)
        st.prompts = {k: v for k, v in (cfg.get("prompts") or {}).items() if isinstance(v, str)}
        st.default_prompt_name = cfg.get("default_prompt_name")
        st.similarity_fn_name = cfg.get("similarity_fn_name")
        st.model_type = cfg.get("model_type")
        st.activation_fn = cfg.get("activation_fn")
        st.late_interaction = st.model_type in _MULTI_VECTOR_TYPES or any(
            cfg.get(k) for k in ("query_prefix", "query_length", "document_length")
        )
    if st.logit_score is not None and not st.is_cross_encoder:
        raise ModelLoadError(
            f"a LogitScore module belongs to a CrossEncoder; {extra.name} says model_type {st.model_type!r}"
        )
    return st
