"""NomicBERT (nomic-embed-text v1 / v1.5, and v2-moe with its mixture-of-experts layers,
:mod:`~poolkit.builtin_models.rotary_encoders.nomic_moe`): the rotary encoder as nomic-ai's
``modeling_hf_nomic_bert.py`` builds it, read off its GPT-2-style config fields or transformers'."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import ModelLoadError

from ..blocks.attention import attention_head_dim
from ..blocks.checks import refuse_switches, unsupported
from ..blocks.rotary import RotarySpec
from .encoder import Layout, RotaryEncoder, RotaryEncoderSpec
from .nomic_moe import moe_spec

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.model import Tokenizer

NOMIC_LAYOUT = Layout(
    prefix="bert.",
    modules={
        "embeddings.norm": "emb_ln",
        "layers.{i}.attn.qkv": "encoder.layers.{i}.attn.Wqkv",
        "layers.{i}.attn.out": "encoder.layers.{i}.attn.out_proj",
        "layers.{i}.attn_norm": "encoder.layers.{i}.norm1",
        "layers.{i}.mlp.up_gate": ("encoder.layers.{i}.mlp.fc11", "encoder.layers.{i}.mlp.fc12"),
        "layers.{i}.mlp.up": "encoder.layers.{i}.mlp.fc1",
        "layers.{i}.mlp.down": "encoder.layers.{i}.mlp.fc2",
        "layers.{i}.mlp_norm": "encoder.layers.{i}.norm2",
        # mixture-of-experts layers (nomic_moe): the router, the stacked experts, their shared bias
        "layers.{i}.mlp.router": "encoder.layers.{i}.mlp.router.layer",
        "layers.{i}.mlp.experts": "encoder.layers.{i}.mlp.experts.mlp",
        "layers.{i}.mlp": "encoder.layers.{i}.mlp.experts",
    },
)


#: NomicBERT's GPT-2-style config fields, by the standard name they stand for.
_NOMIC_FIELDS = {
    "hidden_size": "n_embd",
    "num_hidden_layers": "n_layer",
    "num_attention_heads": "n_head",
    "max_position_embeddings": "n_positions",
    "layer_norm_eps": "layer_norm_epsilon",
}
#: ``activation_function`` -> (activation, gated), as NomicBERT's blocks build their MLP: every
#: GELU variant is the exact GELU there.
_NOMIC_ACTIVATIONS = {
    "swiglu": ("silu", True), "geglu": ("gelu", True), "glu": ("sigmoid", True),
    **{name: ("gelu", False) for name in ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh")},
}


def _nomic(config: PretrainedConfig, standard: str, default: Any = None) -> Any:
    """A NomicBERT config value: its GPT-2-style field if the config has one, else the standard field."""
    legacy = _NOMIC_FIELDS.get(standard)
    value = getattr(config, legacy, None) if legacy else None
    if value is None:
        value = getattr(config, standard, None)
    return default if value is None else value


def _positive_ints(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


def _nomic_activation(config: PretrainedConfig) -> tuple[str, bool]:
    if getattr(config, "n_embd", None) is None and getattr(config, "activation_function", None) is None:
        # transformers' own NomicBertConfig: a gated MLP with hidden_act.
        return str(getattr(config, "hidden_act", "silu")), True
    name = getattr(config, "activation_function", "swiglu")
    if name not in _NOMIC_ACTIVATIONS:
        raise ModelLoadError(
            f"unsupported activation_function '{name}' for NomicBERT; poolkit runs {', '.join(_NOMIC_ACTIVATIONS)}"
        )
    return _NOMIC_ACTIVATIONS[name]


def _nomic_intermediate(config: PretrainedConfig) -> int | None:
    """The feed-forward width NomicBERT builds: ``n_inner`` (default ``4 * n_embd``, or ``8/3 * n_embd``
    gated), rounded up to a multiple of 256 when gated; transformers' config gives it as is."""
    hidden = _nomic(config, "hidden_size")
    if getattr(config, "n_embd", None) is None:
        return getattr(config, "intermediate_size", None)
    try:
        gated = _nomic_activation(config)[1]
    except ModelLoadError:
        return None
    inner = getattr(config, "n_inner", None)
    if not _positive_ints(hidden) or not (inner is None or _positive_ints(inner)):
        return None
    if not gated:
        return inner or 4 * hidden
    inner = inner or int(8 * hidden / 3)
    return (inner + 255) // 256 * 256


