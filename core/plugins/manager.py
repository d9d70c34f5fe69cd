"""The plugin manager: discovers entry points once, lazily, and fills the registries.

Every entry point of the group ``poolkit.plugins`` is loaded on its own: a third-party plugin
that fails to import, declares an unknown hook or registers something invalid or clashing is
reported once on stderr, listed with ``status: error`` and skipped; a built-in that fails is
fatal. A failure is anything a plugin raises, ``SystemExit`` or any other ``BaseException``
included; only the user's Ctrl-C (``KeyboardInterrupt``) stops the program. Environment switches,
applied before anything is imported:

- ``POOLKIT_PLUGINS``: comma-separated allow-list of third-party plugin names (empty: none).
- ``POOLKIT_DISABLE_PLUGINS``: comma-separated block-list.
- ``POOLKIT_STRICT_PLUGINS=1``: any plugin failure raises instead of being skipped.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pluggy

from ..contracts import hookspecs
from ..contracts.architecture import check_architecture
from ..contracts.checkpoint import Layout
from ..contracts.errors import PluginError
from ..contracts.io import check_io_processor
from ..contracts.kernel import check_kernel
from ..contracts.pooling import check_activation, check_pooler
from ..contracts.scoring import check_scorer
from ..contracts.tasks import check_task
from .registries import RUNTIME_PLUGIN, Registry

if TYPE_CHECKING:
    from transformers import PretrainedConfig

if sys.version_info >= (3, 10):
    from importlib.metadata import EntryPoint, entry_points
else:  # pragma: no cover
    from importlib_metadata import EntryPoint, entry_points

logger = logging.getLogger(__name__)

GROUP = "poolkit.plugins"
BUILTIN_DISTRIBUTION = "poolkit"

#: kind -> (hook name, registry check, name normalisation)
KINDS: dict[str, tuple[str, Callable[[str, Any], Any], Callable[[str], str]]] = {
    "architecture": ("poolkit_register_architectures", check_architecture, str),
    "pooler": ("poolkit_register_poolers", check_pooler, str.upper),
    "activation": ("poolkit_register_activations", check_activation, str.lower),
    "io_processor": ("poolkit_register_io_processors", check_io_processor, str),
    "kernel": ("poolkit_register_kernels", check_kernel, str),
    "task": ("poolkit_register_tasks", check_task, str.lower),
    "scorer": ("poolkit_register_scorers", check_scorer, str.lower),
}


@dataclass
class PluginInfo:
    """What ``poolkit plugins`` reports about one plugin."""

    name: str
    distribution: str | None
    version: str | None
    entry_point: str | None
    builtin: bool
    status: str = "ok"
    error: str | None = None
    provides: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "entry_point": self.entry_point,
            "builtin": self.builtin,
            "status": self.status,
            "error": self.error,
            "provides": {k: v for k, v in self.provides.items() if v},
        }


def _cause(exc: BaseException) -> str:
    """``"RuntimeError: boom"``; ``"SystemExit"`` for an exception with no message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _plugin_failure(exc: BaseException) -> bool:
    """Whether a plugin's ``exc`` is its failure to report: anything but the user's Ctrl-C.

    A plugin that calls ``sys.exit()`` or raises another ``BaseException`` on import or in a
    hook must not end the program silently with its own exit code.
    """
    return not isinstance(exc, KeyboardInterrupt)


