"""docs/plugins.md keeps up with the extension surface: every hook, and every member of every contract.

The page is the plugin author's reference ("a plugin written from the docs alone needs nothing from
the source"), so a member added to a contract class, or a hook added to the hookspecs, fails here
until the page says what it is. A member counts as documented when it appears as a word inside an
inline code span of its contract's section, not just anywhere on the page.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from poolkit.contracts import hookspecs
from poolkit.contracts.architecture import Architecture
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.io import IOContext, IOProcessor, Prompt
from poolkit.contracts.kernel import Kernel, KernelPriority
from poolkit.contracts.params import Setting
from poolkit.contracts.pooling import Pooler
from poolkit.contracts.scoring import Scorer
from poolkit.contracts.tasks import Task
from poolkit.loading.model import PoolingModel
from poolkit.plugins import PluginInfo, testing

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGE = DOCS / "plugins.md"
HOOKS = {name: fn for name, fn in vars(hookspecs).items() if hasattr(fn, "poolkit_spec")}


def _heading(hook: str) -> str:
    return f"### {hook}({', '.join(inspect.signature(HOOKS[hook]).parameters)})"


def _lines_outside_fences(text: str) -> list[tuple[str, bool]]:
    """Each line with whether it lies outside a fenced code block (a ``# comment`` there is no heading)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append((line, False))
        else:
            out.append((line, not fenced))
    return out


def _headings(text: str) -> list[str]:
    return [line for line, outside in _lines_outside_fences(text) if outside and re.match(r"#{1,6} ", line)]


def _section(text: str, heading: str) -> str:
    """The prose under ``heading`` up to the next heading of the same or a higher level, fences removed."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = _lines_outside_fences(text)
    starts = [i for i, (line, outside) in enumerate(lines) if outside and line == heading]
    assert starts, f"docs/plugins.md has no heading {heading!r}"
    body = []
    for line, outside in lines[starts[0] + 1 :]:
        match = re.match(r"(#{1,6}) ", line) if outside else None
        if match and len(match.group(1)) <= level:
            break
        if outside:
            body.append(line)
    return "\n".join(body)


def _code_spans(prose: str) -> list[str]:
    return re.findall(r"`([^`]+)`", prose.replace("\n", " "))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading line."""
    title = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", title).replace(" ", "-")


def _own_members(cls: type) -> set[str]:
    """Public names ``cls`` itself defines: attributes, methods, properties, dataclass fields,
    annotated class attributes, ``__call__``, and what its own ``__init__`` takes (attributes of
    the same name: ``PoolingModel(name=...)`` is ``model.name``). Nothing inherited from
    ``torch.nn.Module`` or ``object``."""
    own = vars(cls)
    names = {n for n in own if not n.startswith("_")}
    annotations = inspect.get_annotations(cls) if hasattr(inspect, "get_annotations") else own.get("__annotations__", {})
    names |= {n for n in annotations if not n.startswith("_")}
    if dataclasses.is_dataclass(cls):
        names |= {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
    if "__call__" in own:
        names.add("__call__")
    if "__init__" in own:
        params = list(inspect.signature(own["__init__"]).parameters.values())[1:]
        names |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names - ALLOWED_UNDOCUMENTED.get(cls, set())


def _module_members(module) -> set[str]:
    """Public functions, classes and constants a module defines at top level (or under a
    top-level ``if``/``try``, where ``poolkit.plugins.testing`` defines its pytest fixture)."""
    names: set[str] = set()
    body = list(ast.parse(inspect.getsource(module)).body)
    for node in list(body):
        if isinstance(node, (ast.If, ast.Try)):
            body.extend(node.body)
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_")}


ARCH = _heading("poolkit_register_architectures")
IO = _heading("poolkit_register_io_processors")
MODEL = "## The loaded model: `poolkit.PoolingModel`"
#: contract class -> the section of docs/plugins.md that must name each of its members
CONTRACTS = {
    Architecture: ARCH,
    ConfigChecks: ARCH,
    Pooler: _heading("poolkit_register_poolers"),
    IOProcessor: IO,
    IOContext: IO,
    Prompt: IO,
    Kernel: _heading("poolkit_register_kernels"),
    KernelPriority: _heading("poolkit_register_kernels"),
    Task: _heading("poolkit_register_tasks"),
    Scorer: _heading("poolkit_register_scorers"),
    PackedBatch: "## Packed batches: `poolkit.PackedBatch`",
    PoolingModel: MODEL,
    Setting: MODEL,
    testing.PluginSandbox: "## Testing plugins",
    PluginInfo: "## Listing plugins: `poolkit plugins`",
}
#: Members a contract class defines that plugin authors neither implement nor call, each with the
#: reason. Empty today: every public member of the classes above is part of what a plugin sees.
ALLOWED_UNDOCUMENTED: dict[type, set[str]] = {}


@pytest.fixture(scope="module")
def page() -> str:
    return PAGE.read_text(encoding="utf-8")


@pytest.mark.parametrize("cls", list(CONTRACTS), ids=lambda c: c.__name__)
def test_every_public_member_of_a_contract_is_documented_in_its_section(page: str, cls: type) -> None:
    spans = _code_spans(_section(page, CONTRACTS[cls]))
    missing = sorted(
        name
        for name in _own_members(cls)
        if not any(re.search(rf"(?<!\w){re.escape(name)}(?!\w)", span) for span in spans)
    )
    assert not missing, f"{CONTRACTS[cls]} in docs/plugins.md does not name {cls.__name__}.{missing}"


def test_every_helper_of_poolkit_testing_is_documented(page: str) -> None:
    spans = _code_spans(_section(page, "## Testing plugins"))
    missing = sorted(n for n in _module_members(testing) if not any(re.search(rf"(?<!\w){n}(?!\w)", s) for s in spans))
    assert not missing, f"'Testing plugins' in docs/plugins.md does not name poolkit.plugins.testing.{missing}"


def test_the_member_scan_sees_what_a_plugin_author_uses() -> None:
    """The scan is no vacuous pass: it finds members of each kind and nothing from torch or object."""
    assert {"forward", "load_weights", "hidden_size", "base_architecture", "config"} <= _own_members(Architecture)
    assert "__call__" in _own_members(Pooler) and "granularity" in _own_members(Pooler)
    assert {"model_name", "tokenizer", "of"} <= _own_members(IOContext)
    assert {"poolers", "pooling_type", "hf_config", "tokenizer", "architecture"} <= _own_members(PoolingModel)
    assert {"cu_seqlens", "input_ids", "split", "from_sequences"} <= _own_members(PackedBatch)
    assert not _own_members(Architecture) & {"to", "eval", "parameters", "state_dict", "training"}
    assert {"plugin_registered", "fake_distribution", "PluginSandbox", "fresh_plugins", "ENV_VARS"} <= _module_members(testing)


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_every_hook_has_a_section_headed_by_its_signature(page: str, hook: str) -> None:
    assert _heading(hook) in _headings(page)
    assert _section(page, _heading(hook)).strip(), hook


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_every_hook_is_in_the_contracts_at_a_glance_table(page: str, hook: str) -> None:
    table = _section(page, "## Contracts at a glance")
    link = f"[`{_heading(hook)[4:]}`](#{_slug(_heading(hook))})"
    assert link in table, link


def test_every_link_to_a_heading_resolves(page: str) -> None:
    """In-page anchors and links to the other docs' headings all land on a heading."""
    prose = "\n".join(line for line, outside in _lines_outside_fences(page) if outside)
    broken = []
    for target, anchor in re.findall(r"\]\(([\w./-]*?)#([^)\s]+)\)", prose):
        path = PAGE if not target else (DOCS / target)
        if not path.is_file() or anchor not in {_slug(h) for h in _headings(path.read_text(encoding="utf-8"))}:
            broken.append(f"{target}#{anchor}")
    assert not broken, broken
