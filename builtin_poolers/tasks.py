"""The built-in tasks, registered through ``poolkit_register_tasks``."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from poolkit.config.conversion import CONVERSIONS
from poolkit.contracts.architecture import LoadedModel
from poolkit.contracts.capabilities import MaskedLMHead
from poolkit.contracts.errors import InvalidRequest, ModelLoadError
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.io import Prompt
from poolkit.contracts.params import LateChunkingParams, PoolingParams, Setting
from poolkit.contracts.pooling import Pooler
from poolkit.contracts.tasks import Head, Task
from poolkit.plugins.manager import registry

from .heads import ClassifierHead, LMHeadStepHead, LMHeadTokenHead, LogitScore, TokenPooledHead, VectorHead
from .token_pooling import TokenPooling, check_pool_factor

STEP_PARAMS = frozenset({"step_tag_id", "returned_token_ids"})


def _poolers(task: Task, model: LoadedModel) -> tuple[tuple[str, ...], list[Pooler]]:
    """The names and the poolers a task uses on a model, checked against the task's granularity."""
    return model.pooling_type(task).value, model.poolers(task)


#: The source of the classifier activation when nothing names one.
DEFAULT_CLASSIFIER_ACTIVATION = "default: sigmoid for one output, softmax for several"


def classifier_activation_setting(model: LoadedModel) -> Setting:
    """The classifier's activation and its source, chosen as transformers' loss and
    sentence-transformers do: the user's ``activation_fn``, ``problem_type``, then a
    sentence-transformers CrossEncoder's ``activation_fn``.

    ``value`` is a registered activation's name, a ``torch.nn.modules`` class path, or ``None``
    for the default: sigmoid for one output, softmax for several.

    Raises:
        ModelLoadError: the sentence-transformers config names an activation outside ``torch.nn``.
    """
    if model.pooler_config.activation_fn:
        return Setting(model.pooler_config.activation_fn, "pooler_config")
    problem = getattr(model.hf_config, "problem_type", None)
    if problem == "regression":
        return Setting("identity", "config.json problem_type (regression)")
    if problem == "multi_label_classification":
        return Setting("sigmoid", "config.json problem_type (multi_label_classification)")
    if problem == "single_label_classification":
        return Setting(None, DEFAULT_CLASSIFIER_ACTIVATION)
    st_config = getattr(model.hf_config, "sentence_transformers", None) or {}
    found = [
        (model.st.activation_fn if model.st is not None else None, "sentence-transformers CrossEncoder activation_fn"),
        (st_config.get("activation_fn"), "config.json sentence_transformers.activation_fn"),
        (
            getattr(model.hf_config, "sbert_ce_default_activation_function", None),
            "config.json sbert_ce_default_activation_function",
        ),
    ]
    name, source = next(((n, s) for n, s in found if n), (None, DEFAULT_CLASSIFIER_ACTIVATION))
    if not name:
        return Setting(None, source)
    if not name.startswith("torch.nn.modules."):
        raise ModelLoadError(
            f"activation '{name}': loading of activation functions is restricted to torch.nn.modules for security reasons"
        )
    cls_name = name.rsplit(".", 1)[-1]
    if cls_name == "Identity":
        return Setting("identity", source)
    if cls_name in ("Sigmoid", "Softmax"):
        return Setting(None, f"{DEFAULT_CLASSIFIER_ACTIVATION} ({source} {cls_name})")
    cls = getattr(torch.nn, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ModelLoadError(f"unknown activation '{name}' in the sentence-transformers config")
    return Setting(name, source)


def classifier_activation(model: LoadedModel) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The activation of a classifier (:func:`classifier_activation_setting`); ``None`` means the
    default: sigmoid for one output, softmax for several."""
    setting = classifier_activation_setting(model)
    if setting.value is None:
        return None
    if setting.source != "pooler_config" and setting.value.startswith("torch.nn.modules."):
        return getattr(torch.nn, setting.value.rsplit(".", 1)[-1])()
    return registry("activation").get(setting.value)


def _classifier_settings(model: LoadedModel, outputs: int) -> dict[str, Setting]:
    """A classifier's activation settings for ``poolkit info``, the default shown as the one
    ``outputs`` columns get."""
    activation = classifier_activation_setting(model)
    if activation.value is None:
        activation = Setting("sigmoid" if outputs == 1 else "softmax", activation.source)
    return {"activation_fn": activation, "use_activation": model.use_activation(from_st_normalize=False)}


class _VectorTask(Task):
    """Embedding-style tasks: pooled hidden states, projected, truncated, normalised."""

    params = frozenset({"dimensions", "use_activation"})
    api_name = "Embedding"

    def build(self, model: LoadedModel) -> Head | None:
        arch = model.architecture
        scores = model.st is not None and model.st.score_outputs is not None  # a CrossEncoder export's score modules
        if (arch.sequence_classifier() is not None or arch.token_classifier() is not None or scores) and not CONVERSIONS[model.convert].hidden_states:
            return None  # a classifier's hidden states are no embedding unless asked (convert="embed")
        names, poolers = _poolers(self, model)
        projector = model.projector
        if projector is not None and model.st is not None:  # a sentence-transformers Dense stack
            width = sum(p.output_size(model.architecture.hidden_size) for p in poolers)
            expected = model.st.dense[0].weight.shape[1]
            if width != expected:
                raise InvalidRequest(
                    f"pooling type {'+'.join(names)} gives {width}-wide vectors, but the model's first "
                    f"sentence-transformers Dense layer takes {expected}"
                )
        activation = registry("activation").get(self.activation_setting(model).value)
        return VectorHead(
            poolers, projector, activation, model.use_activation().value, model.dimensions.value, TokenPooling(model)
        )

    def result_width(self, model: LoadedModel) -> int | None:
        return int(model.embedding_size)

    def activation_setting(self, model: LoadedModel) -> Setting:
        """The activation applied to the vectors: the user's ``activation_fn``, else L2 normalisation."""
        if model.pooler_config.activation_fn:
            return Setting(model.pooler_config.activation_fn, "pooler_config")
        return Setting("normalize", f"task default ({self.name})")

    def settings(self, model: LoadedModel) -> dict[str, Setting]:
        activation = {"activation_fn": self.activation_setting(model), "use_activation": model.use_activation()}
        return {**super().settings(model), **activation}

    def verify(self, params: PoolingParams, model: LoadedModel) -> None:
        super().verify(params, model)
        dims = params.dimensions
        if dims is None:
            return
        if not model.is_matryoshka:
            raise InvalidRequest(
                f'Model "{model.name}" does not support matryoshka representation, '
                "changing output dimensions will lead to poor results."
            )
        allowed = model.matryoshka_dimensions
        if allowed and dims not in allowed:
            raise InvalidRequest(
                f"Model {model.name!r} only supports {allowed} matryoshka dimensions, "
                "use other output dimensions will lead to poor results."
            )
        if dims < 1:
            raise InvalidRequest("Dimensions must be greater than 0")


class EmbedTask(_VectorTask):
    """One vector per input (``LLM.embed``)."""

    name = "embed"
    granularity = "sequence"
    default_pooling_type = "LAST"
    chunkable = True
    output_field = "embedding"
    default_rank = 0

    def build(self, model: LoadedModel) -> Head | None:
        """No head for a late-interaction save (PyLate's, sentence-transformers' ``MultiVectorEncoder``):
        PyLate encodes only token vectors and vLLM's ColBERT pooler serves ``token_embed`` only, so a
        pooled vector of its projected tokens would be a sentence embedding no reference computes."""
        if model.st is not None and model.st.late_interaction:
            return None
        return super().build(model)


class TokenEmbedTask(_VectorTask):
    """One vector per input token (multi-vector retrieval)."""

    name = "token_embed"
    granularity = "token"
    default_pooling_type = "ALL"
    default_rank = 2
    params = _VectorTask.params | {"late_chunking_params", "token_pool_factor"}
    takes_sides = True

    def role_prompts(self, model: LoadedModel, texts: list[str], side: str) -> list[Prompt] | None:
        """A late-interaction (ColBERT) model's queries or documents: its markers, lengths and
        query expansion, as its scorer encodes them; a retriever that writes its sides itself
        (:meth:`poolkit.Architecture.role_prompts`: ColPali, BGE-M3) writes them."""
        own = model.architecture.role_prompts(texts, side, model)
        if own is not None:
            return list(own)
        if not self.has_roles(model):
            return None
        return list(registry("io_processor").get("colbert").pre_process({"texts": texts, "kind": side, "model": model}))

    def param_defaults(self, model: LoadedModel, side: str | None = None) -> dict[str, object]:
        """The model's document pooling (:attr:`LoadedModel.token_pooling`: ``--token-pool-factor``
        or the checkpoint's ``HierarchicalTokenPooling``) for inputs on a side it applies to: a
        document, or, on a model without sides, any input (sentence-transformers counts an input
        encoded without a task as a document). A query is never pooled unless it asks."""
        spec = model.token_pooling
        if spec is None:  # most models: no side to work out on every request
            return {}
        if side is None and not self.has_roles(model):
            side = "document"
        if side not in spec.tasks:
            return {}
        return {"token_pool_factor": spec.pool_factor}

    def own_head(self, head: Head, model: LoadedModel) -> Head:
        """An architecture's own token head, with the request's (or the model's) token pooling after it."""
        return TokenPooledHead(head, TokenPooling(model))

    def has_roles(self, model: LoadedModel) -> bool:
        """A retriever with sides of its own, or a late-interaction (ColBERT) model."""
        return (
            model.architecture.role_prompts([], "query", model) is not None
            or registry("scorer").get("late-interaction").supports(model)
            or model.architecture.score_type == "late-interaction"
        )

    def check_model(self, model: LoadedModel) -> None:
        """Refuse the model's own document pooling (``token_pool_factor``, ``--token-pool-factor``, a
        checkpoint's module) where every request would refuse it: above the model's input limit."""
        spec = model.token_pooling
        if spec is not None:
            try:
                check_pool_factor(spec.pool_factor, model.max_model_len.value)
            except InvalidRequest as exc:
                raise ModelLoadError(f"{exc} (the model's token_pool_factor, --token-pool-factor)") from None

    def verify(self, params: PoolingParams, model: LoadedModel) -> None:
        super().verify(params, model)
        if params.token_pool_factor is not None:
            check_pool_factor(params.token_pool_factor, model.max_model_len.value)
        if params.late_chunking_params is None:
            return
        if model.pooling_type(self).value != ("ALL",):
            raise InvalidRequest("late chunking averages every token's vector: it needs the ALL token pooling type")
        if params.truncate_prompt_tokens is not None:  # the chunk ranges would describe a cut text
            raise InvalidRequest(LateChunkingParams.TEXT_CHANGES)


def _classifier_head(
    model: LoadedModel, head: torch.nn.Module, poolers: Sequence[Pooler] | None = None, step: bool = False
) -> ClassifierHead:
    """A classifier head with the model's activation, default and calibration."""
    return ClassifierHead(
        head,
        classifier_activation(model),
        model.use_activation(from_st_normalize=False).value,
        *_calibration(model),
        poolers=poolers,
        step=step,
    )


def _calibration(model: LoadedModel) -> tuple[float | None, float | None]:
    """The classifier's ``logit_mean`` and ``logit_sigma``: the user's ``pooler_config``, else the
    architecture's defaults (jina-reranker-m0's logit bias, as vLLM sets it for that model)."""
    return model.config_value("logit_mean").value, model.config_value("logit_sigma").value


class ClassifyTask(Task):
    """Class probabilities (or scores) per input (``LLM.classify``, cross-encoder ``LLM.score``).

    The classifier is the architecture's, or a sentence-transformers CrossEncoder export's own
    score modules, which win where both exist: Pooling then Dense layers (the pooled vector
    through the Dense stack), or ``LogitScore`` (the LM head's logits at the last token).
    """

    name = "classify"
    granularity = "sequence"
    api_name = "Classification"
    default_pooling_type = "LAST"
    output_field = "probs"
    default_rank = 1

    def record(self, data: torch.Tensor, model: LoadedModel, options: dict[str, Any]) -> dict[str, Any]:
        """The probabilities and the top class's name (``id2label``)."""
        row: dict[str, Any] = {"probs": data.tolist()}
        if model.id2label and data.numel():
            row["label"] = model.id2label.get(int(data.argmax()))
        return row

    def settings(self, model: LoadedModel) -> dict[str, Setting]:
        return {**super().settings(model), **_classifier_settings(model, model.architecture.num_labels)}

    def result_width(self, model: LoadedModel) -> int | None:
        return max(1, int(model.architecture.num_labels or 1))

    def build(self, model: LoadedModel) -> Head | None:
        head = cross_encoder_classifier(model)
        if head is None:
            head = model.architecture.sequence_classifier()
        if head is None:
            return None
        if isinstance(head, LogitScore) and model.pooling_type(self).source != "pooler_config":
            poolers = [registry("pooler").get("LAST")]  # LogitScore reads the last position
        else:
            _, poolers = _poolers(self, model)
        return _classifier_head(model, head, poolers=poolers)

    def check_model(self, model: LoadedModel) -> None:
        """Refuse a ``LogitScore`` export whose LM head is missing or lacks its token ids."""
        logit_score = model.st.logit_score if model.st is not None else None
        if logit_score is None:
            return
        if model.architecture.lm_head() is None:
            raise ModelLoadError(
                f"the CrossEncoder's LogitScore reads the LM head's logits, but this {model.architecture_name} "
                "has no LM head"
            )
        vocab = _vocab_size(model)
        for name in ("true_token_id", "false_token_id"):
            token = logit_score[name]
            if token is not None and token >= vocab:
                raise ModelLoadError(f"LogitScore {name} {token} is outside the vocabulary (0..{vocab - 1})")


def cross_encoder_classifier(model: LoadedModel) -> torch.nn.Module | None:
    """A sentence-transformers CrossEncoder export's own score modules as a classifier of pooled
    vectors (the Dense stack, or ``LogitScore``), or ``None`` when it has none."""
    st = model.st
    if st is None or st.score_outputs is None:
        return None
    if st.logit_score is None:
        return model.projector
    lm_head = model.architecture.lm_head()
    if lm_head is None:
        return None
    return LogitScore(lm_head, st.logit_score["true_token_id"], st.logit_score["false_token_id"], _vocab_size(model))


class TokenClassifyTask(Task):
    """Per-token class probabilities (NER, token and process reward models; ``LLM.reward``).

    With the ``STEP`` pooling type, only the rows of tokens equal to ``step_tag_id`` and the
    columns ``returned_token_ids`` are returned. A ``STEP`` model with no token classifier but an
    LM head (a causal LM such as math-shepherd-mistral-7b-prm) is classified by its LM head: the
    columns are token ids, and ``returned_token_ids`` are checked against the vocabulary.

    A masked LM with no token classifier (``BertForMaskedLM``: a ``MaskedLMHead``)
    classifies every token by its MLM head, as vLLM does: ``[n_tokens, vocab_size]`` rows, the
    softmax over the vocabulary unless ``use_activation`` is false.
    """

    name = "token_classify"
    granularity = "token"
    api_name = "Classification"
    default_pooling_type = "ALL"
    default_rank = 3
    #: ``entities``: the CLI prints entity spans (``LLM.entities``) instead of per-token probabilities.
    output_options = frozenset({"entities"})
    params = frozenset({"use_activation"}) | STEP_PARAMS

    def build(self, model: LoadedModel) -> Head | None:
        head = model.architecture.token_classifier()
        if head is not None:
            names, _ = _poolers(self, model)
            return _classifier_head(model, head, step=names == ("STEP",))
        lm_head = _step_lm_head(self, model)
        head_class: type[LMHeadStepHead | LMHeadTokenHead] = LMHeadStepHead
        if lm_head is None:
            lm_head = _masked_lm_head(model)
            if lm_head is None:
                return None
            _poolers(self, model)
            head_class = LMHeadTokenHead
        return head_class(
            lm_head,
            _vocab_size(model),
            classifier_activation(model),
            model.use_activation(from_st_normalize=False).value,
            *_calibration(model),
        )

    def settings(self, model: LoadedModel) -> dict[str, Setting]:
        return {**super().settings(model), **_classifier_settings(model, self.result_width(model))}

    def result_width(self, model: LoadedModel) -> int:
        """The token classifier's labels, else the LM head's vocabulary (STEP rows keep fewer)."""
        arch = model.architecture
        return arch.num_labels if arch.token_classifier() is not None else _vocab_size(model)

    def param_defaults(self, model: LoadedModel, side: str | None = None) -> dict[str, object]:
        if model.pooling_type(self).value != ("STEP",):
            return {}
        values = {name: model.config_value(name).value for name in STEP_PARAMS}
        return {name: value for name, value in values.items() if value is not None}

    def verify(self, params: PoolingParams, model: LoadedModel) -> None:
        step = model.pooling_type(self).value == ("STEP",)
        invalid = params.set_fields() & STEP_PARAMS
        if invalid and not step:
            valid = sorted(self.params - STEP_PARAMS)
            raise InvalidRequest(
                f"Task {self.name!r} only supports {valid} parameters, does not support {sorted(invalid)} parameters"
            )
        super().verify(params, model)
        if model.architecture.token_classifier() is None and _step_lm_head(self, model) is not None:
            labels, what = _vocab_size(model), "vocabulary's"
        else:
            labels, what = model.architecture.num_labels, "model's"
        bad = [i for i in params.returned_token_ids or [] if not 0 <= i < labels]
        if bad:
            raise InvalidRequest(f"returned_token_ids {bad} are outside the {what} {labels} outputs")


def _step_lm_head(task: Task, model: LoadedModel) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The LM head that classifies tokens for ``task`` on ``model``: only with ``STEP`` pooling."""
    if model.pooling_type(task).value != ("STEP",):
        return None
    return model.architecture.lm_head()


def _masked_lm_head(model: LoadedModel) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The masked-LM head that classifies every token of a model without a token classifier
    (:class:`~poolkit.contracts.capabilities.MaskedLMHead`), or ``None``."""
    arch = model.architecture
    return arch.lm_head() if isinstance(arch, MaskedLMHead) and arch.masked_lm_head else None


def _vocab_size(model: LoadedModel) -> int:
    """Width of the LM head's logits: the (text) config's ``vocab_size``."""
    config = model.architecture.config
    text = config.get_text_config() if callable(getattr(config, "get_text_config", None)) else config
    return int(getattr(text, "vocab_size", None) or getattr(config, "vocab_size"))


class PluginTask(Task):
    """``pooling_task="plugin"``: an IO processor plugin turns request data into prompts, chooses
    the task they run with, and turns the outputs into its own result (``LLM.encode({"data": ...})``).

    It has no head of its own: the API hands it to the IO processor named by
    ``io_processor_plugin``.
    """

    name = "plugin"
    granularity = "plugin"

    def build(self, model: LoadedModel) -> Head | None:
        return None


class RewardAlias(Task):
    """vLLM 0.10's ``reward`` task (``pooling_task="reward"``, ``/pooling`` ``"task": "reward"``): a
    deprecated name of ``token_classify``."""

    name = "reward"
    granularity = "token"
    alias_of = "token_classify"

    def build(self, model: LoadedModel) -> Head | None:
        return None


@hookimpl
def poolkit_register_tasks(register):
    register("embed", EmbedTask)
    register("token_embed", TokenEmbedTask)
    register("classify", ClassifyTask)
    register("token_classify", TokenClassifyTask)
    register("plugin", PluginTask)
    register("reward", RewardAlias)
