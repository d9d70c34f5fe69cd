"""Plugins: the plugin manager, the typed registries it fills, and the queries over them.

``manager`` discovers the entry points of the group ``poolkit.plugins`` and fills one registry per
kind; ``lookup`` answers what the rest of poolkit asks of the registries (an op's kernel for a
device, a model's scorer, the tasks that take an option); ``testing`` helps a plugin's own tests.

May import: ``contracts/``.
"""

from __future__ import annotations

from .manager import (
    BUILTIN_DISTRIBUTION,
    GROUP,
    PluginInfo,
    PluginManager,
    get_manager,
    register_activation,
    register_pooler,
    registry,
    reset_manager,
)

__all__ = [
    "BUILTIN_DISTRIBUTION", "GROUP", "PluginInfo", "PluginManager", "get_manager", "register_activation",
    "register_pooler", "registry", "reset_manager",
]
