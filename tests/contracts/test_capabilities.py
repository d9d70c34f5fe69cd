"""Capabilities as protocols (issue 81): what a family does beyond the basic forward is a small
protocol it opts into, each read by one consumer, and ``Architecture`` keeps a short list of flags."""

from __future__ import annotations

import ast
import functools
import inspect
import re
from pathlib import Path
from typing import ClassVar, Mapping

import pytest
from transformers import PretrainedConfig

from poolkit.contracts import capabilities
from poolkit.contracts.architecture import Architecture, ListwiseLayout, TaskPrompt
from poolkit.plugins import registry

ROOT = Path(__file__).resolve().parents[2]
#: The folders whose modules read capabilities (the families in builtin_models/ only opt in).
READERS = ("core", "builtin_poolers", "io_processors")
CAPABILITIES = [
    obj for _, obj in inspect.getmembers(capabilities, inspect.isclass)
    if obj.__module__ == capabilities.__name__ and getattr(obj, "_is_protocol", False)
]


def _class_flags(cls: type) -> list[str]:
    """The class-level flags ``cls`` itself declares (its ``ClassVar`` annotations, strings here)."""
    return [name for name, hint in vars(cls).get("__annotations__", {}).items() if str(hint).startswith("ClassVar")]


@functools.lru_cache(maxsize=None)
def _capability_imports() -> dict[str, set[str]]:
    """Per module outside the contracts, the names it imports from the capabilities module."""
    found: dict[str, set[str]] = {}
    for folder in READERS:
        for path in (ROOT / folder).rglob("*.py"):
            if path.parent == ROOT / "core" / "contracts":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("capabilities"):
                    found.setdefault(str(path.relative_to(ROOT)), set()).update(a.name for a in node.names)
    return found


def _readers(name: str) -> set[str]:
    """The modules outside the contracts that import the capability ``name``."""
    return {module for module, names in _capability_imports().items() if name in names}


def test_architecture_keeps_at_most_twelve_flags():
    assert len(_class_flags(Architecture)) <= 12, _class_flags(Architecture)


#: Capability members ``Architecture`` still answers for every architecture, with the callers that
#: ask any architecture rather than the capability.
LEFT_ON_ARCHITECTURE: dict[str, str] = {}


def test_no_capability_member_is_left_on_architecture():
    members = {name for cap in CAPABILITIES for name in _protocol_members(cap)}
    assert members & set(vars(Architecture)) == set(LEFT_ON_ARCHITECTURE)


def _protocol_members(cap: type) -> set[str]:
    own = set(vars(cap)) | set(vars(cap).get("__annotations__", {}))
    return {name for name in own if not name.startswith("_")}


@pytest.mark.parametrize("cap", CAPABILITIES, ids=lambda c: c.__name__)
def test_each_capability_is_read_by_one_module(cap: type):
    assert len(_readers(cap.__name__)) == 1, _readers(cap.__name__)


@pytest.mark.parametrize("cap", CAPABILITIES, ids=lambda c: c.__name__)
def test_each_capability_is_documented_for_plugin_authors(cap: type):
    page = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    row = next((line for line in page.splitlines() if line.startswith(f"| `{cap.__name__}` |")), None)
    assert row is not None, f"docs/plugins.md has no row for {cap.__name__}"
    assert all(re.search(rf"(?<!\w){name}(?!\w)", row) for name in _protocol_members(cap)), row


def test_an_architecture_that_sets_the_old_attribute_has_the_capability():
    """A third-party architecture written when these were ``Architecture``'s class attributes keeps them."""

    class Legacy(Architecture):
        shares_prefixes = True
        claims: ClassVar[Mapping[str, Mapping[str, object]]] = {"OtherModel": {"layout": "mine"}}
        unsupported_dtypes: ClassVar[Mapping[str, str]] = {"float16": "overflows"}

    assert isinstance(Legacy, capabilities.ClaimsNames) and isinstance(Legacy, capabilities.RefusesDtypes)
    assert not isinstance(Legacy, capabilities.StandsIn) and not isinstance(Legacy, capabilities.MaskedLMHead)
    arch = Legacy(PretrainedConfig())
    assert isinstance(arch, capabilities.SharesPrefixes) and not isinstance(arch, capabilities.TaskAdapters)


def test_the_kept_check_answers_as_isinstance_once_per_class():
    """``capable``: the per-batch checks (token types, a skipped instruction) are kept per class,
    since a structural isinstance costs tens of Python calls on every batch (workload H's budget)."""

    class Plain(Architecture):
        pass

    class Typed(Architecture):
        uses_token_type_ids = True

    plain, typed = Plain(PretrainedConfig()), Typed(PretrainedConfig())
    for _ in range(2):  # the second answer is the kept one
        assert capabilities.capable(typed, capabilities.TakesTokenTypes) is True
        assert capabilities.capable(plain, capabilities.TakesTokenTypes) is False
        assert capabilities.capable(plain, capabilities.SkipsInstruction) is isinstance(plain, capabilities.SkipsInstruction)
    assert (Typed, capabilities.TakesTokenTypes) in capabilities._CAPABLE


def test_a_family_opts_in_by_naming_the_capability():
    archs = registry("architecture")
    assert isinstance(archs.get("Gemma2Model"), capabilities.RefusesDtypes)
    assert not isinstance(archs.get("BertModel"), capabilities.RefusesDtypes)
    assert isinstance(archs.get("JinaForRanking"), capabilities.ListwiseReranker)
    assert isinstance(archs.get("JinaForRanking").listwise, ListwiseLayout)
    assert issubclass(archs.get("GritLM"), capabilities.SkipsInstruction)
    assert not issubclass(archs.get("MistralModel"), capabilities.SkipsInstruction)


def test_the_moved_names_are_importable_from_where_plugins_imported_them():
    assert TaskPrompt is capabilities.TaskPrompt and ListwiseLayout is capabilities.ListwiseLayout
