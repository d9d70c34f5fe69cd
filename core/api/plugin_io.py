"""The IO processor plugin of ``pooling_task="plugin"``: found by name and bound to one model.

vLLM's IO processor plugins turn a request's ``{"data": ...}`` into prompts and the pooled
outputs back into the plugin's own result. :class:`PluginIO` finds the processor the model (or
``LLM(io_processor_plugin=...)``) names, with vLLM's wording when it is missing, and binds it to
the model once (:meth:`poolkit.IOProcessor.bind` with the model's :class:`~poolkit.IOContext`),
binding again only when a different processor is registered under that name.
"""

from __future__ import annotations

from ..contracts.errors import InvalidRequest
from ..contracts.io import IOContext, IOProcessor, bind_io_processor
from ..contracts.model import ModelInfo
from ..plugins.manager import get_manager, registry


class PluginIO:
    """The IO processor plugins of one loaded model (:class:`~poolkit.loading.model.PoolingModel`)."""

    def __init__(self, model: ModelInfo) -> None:
        self.model = model
        self._context: IOContext | None = None
        #: IO processor name -> (the registered processor, the one bound to this model).
        self._bound: dict[str, tuple[IOProcessor, IOProcessor]] = {}

    def processor(self, name: str | None) -> IOProcessor:
        """The IO processor registered as ``name``, bound to the model on first use.

        Raises:
            InvalidRequest: no plugin is named, or the named one is not installed (vLLM's wording).
        """
        processors = registry("io_processor")
        if name is None:
            raise InvalidRequest(
                "No IOProcessor plugin installed. Pass io_processor_plugin='<name>' to LLM (or set "
                "io_processor_plugin in the model's config.json) and install a plugin that registers it"
            )
        if name not in processors:
            infos = {i.name: i for i in get_manager().plugin_infos()}
            plugins = [n for n in processors.names() if not getattr(infos.get(processors.entry(n).plugin), "builtin", False)]
            if not plugins:
                raise InvalidRequest(f"No IOProcessor plugins installed but one is required ({name}).")
            raise InvalidRequest(
                f"The model requires the '{name}' IO Processor plugin but it is not installed. "
                f"Available plugins: {plugins}"
            )
        registered = processors.get(name)
        cached = self._bound.get(name)
        if cached is None or cached[0] is not registered:
            if self._context is None:
                self._context = IOContext.of(self.model)
            cached = (registered, bind_io_processor(name, registered, self._context))
            self._bound[name] = cached
        return cached[1]