def _nomic_vocab(config: PretrainedConfig) -> int | None:
    """The vocabulary NomicBERT builds: ``vocab_size`` rounded up to ``pad_vocab_size_multiple``."""
    vocab, multiple = getattr(config, "vocab_size", None), getattr(config, "pad_vocab_size_multiple", None) or 1
    return (vocab + multiple - 1) // multiple * multiple if _positive_ints(vocab, multiple) else None


def _nomic_switches(config: PretrainedConfig) -> None:
    """Refuse, naming the field, the NomicBERT variants this implementation does not cover."""
    refuse_switches(config, (
        ("prenorm", "poolkit runs NomicBERT's post-norm blocks only"),
        ("rotary_emb_scale_base", "xPos rotary scaling is not supported"),
        ("rotary_head_dim", "rotating over the heads axis is not supported"),
    ))
    kv_heads, heads = getattr(config, "num_heads_kv", None), _nomic(config, "num_attention_heads")
    if kv_heads is not None and kv_heads != heads:
        raise unsupported("num_heads_kv", kv_heads, f"grouped-query attention is not supported (n_head is {heads})")
    fraction = getattr(config, "rotary_emb_fraction", 1.0)
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise unsupported("rotary_emb_fraction", fraction, "NomicBERT without rotary positions is not supported")
    moe_spec(config, _nomic_activation(config)[1])


def _nomic_checks(hidden: str) -> ConfigChecks:
    """NomicBERT's config checks, its width named ``hidden`` (``n_embd`` in its own config)."""
    return ConfigChecks(
        sizes=(
            "n_embd", "n_layer", "n_head", "n_inner", "n_positions",
            "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
            "max_position_embeddings",
        ),
        multiples=(("n_embd", "n_head"), ("hidden_size", "num_attention_heads")),
        layers={name: r"(?:^|\.)encoder\.layers\.(\d+)\." for name in ("n_layer", "num_hidden_layers")},
        shapes={
            "embeddings.word_embeddings.weight": ("vocab_size", hidden),
            "embeddings.token_type_embeddings.weight": ("type_vocab_size", hidden),
            "encoder.layers.0.attn.Wqkv.weight": ((3, hidden), hidden),
            "encoder.layers.0.mlp.fc11.weight": ("intermediate_size", hidden),
            "encoder.layers.0.mlp.fc1.weight": ("intermediate_size", hidden),
            "encoder.layers.1.mlp.router.layer.weight": ("num_experts", hidden),
            "encoder.layers.1.mlp.experts.mlp.w1": (("num_experts", "intermediate_size"), hidden),
        },
    )


