"""The load pipeline: :func:`load_model` turns :class:`~poolkit.config.settings.EngineArgs` into a
:class:`~poolkit.loading.model.PoolingModel`.

Resolve the directory (``poolkit_resolve_model``), refuse symlinks out of it, find its parts
(``poolkit_checkpoint_layout``: a sentence-transformers module folder, an adapter repository), read ``config.json``
and the sentence-transformers files, pick the architecture (the registry, ``convert``,
``model_impl``, the resolvers), check the config against the safetensors header, build, load the
weights and the tokenizer, quantize when asked, then let each task check the model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config.conversion import CONVERSIONS, Conversion, base_architecture, has_classifier, missing_base
from ..config.devices import head_dtype, resolve_device, resolve_dtype
from ..config.model_impl import MODEL_IMPLS, TRANSFORMERS_IMPLEMENTATION
from ..contracts.architecture import Architecture, check_architecture
from ..contracts.batch import PackedBatch
from ..contracts.capabilities import ClaimsNames, RefusesDtypes, RunsSTModules, StandsIn
from ..contracts.checkpoint import Checkpoint
from ..contracts.config_checks import overridden_fields
from ..contracts.errors import InvalidRequest, ModelLoadError
from ..contracts.model import Tokenizer
from ..contracts.params import Setting
from ..contracts.sentence_transformers import STConfig
from ..plugins.manager import get_manager, registry
from .hf_config import load_hf_config, one_line
from .model import PoolingModel
from .model_dir import check_symlinks
from .st_config import read_st_config
from .weights import checkpoint_files, checkpoint_shapes, iter_tensors

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from ..config.settings import EngineArgs

logger = logging.getLogger(__name__)

_HUGE = 10**6


def _pick_architecture(
    names: list[str], conversion: Conversion, config: PretrainedConfig, model_impl: str = "auto"
) -> tuple[str, type[Architecture]]:
    archs = registry("architecture")
    impl = MODEL_IMPLS[model_impl]
    for name in names:
        cls = _claimant(name, config) or (archs.get(name) if name in archs else None)
        if cls is not None and impl.allows(cls) and not (conversion.hidden_states and has_classifier(cls)):
            return name, cls
    if conversion.to_base:
        for name in names:
            base = base_architecture(name)
            if base and base in archs and impl.allows(archs.get(base)):
                logger.info("serving %s with the %s architecture (convert=embed)", name, base)
                return base, archs.get(base)
    if conversion.resolve_base:
        for name in names:
            base = base_architecture(name)
            cls = get_manager().resolve_architecture(base, config) if base else None
            if cls is not None and impl.allows(cls) and not has_classifier(check_architecture(base, cls)):
                logger.info("serving %s with %s (%s, convert=embed)", name, cls.__name__, cls.implementation)
                return base, cls
    refused: list[str] = []
    for name in names:
        cls = get_manager().resolve_architecture(name, config)
        if cls is not None:
            check_architecture(name, cls)
            if not impl.allows(cls):
                refused.append(cls.implementation)
                continue
            logger.info("serving %s with %s (%s)", name, cls.__name__, cls.implementation)
            return name, cls
    shown = ", ".join(names) or "none listed in config.json"
    if refused:
        raise ModelLoadError(f"model_impl='{model_impl}': only the {refused[0]} implementation runs {shown}; use model_impl='auto'")
    if impl.only is not None:
        raise ModelLoadError(
            f"model_impl='{model_impl}': nothing runs {shown} with the {impl.only} implementation; use model_impl='auto'"
        )
    why_no_base = missing_base(names) if conversion.hidden_states else None
    if why_no_base:
        raise ModelLoadError(why_no_base)
    why = archs.explain_missing(archs.kind, shown)
    raise ModelLoadError(
        f"no poolkit architecture for {shown}, and no architecture resolver (such as the transformers "
        f"fallback) accepted it; native: {', '.join(archs.names())}. "
        "Install a plugin that provides it, or set hf_overrides={'architectures': [...]}" + (f". {why}" if why else "")
    )


def _claimant(name: str, config: PretrainedConfig) -> type[Architecture] | None:
    """The registered architecture that claims ``name`` for this config
    (:class:`~poolkit.contracts.capabilities.ClaimsNames`), or ``None``."""
    for entry in registry("architecture").entries():
        wanted = entry.obj.claims.get(name) if isinstance(entry.obj, ClaimsNames) else None
        if wanted and all(getattr(config, key, None) == value for key, value in wanted.items()):
            logger.info("serving %s with %s: its config has %s", name, entry.obj.__name__,
                        ", ".join(f"{k}={v!r}" for k, v in wanted.items()))
            return entry.obj
    return None


def _alternatives(names: list[str]) -> str | None:
    """What the registered architectures suggest instead of ``names``
    (:class:`~poolkit.contracts.capabilities.StandsIn`), or ``None``."""
    archs = registry("architecture")
    for name in names:
        for entry in archs.entries():
            checkpoint = entry.obj.alternative_for.get(name) if isinstance(entry.obj, StandsIn) else None
            if checkpoint:
                return f"{name} is not supported; use {entry.name} instead, such as {checkpoint}"
    return None


def _fallback_reason(name: str, cls: type[Architecture], config: PretrainedConfig, args: EngineArgs) -> str:
    """Why the transformers fallback serves ``name`` (its ``cls``): no native port, or ``model_impl``
    asked for it; and the remote code it stands in for, which poolkit refuses to run."""
    native = name in registry("architecture")
    if args.model_impl == "transformers":
        why = "model_impl='transformers' asks for it" + (f" (poolkit has a native port of {name})" if native else "")
    else:
        why = f"no native port of {name}"
    own = getattr(cls, "hf_class", None)
    runs = f"transformers' own {own.__name__ if own is not None else name} runs the model"
    remote = sorted(getattr(config, "auto_map", None) or {})
    if remote:
        return f"{why}; remote code refused: config.json's auto_map ({', '.join(remote)}) is never run, {runs}"
    if args.trust_remote_code:
        return f"{why}; remote code refused: trust_remote_code is ignored, {runs}"
    return why


def _max_model_len(architecture: Architecture, tokenizer: Tokenizer, st: STConfig | None, requested: int | None) -> Setting:
    limit = architecture.max_positions
    tok_max = getattr(tokenizer, "model_max_length", None)
    if requested is not None:
        if requested < 1 or (limit is not None and requested > limit):
            raise InvalidRequest(f"max_model_len={requested} is outside 1..{limit} for this model")
        return Setting(requested, "max_model_len argument")
    if st is not None and st.max_seq_length:
        value = min(st.max_seq_length, limit) if limit else st.max_seq_length
        return Setting(value, f"sentence-transformers {st.tokenizer_config_file}")
    candidates = [(limit, "config.json max_position_embeddings")]
    if tok_max and tok_max < _HUGE:
        candidates.append((int(tok_max), "tokenizer model_max_length"))
    candidates = [(v, s) for v, s in candidates if v]
    if not candidates:
        return Setting(None, "unbounded")
    value, source = min(candidates)
    return Setting(value, source)


def load_model(args: EngineArgs) -> PoolingModel:
    """Resolve ``args.model`` to a directory and build a :class:`PoolingModel` from it.

    Args:
        args: the :class:`poolkit.config.settings.EngineArgs` to load with.

    Raises:
        ModelLoadError: the model cannot be found, is unsafe to load, or no plugin provides its
            architecture.
        InvalidRequest: a setting is invalid for this model.
    """
    conversion = CONVERSIONS[args.convert]
    torch_device = resolve_device(args.device)
    torch_dtype = resolve_dtype(args.dtype, torch_device)

    name = args.model
    path = get_manager().resolve_model(name)
    if path is None:
        raise ModelLoadError(f"model '{name}' was not found")
    if not args.allow_external_symlinks:
        check_symlinks(path)
        if args.tokenizer and Path(args.tokenizer).is_dir():
            check_symlinks(Path(args.tokenizer), "tokenizer")
    layout = get_manager().checkpoint_layout(path)
    hf_config = load_hf_config(layout.config_dir or layout.weights, args.hf_overrides or {}, layout.config)
    hf_config.name_or_path = name
    arch_names = list(getattr(hf_config, "architectures", None) or [])
    try:
        arch_name, arch_cls = _pick_architecture(arch_names, conversion, hf_config, args.model_impl)
    except ModelLoadError:
        if getattr(hf_config, "auto_map", None):
            instead = _alternatives(arch_names)
            raise ModelLoadError(
                f"model '{name}' needs remote code (auto_map in config.json), which poolkit never runs; "
                + (instead or "use a checkpoint whose architecture poolkit or an installed plugin implements")
            ) from None
        raise
    refused = arch_cls.unsupported_dtypes.get(str(torch_dtype).removeprefix("torch.")) if isinstance(arch_cls, RefusesDtypes) else None
    if refused:
        raise ModelLoadError(
            f"The model type '{getattr(hf_config, 'model_type', arch_name)}' does not support "
            f"{str(torch_dtype).removeprefix('torch.')}. Reason: {refused}"
        )
    if conversion.needs_classifier and not has_classifier(arch_cls):
        raise ModelLoadError(
            f"convert='{args.convert}' needs a checkpoint with a classification head; {arch_name} has none"
        )
    fallback = None
    if arch_cls.implementation == TRANSFORMERS_IMPLEMENTATION:
        fallback = f"transformers fallback: {_fallback_reason(arch_name, arch_cls, hf_config, args)}"
        # Said at warning level unless asked for: the fallback pads its batches and runs slower than a native port.
        logger.log(logging.INFO if args.model_impl == "transformers" else logging.WARNING, "%s runs on the %s", arch_name, fallback)
    elif args.trust_remote_code:
        logger.warning("trust_remote_code is ignored: poolkit never runs code shipped with a model")
    declared = getattr(hf_config, "use_activation", None)
    if declared is not None and not isinstance(declared, bool):
        raise ModelLoadError(f"use_activation in config.json (or hf_overrides) must be true or false, got {declared!r}")
    own_modules = arch_cls.st_modules if isinstance(arch_cls, RunsSTModules) else frozenset()
    st = read_st_config(layout.st_dir or path, args.allow_pickle, own_modules)
    if st is not None and st.score_outputs is not None:
        hf_config.num_labels = st.score_outputs  # a CrossEncoder's own score modules are its classifier
    tokenizer_dir = Path(args.tokenizer) if args.tokenizer else layout.tokenizer
    tok = arch_cls.load_tokenizer(tokenizer_dir, hf_config) or _load_tokenizer(tokenizer_dir, hf_config)
    load_warnings = list(arch_cls.inspect_checkpoint(hf_config, Checkpoint(name, path, st)))
    for warning in load_warnings:
        logger.warning("%s", warning)
    arch_cls.configure(hf_config, tok)

    files = checkpoint_files(layout.weights, args.allow_pickle)
    # Before the model is built: an absurd config must not allocate gigabytes first.
    arch_cls.check_config(hf_config, checkpoint_shapes(files), overridden_fields(args.hf_overrides))
    architecture = arch_cls(hf_config)
    architecture.load_weights(iter_tensors(files))
    architecture.load_companion_files(layout.st_dir or path, args.allow_pickle)
    if layout.merge is not None:
        layout.merge(architecture)
    architecture.to(device=torch_device, dtype=torch_dtype).eval()
    classifiers_dtype = head_dtype(hf_config, torch_dtype, args.enable_lora)
    if classifiers_dtype != torch_dtype:
        # Classifiers are a sliver of the work: they stay fp32, like pooling and activations.
        for classifier in (architecture.sequence_classifier(), architecture.token_classifier()):
            if classifier is not None:
                classifier.to(classifiers_dtype)
    if conversion.needs_classifier and architecture.sequence_classifier() is None and architecture.token_classifier() is None:
        raise ModelLoadError(
            f"convert='{args.convert}' needs a checkpoint with a classification head; this {arch_name} has none"
        )
    quantization = None
    if args.quantization is not None:
        texts = calibration_texts(args.calibration)
        limits = [min(n, architecture.max_positions or n) for n in (CALIBRATION_TOKENS, CALIBRATION_DOCUMENT_TOKENS)]
        quantization = architecture.quantize(
            args.quantization, lambda: _calibration_batches(tok, texts, *limits, torch_device), args.quantization_budget
        )
    pooling_model = PoolingModel(
        name=name,
        path=path,
        hf_config=hf_config,
        architecture_name=arch_name,
        architecture=architecture,
        tokenizer=tok,
        st=st,
        pooler_config=args.pooler_settings(),
        device=torch_device,
        dtype=torch_dtype,
        max_model_len=_max_model_len(architecture, tok, st, args.max_model_len),
        allow_pickle=args.allow_pickle,
        convert=args.convert,
        args=args,
        quantization=quantization,
        fallback=fallback,
        warnings=load_warnings,
        layout=layout,
    )
    for entry in registry("task").entries():
        entry.obj.check_model(pooling_model)
    return pooling_model


#: Calibration texts are cut to this many tokens (quantization).
CALIBRATION_TOKENS = 128
#: Calibration also runs the texts joined in order into documents of about this many tokens (the
#: model's limit where lower): the budget then holds at the positions of a document, which short
#: texts never reach.
CALIBRATION_DOCUMENT_TOKENS = 256
#: The built-in calibration texts: a hundred sentences and paragraphs of assorted kinds.
CALIBRATION_FILE = Path(__file__).with_name("calibration.txt")


def calibration_texts(path: str | None) -> list[str]:
    """The non-empty lines of ``path``, or of the built-in calibration texts.

    Raises:
        InvalidRequest: the file cannot be read or has no text.
    """
    try:
        lines = Path(path or CALIBRATION_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"cannot read the calibration file {path}: {one_line(exc)}") from None
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise InvalidRequest(f"the calibration file {path} has no text (one text a line)")
    return texts


def _calibration_batches(
    tokenizer: Tokenizer, texts: list[str], limit: int, document_limit: int, device: torch.device
) -> list[PackedBatch]:
    """``texts`` tokenized (cut to ``limit`` tokens) and packed into batches of up to 64 texts, then
    one batch of the texts joined in order into documents of up to ``document_limit`` tokens."""
    ids = tokenizer(texts, truncation=True, max_length=limit)["input_ids"]
    batches = [PackedBatch.from_sequences(ids[i : i + 64], device=device) for i in range(0, len(ids), 64)]
    documents: list[list[str]] = [[]]
    length = 0
    for text, tokens in zip(texts, ids):
        if length + len(tokens) > document_limit and documents[-1]:
            if len(documents) == 64:  # one batch of them
                break
            documents.append([])
            length = 0
        documents[-1].append(text)
        length += len(tokens)
    if len(texts) > 1:  # then a document is longer than any one text
        joined = tokenizer([" ".join(parts) for parts in documents], truncation=True, max_length=document_limit)["input_ids"]
        batches.append(PackedBatch.from_sequences(joined, device=device))
    return batches


def _load_tokenizer(path: Path, hf_config: PretrainedConfig) -> Tokenizer:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), config=hf_config, trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(f"cannot load a tokenizer from {path}: {type(exc).__name__}: {exc}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"the tokenizer in {path} has no fast (tokenizers) implementation; poolkit needs tokenizer.json")
    return tokenizer
