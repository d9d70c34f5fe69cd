"""The built-in tasks, registered through ``poolkit_register_tasks``."""

from __future__ import annotations

from poolkit.config import PoolingParams
from poolkit.errors import InvalidRequest
from poolkit.hookspecs import hookimpl
from poolkit.model import PoolingModel
from poolkit.plugins import registry
from poolkit.tasks import Head, Task

from .heads import VectorHead


class _VectorTask(Task):
    """Embedding-style tasks: pooled hidden states, projected, truncated, normalised."""

    params = frozenset({"dimensions", "use_activation"})

    def build(self, model: PoolingModel) -> Head | None:
        names = model.pooling_type(self).value
        poolers = [registry("pooler").get(name) for name in names]
        for name, pooler in zip(names, poolers):
            if pooler.granularity != self.granularity:
                raise InvalidRequest(
                    f"pooling type '{name}' pools {pooler.granularity}s, but task '{self.name}' "
                    f"needs a {self.granularity} pooler"
                )
        projector = model.projector
        if projector is not None:
            width = sum(p.output_size(model.architecture.hidden_size) for p in poolers)
            expected = model.st.dense[0].weight.shape[1]
            if width != expected:
                raise InvalidRequest(
                    f"pooling type {'+'.join(names)} gives {width}-wide vectors, but the model's first "
                    f"sentence-transformers Dense layer takes {expected}"
                )
        activation = registry("activation").get(model.pooler_config.activation_fn or "normalize")
        return VectorHead(poolers, projector, activation, model.use_activation.value, model.dimensions.value)

    def verify(self, params: PoolingParams, model: PoolingModel) -> None:
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


class TokenEmbedTask(_VectorTask):
    """One vector per input token (multi-vector retrieval)."""

    name = "token_embed"
    granularity = "token"
    default_pooling_type = "ALL"


@hookimpl
def poolkit_register_tasks(register):
    register("embed", EmbedTask)
    register("token_embed", TokenEmbedTask)