class NomicBertModel(RotaryEncoder):
    """nomic-embed-text's encoder (NomicBERT): rotary positions, SwiGLU, no biases, 8k context.

    Reads the checkpoint's own config fields (``n_embd``, ``n_layer``, ``n_head``, ``n_inner``,
    ``rotary_emb_fraction``, ``rotary_emb_base``, ``rotary_emb_interleaved``,
    ``rotary_scaling_factor``, ``qkv_proj_bias``, ``mlp_fc1_bias``, ...) or transformers' names
    for them, and the checkpoint's tensor names (``emb_ln``, ``encoder.layers.N.attn.Wqkv``,
    ``mlp.fc11`` / ``fc12`` / ``fc2``, ``norm1`` / ``norm2``). With ``rotary_scaling_factor`` (as
    nomic's model card sets for 8192 tokens), a sequence longer than ``max_trained_positions``
    gets dynamic NTK scaling from its own length. With ``moe_every_n_layers`` (nomic-embed-text-v2-moe:
    ``num_experts``, ``moe_top_k``) every such layer's feed-forward block is a mixture of experts
    (:class:`~poolkit.builtin_models.rotary_encoders.nomic_moe.NomicMoE`, tensors ``mlp.router.layer``,
    ``mlp.experts.mlp.w1`` / ``w2``, ``mlp.experts.bias``).

    Example:
        >>> model = NomicBertModel(PretrainedConfig.from_dict(json.loads(config_json)))
        >>> model.load_weights(iter_tensors(checkpoint_files(path)))
    """

    layout: ClassVar[Layout] = NOMIC_LAYOUT
    config_checks: ClassVar[ConfigChecks] = _nomic_checks("hidden_size")

    @classmethod
    def check_config(cls, config: PretrainedConfig, shapes: Any, overridden: Any = ()) -> None:
        """:attr:`config_checks`, naming ``n_embd`` rather than ``hidden_size`` in a config that has it."""
        checks = cls.config_checks if getattr(config, "n_embd", None) is None else _nomic_checks("n_embd")
        checks.check(config, shapes, overridden)

    @classmethod
    def configure(cls, config: PretrainedConfig, tokenizer: Tokenizer) -> None:
        """Refuse what this implementation does not cover, and give the GPT-2-style fields their
        standard names too (``n_embd`` is ``hidden_size``...), with the feed-forward width and the
        padded vocabulary NomicBERT builds."""
        _nomic_switches(config)
        for standard, legacy in _NOMIC_FIELDS.items():
            value = getattr(config, legacy, None)
            if value is not None:
                setattr(config, standard, value)
        inner = _nomic_intermediate(config)
        if inner is not None:
            config.intermediate_size = inner
        vocab = _nomic_vocab(config)
        if vocab is not None:
            config.vocab_size = vocab
        hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
        if getattr(config, "head_dim", None) is not None and _positive_ints(hidden, heads):
            config.head_dim = hidden // heads

    @classmethod
    def spec(cls, config: PretrainedConfig) -> RotaryEncoderSpec:
        _nomic_switches(config)
        hidden, heads = int(_nomic(config, "hidden_size")), int(_nomic(config, "num_attention_heads"))
        head_dim = attention_head_dim(hidden, heads)
        fraction = getattr(config, "rotary_emb_fraction", 1.0)
        rotary_dim = head_dim * fraction
        dynamic = float(getattr(config, "rotary_scaling_factor", None) or 0) or None
        if rotary_dim != int(rotary_dim) or int(rotary_dim) % 2 or rotary_dim < (4 if dynamic else 2):
            raise unsupported(
                "rotary_emb_fraction", fraction, f"it must rotate an even number of the {head_dim} head dimensions"
            )
        theta = getattr(config, "rotary_emb_base", None)
        if theta is None:
            params = getattr(config, "rope_parameters", None) or {}
            kind = params.get("rope_type", "default")
            if kind != "default":
                raise unsupported("rope_parameters", params, f"rope_type '{kind}' is not supported for NomicBERT")
            theta = params.get("rope_theta", 1000.0)
        activation, gated = _nomic_activation(config)
        original = getattr(config, "n_embd", None) is not None
        qkv_bias = bool(getattr(config, "qkv_proj_bias", original))
        rotary = RotarySpec(
            dim=int(rotary_dim), theta=float(theta), interleaved=bool(getattr(config, "rotary_emb_interleaved", False)),
            dynamic_factor=dynamic, trained_positions=int(getattr(config, "max_trained_positions", None) or 2048),
        )
        return RotaryEncoderSpec(
            hidden_size=hidden, num_layers=int(_nomic(config, "num_hidden_layers")), num_heads=heads,
            intermediate_size=int(_nomic_intermediate(config)),
            vocab_size=int(_nomic_vocab(config) or config.vocab_size),
            type_vocab_size=int(getattr(config, "type_vocab_size", 2) or 0),
            max_positions=int(_nomic(config, "max_position_embeddings", 2048)),
            norm_eps=float(_nomic(config, "layer_norm_eps", 1e-12)), rotary=rotary, activation=activation, gated=gated,
            qkv_bias=qkv_bias, out_bias=qkv_bias, up_bias=bool(getattr(config, "mlp_fc1_bias", original)),
            down_bias=bool(getattr(config, "mlp_fc2_bias", original)), moe=moe_spec(config, gated),
        )
