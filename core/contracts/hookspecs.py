"""The poolkit hook specifications: everything a plugin can provide.

A plugin is a module (or object) with functions marked ``@poolkit.hookimpl`` whose names are
the hooks below, declared under the entry-point group ``poolkit.plugins``. The built-in models,
poolers, activations, tasks, IO processors and kernels are plugins of exactly this kind.

Every ``register`` callback is ``register(name, obj, override=False) -> None`` and validates
``obj`` at once, raising ``TypeError`` naming the offender. The ``poolkit_register_*`` hooks are
called once each, the first time poolkit looks anything up in a registry. ``docs/plugins.md`` is
the reference for each hook and the contract of what it registers.
"""

from __future__ import annotations

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("poolkit")
hookimpl = HookimplMarker("poolkit")


@hookspec
def poolkit_register_architectures(register):
    """Register model architectures, keyed by Hugging Face architecture name.

    Args:
        register: ``register(name, cls, override=False)``. ``name`` is the value found in a
            checkpoint's ``config.json`` ``architectures`` list (``"BertModel"``, case-sensitive);
            ``cls`` is a subclass of :class:`poolkit.Architecture` (the class: poolkit builds one
            per loaded model). A class with a classification head declares in
            ``base_architecture`` the registered headless architecture that serves its
            checkpoints' hidden states for ``convert="embed"``; ``None`` means ``<Prefix>Model``.
    """


@hookspec
def poolkit_register_poolers(register):
    """Register pooling methods, keyed by pooling type name.

    Args:
        register: ``register(name, pooler, override=False)``. ``name`` is what users put in
            ``PoolerConfig(pooling_type=...)`` (matched case-insensitively); ``pooler`` is a
            :class:`poolkit.Pooler` instance (or subclass, instantiated with no arguments), or
            a function ``fn(hidden, batch)`` pooling each sequence to one row.
    """


@hookspec
def poolkit_register_activations(register):
    """Register activation functions, keyed by name.

    Args:
        register: ``register(name, fn, override=False)``. ``name`` is what users put in
            ``PoolerConfig(activation_fn=...)`` (matched case-insensitively); ``fn`` maps a
            tensor to a tensor of the same shape along its last dimension (``normalize``,
            ``softmax``, ...), or is a ``torch.nn.Module`` class instantiated with no arguments.
    """


@hookspec
def poolkit_register_io_processors(register):
    """Register IO processors, which turn request data into prompts and outputs back into results.

    Args:
        register: ``register(name, processor, override=False)``. ``processor`` is a
            :class:`poolkit.IOProcessor` instance (or subclass, instantiated with no arguments),
            shared by every model; each model runs ``processor.bind(context)``, whose
            ``context`` (a :class:`poolkit.IOContext`) holds that model's tokenizer and config.
    """


@hookspec
def poolkit_register_kernels(register):
    """Register compute kernels for an op on a device type.

    Args:
        register: ``register(name, kernel, override=False)``. ``name`` is ``"<op>:<impl>"``
            (``"varlen_attention:torch"``); ``kernel`` is a :class:`poolkit.Kernel`: the device
            type it runs on, its priority, whether it is available here, and the pure-torch
            reference it must match (:func:`poolkit.kernel_reference` gives a built-in op's,
            and may be called inside this hook). :func:`poolkit.select_kernel` picks the best
            available kernel per op and device type on every call.
    """


@hookspec
def poolkit_register_tasks(register):
    """Register pooling tasks (``embed``, ``classify``, ...), keyed by task name.

    Args:
        register: ``register(name, task, override=False)``. ``name`` is the task name
            (lower-cased, ``pooling_task=name``); ``task`` is a :class:`poolkit.Task` instance
            (or subclass, instantiated with no arguments): which parameters it accepts, how it
            builds its head for a loaded model, and how it wraps its results.
    """


@hookspec
def poolkit_register_scorers(register):
    """Register scorers: the ways ``LLM.score``, ``LLM.rerank`` and ``/score`` compare texts.

    Args:
        register: ``register(name, scorer, override=False)``. ``scorer`` is a
            :class:`poolkit.Scorer` instance (or subclass, instantiated with no arguments): which
            models it supports, its priority among the scorers that support a model, and how it
            scores (query, document) pairs.
    """


@hookspec(firstresult=True)
def poolkit_resolve_architecture(name, config):
    """Provide an architecture for a name that no plugin registered.

    Args:
        name: the architecture name from ``config.json`` (``"ElectraModel"``).
        config: the loaded Hugging Face config, ``hf_overrides`` applied; read it, don't change it.

    Returns:
        A :class:`poolkit.Architecture` subclass (the class, not an instance), or ``None`` to let
        the next resolver try (the built-in transformers fallback answers last).

    Called while a model loads, once per name tried, when neither a registered architecture nor
    a conversion to a registered base architecture (its ``base_architecture``, else
    ``<Prefix>Model``) serves it; with ``convert="embed"`` it is asked for that base first.
    """


@hookspec(firstresult=True)
def poolkit_resolve_model(name):
    """Turn a model name into a local directory holding its files.

    Args:
        name: what the user passed as ``model`` (a path, a Hugging Face id, an alias).

    Returns:
        A ``pathlib.Path`` (or ``str``) to a directory, or ``None`` to let the next resolver
        try. The first non-``None`` answer wins; resolvers raise :class:`poolkit.ModelLoadError`
        to stop the search with a message (a hub download that failed offline, say).

    Called every time a model is loaded.
    """


@hookspec(firstresult=True)
def poolkit_checkpoint_layout(path):
    """Say where a model folder that is not a plain Hugging Face folder keeps its parts.

    Args:
        path: the folder ``poolkit_resolve_model`` answered.

    Returns:
        A :class:`poolkit.contracts.checkpoint.Layout` (its config, weights, tokenizer and any PEFT
        adapter to merge) for a folder laid out as a publisher ships it (a sentence-transformers
        module folder, an adapter repository over a base model), or ``None`` to let the next hook
        try; with no answer the folder is read as a Hugging Face one. Raise
        :class:`poolkit.ModelLoadError` for a folder recognised but inconsistent.

    Called every time a model is loaded, before ``config.json`` is read.
    """


@hookspec
def poolkit_register_commands(app):
    """Add sub-commands to the ``poolkit`` command line.

    Args:
        app: the ``typer.Typer`` application; add commands with ``@app.command()``. Wrap a
            command's body in ``with poolkit.entrypoints.cli.errors():`` so a failure prints
            ``Error: <message>`` on stderr and exits 1, as the built-in commands do.

    Called once per ``poolkit`` run, after the other hooks and before the command line is
    parsed; never when poolkit is used as a library.
    """