def _env_names(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {n.strip() for n in value.split(",") if n.strip()}


class PluginManager:
    """One pluggy manager plus the typed registries its plugins fill."""

    def __init__(self, strict: bool | None = None) -> None:
        """
        Args:
            strict: fail fast on any plugin failure instead of skipping the plugin (default: the
                ``POOLKIT_STRICT_PLUGINS`` environment switch).
        """
        self._strict = strict
        self.pm = pluggy.PluginManager("poolkit")
        self.pm.add_hookspecs(hookspecs)
        self.registries: dict[str, Registry] = {}
        for kind, (_, check, normalize) in KINDS.items():
            reg = Registry(kind.replace("_", " "), check, normalize)
            reg.explain_missing = self._explain_missing
            self.registries[kind] = reg
        self.infos: dict[str, PluginInfo] = {}
        self._loaded = False
        self._loading = False
        self._fatal: PluginError | None = None
        self._lock = threading.RLock()

    @property
    def strict(self) -> bool:
        """Whether a failing plugin raises instead of being skipped."""
        if self._strict is not None:
            return self._strict
        return os.environ.get("POOLKIT_STRICT_PLUGINS", "") not in ("", "0")

    # -- loading -----------------------------------------------------------------------------

    def load(self) -> None:
        """Discover and load every entry point, once.

        Raises:
            PluginError: a built-in plugin failed, or any plugin failed in strict mode; raised
                again by every later call, so nothing runs on a half-loaded toolkit.
        """
        if not self._loaded:
            with self._lock:
                # _loading: a plugin being imported looked something up (same thread, RLock).
                if not self._loaded and not self._loading:
                    self._loading = True
                    try:
                        self._load_all()
                    except PluginError as exc:
                        self._fatal = exc
                        raise
                    except BaseException as exc:  # Ctrl-C mid-way: never run on half-loaded registries
                        self._fatal = PluginError(
                            f"loading plugins was interrupted ({_cause(exc)}); "
                            "restart, or call poolkit.plugins.reset_manager() to load them again"
                        )
                        raise
                    finally:
                        self._loading = False
                        self._loaded = True
        if self._fatal is not None:
            raise PluginError(str(self._fatal))

    def _load_all(self) -> None:
        allow = _env_names("POOLKIT_PLUGINS")
        block = _env_names("POOLKIT_DISABLE_PLUGINS") or set()
        eps = sorted(
            entry_points(group=GROUP),
            key=lambda ep: (_dist_name(ep) != BUILTIN_DISTRIBUTION, _dist_name(ep) or "", ep.name),
        )
        for ep in eps:
            self._load_entry_point(ep, allow, block)

    def _load_entry_point(self, ep: EntryPoint, allow: set[str] | None, block: set[str]) -> None:
        dist = _dist_name(ep)
        builtin = dist == BUILTIN_DISTRIBUTION
        info = PluginInfo(ep.name, dist, _dist_version(ep), ep.value, builtin)
        previous = self.infos.get(ep.name)
        if previous is not None:
            info.status = "error"
            info.error = (
                f"plugin name '{ep.name}' is already used by distribution "
                f"'{previous.distribution}'; rename one of the entry points"
            )
            self._fail(info, key=f"{ep.name} ({dist})")
            return
        self.infos[ep.name] = info
        names = {ep.name, dist}
        if not builtin and (names & block or (allow is not None and not names & allow)):
            info.status = "disabled"
            return
        try:
            module = ep.load()
        except BaseException as exc:  # a broken plugin must not take poolkit down, whatever it raises
            if not _plugin_failure(exc):
                raise
            info.status, info.error = "error", f"import failed: {_cause(exc)}"
            self._fail(info)
            return
        self._register(module, info)

    def _register(self, plugin: object, info: PluginInfo, strict: bool | None = None) -> None:
        """Register a plugin object with pluggy and commit what its hooks register, atomically.

        Args:
            strict: raise instead of skipping a failing plugin (``None``: the manager's mode).
        """
        try:
            self.pm.register(plugin, name=info.name)
            self.pm.check_pending()
        except BaseException as exc:
            if not _plugin_failure(exc):
                raise
            hint = self._hook_hint(plugin)
            self._unregister_pm(info.name)
            info.status, info.error = "error", f"invalid hook implementation: {exc}{hint}"
            self._fail(info, strict=strict)
            return
        try:
            staged = self._collect(info.name)
            self._commit(staged, info)
        except BaseException as exc:  # a hook that raises, even SystemExit, fails its plugin only
            self._unregister_pm(info.name)
            if not _plugin_failure(exc):
                raise
            info.status, info.error = "error", str(exc) if isinstance(exc, PluginError) else _cause(exc)
            self._fail(info, strict=strict)

    def _collect(self, plugin_name: str) -> list[tuple[str, str, Any, bool]]:
        staged: list[tuple[str, str, Any, bool]] = []
        for kind, (hook_name, _, _) in KINDS.items():
            caller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                if impl.plugin_name != plugin_name:
                    continue

                def register(name: str, obj: Any, override: bool = False, _kind: str = kind) -> None:
                    staged.append((_kind, name, self.registries[_kind].validate(name, obj), override))

                impl.function(register=register)
        return staged

    def _commit(self, staged: list[tuple[str, str, Any, bool]], info: PluginInfo) -> None:
        seen: dict[tuple[str, str], bool] = {}
        for kind, name, _, override in staged:
            reg = self.registries[kind]
            key = (kind, reg.key(name))
            if key in seen and not override:
                raise PluginError(f"plugin '{info.name}' registers {reg.kind} '{reg.key(name)}' twice")
            if reg.key(name) in reg and not override:
                owner = reg.entry(name).plugin
                raise PluginError(
                    f"{reg.kind} '{reg.key(name)}' from plugin '{info.name}' clashes with the one "
                    f"registered by plugin '{owner}'; pass override=True to replace it"
                )
            seen[key] = True
        for kind, name, obj, override in staged:
            self.registries[kind].add(name, obj, info.name, override=override)
            info.provides.setdefault(kind, []).append(self.registries[kind].key(name))
        for hook_name, what in (
            ("poolkit_resolve_model", "model_resolver"),
            ("poolkit_resolve_architecture", "architecture_resolver"),
            ("poolkit_checkpoint_layout", "layouts"),
            ("poolkit_register_commands", "commands"),
        ):
            impls = getattr(self.pm.hook, hook_name).get_hookimpls()
            found = [impl.function.__name__ for impl in impls if impl.plugin_name == info.name]
            if found:
                info.provides[what] = found

    def _fail(self, info: PluginInfo, key: str | None = None, strict: bool | None = None) -> None:
        if key is not None:
            self.infos[key] = info
        where = f"{info.distribution} {info.version}" if info.distribution else "no distribution"
        message = f"plugin '{info.name}' ({where}) was skipped: {info.error}"
        if info.builtin or (self.strict if strict is None else strict):
            raise PluginError(message)
        logger.warning("%s", message)

    def _hook_hint(self, plugin: object) -> str:
        """`` (did you mean '...'?)`` for the first hook ``plugin`` implements that no hookspec
        declares (a misspelt ``poolkit_register_pooler``), or ``""``."""
        known = [name for name in vars(hookspecs) if name.startswith("poolkit_")]
        for caller in self.pm.get_hookcallers(plugin) or []:
            if not caller.has_spec():
                close = difflib.get_close_matches(caller.name, known, n=1)
                return f" (did you mean '{close[0]}'?)" if close else ""
        return ""

    def _unregister_pm(self, name: str) -> None:
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)

    def _explain_missing(self, kind: str, name: str) -> str | None:
        notes = []
        broken = [i for i in self.infos.values() if i.status == "error"]
        if broken:
            names = ", ".join(f"'{i.name}' ({i.error})" for i in broken)
            notes.append(f"These plugins failed to load and may have provided it: {names}")
        disabled = [i.name for i in self.infos.values() if i.status == "disabled"]
        if disabled:
            notes.append(
                f"Disabled by POOLKIT_PLUGINS / POOLKIT_DISABLE_PLUGINS: {', '.join(sorted(disabled))}"
            )
        return ". ".join(notes) or None

    # -- use ---------------------------------------------------------------------------------

    def registry(self, kind: str) -> Registry:
        self.load()
        return self.registries[kind]

    def add_plugin(self, plugin: object, name: str) -> PluginInfo:
        """Register a plugin object directly (tests, notebooks); errors are raised, not skipped."""
        self.load()
        with self._lock:
            if name in self.infos:
                raise PluginError(f"a plugin named '{name}' is already registered")
            info = PluginInfo(name, None, None, None, builtin=False)
            self.infos[name] = info
            try:
                self._register(plugin, info, strict=True)
            except PluginError:
                del self.infos[name]
                raise
            return info

    def remove_plugin(self, name: str) -> None:
        """Undo :meth:`add_plugin`: unregister the plugin and drop what it registered."""
        with self._lock:
            info = self.infos.pop(name, None)
            self._unregister_pm(name)
            if info is not None:
                for kind, names in info.provides.items():
                    reg = self.registries[kind]
                    for n in names:
                        # a later plugin may have overridden (and then removed) the entry
                        if n in reg and reg.entry(n).plugin == name:
                            reg.remove(n)

    def add_runtime(self, kind: str, name: str, obj: Any, override: bool = False) -> Any:
        """Register one object from user code; listed as the ``<runtime>`` plugin."""
        self.load()
        with self._lock:
            reg = self.registries[kind]
            reg.add(name, obj, RUNTIME_PLUGIN, override=override)
            info = self.infos.setdefault(
                RUNTIME_PLUGIN, PluginInfo(RUNTIME_PLUGIN, None, None, None, builtin=False)
            )
            key = reg.key(name)
            if key not in info.provides.setdefault(kind, []):
                info.provides[kind].append(key)
            return reg.get(name)

    def plugin_infos(self) -> list[PluginInfo]:
        self.load()
        return list(self.infos.values())

    def resolve_model(self, name: str) -> Path | None:
        self.load()
        found = self._resolve("poolkit_resolve_model", name=name)
        return Path(found) if found is not None else None

    def checkpoint_layout(self, path: Path) -> Layout:
        """Where the model folder ``path`` keeps its parts: a ``poolkit_checkpoint_layout`` hook's
        answer, else a plain Hugging Face folder."""
        self.load()
        found = self._resolve("poolkit_checkpoint_layout", path=path)
        if found is not None and not isinstance(found, Layout):
            raise PluginError(f"a poolkit_checkpoint_layout hook answered {type(found).__name__}, not a Layout")
        return found if found is not None else Layout.plain(path)

    def resolve_architecture(self, name: str, config: PretrainedConfig) -> Any:
        """The architecture class a ``poolkit_resolve_architecture`` hook offers for ``name`` (the
        caller checks it), or ``None``."""
        self.load()
        return self._resolve("poolkit_resolve_architecture", name=name, config=config)

    def _resolve(self, hook_name: str, **kwargs: Any) -> Any:
        """Call a resolve hook; a resolver's ``SystemExit`` (or other non-``Exception``) is a
        :class:`PluginError` naming its plugin, not a silent exit."""
        try:
            return getattr(self.pm.hook, hook_name)(**kwargs)
        except Exception:
            raise
        except BaseException as exc:
            if not _plugin_failure(exc):
                raise
            plugin = self._plugin_in_traceback(exc)
            who = f"plugin '{plugin}'" if plugin else "a plugin"
            raise PluginError(f"{who} raised {_cause(exc)} in {hook_name}") from None

    def _plugin_in_traceback(self, exc: BaseException) -> str | None:
        """The registered plugin whose module the innermost matching frame of ``exc`` ran in."""
        modules = {}
        for name, plugin in self.pm.list_name_plugin():
            module = getattr(plugin, "__name__", None) if inspect.ismodule(plugin) else type(plugin).__module__
            modules[module] = name
        found = None
        tb = exc.__traceback__
        while tb is not None:
            found = modules.get(tb.tb_frame.f_globals.get("__name__"), found)
            tb = tb.tb_next
        return found

    def register_commands(self, app: Any) -> None:
        self.load()
        for impl in self.pm.hook.poolkit_register_commands.get_hookimpls():
            try:
                impl.function(app=app)
            except BaseException as exc:
                info = self.infos.get(impl.plugin_name)
                if not _plugin_failure(exc):
                    raise
                if info is None or info.builtin or self.strict:
                    if isinstance(exc, Exception):
                        raise
                    raise PluginError(
                        f"plugin '{impl.plugin_name}' failed registering commands: {_cause(exc)}"
                    ) from None
                info.status, info.error = "error", f"registering commands failed: {_cause(exc)}"
                logger.warning("plugin '%s' was skipped: %s", info.name, info.error)


def _dist_name(ep: EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else None


def _dist_version(ep: EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else None


_manager: PluginManager | None = None
_manager_lock = threading.Lock()


def get_manager() -> PluginManager:
    """The process-wide plugin manager (created on first use; loads plugins on first lookup)."""
    global _manager
    if _manager is None:
        with _manager_lock:
            if _manager is None:
                _manager = PluginManager()
    return _manager


def reset_manager() -> None:
    """Forget the loaded plugins; the next lookup discovers them again (tests, env changes)."""
    global _manager
    with _manager_lock:
        _manager = None


def registry(kind: str) -> Registry:
    """The registry of ``kind`` (``"pooler"``, ``"activation"``, ``"task"``, ...), plugins loaded."""
    manager = _manager
    if manager is not None and manager._loaded and manager._fatal is None:  # every request looks up tasks: no detour
        return manager.registries[kind]
    return get_manager().registry(kind)


def register_pooler(name: str, *, granularity: str = "sequence", override: bool = False) -> Callable:
    """Decorator registering a pooler from user code, through the same registry as plugins.

    Example:
        >>> @poolkit.register_pooler("first_last_avg")
        ... def first_last_avg(hidden, batch):
        ...     return (hidden[batch.first_indices] + hidden[batch.last_indices]) / 2
    """
    from ..contracts.pooling import FunctionPooler, Pooler

    def decorator(obj: Any) -> Any:
        pooler = obj
        if not isinstance(obj, Pooler) and not (isinstance(obj, type) and issubclass(obj, Pooler)):
            pooler = FunctionPooler(obj, granularity)
        get_manager().add_runtime("pooler", name, pooler, override=override)
        return obj

    return decorator


def register_activation(name: str, *, override: bool = False) -> Callable:
    """Decorator registering an activation (tensor -> tensor) from user code.

    Example:
        >>> @poolkit.register_activation("tanh")
        ... def tanh(x):
        ...     return torch.tanh(x)
    """

    def decorator(fn: Any) -> Any:
        get_manager().add_runtime("activation", name, fn, override=override)
        return fn

    return decorator
