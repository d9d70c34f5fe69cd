"""The shape of the code, as issue 12 fixed it: small modules, no import cycles, a core that names no built-in."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> import name, as pyproject.toml maps them
PACKAGES = {
    "core": "poolkit",
    "builtin_models": "poolkit.builtin_models",
    "builtin_poolers": "poolkit.builtin_poolers",
    "io_processors": "poolkit.io_processors",
    "kernels": "poolkit.kernels",
}
#: names of built-in tasks, scorers and model families the core must not branch on
BUILTIN_NAMES = {
    "embed", "classify", "token_embed", "token_classify", "sparse_embed", "plugin",
    "cross-encoder", "bi-encoder", "late-interaction",
    "bert", "roberta", "xlm-roberta", "modernbert", "qwen", "qwen2", "qwen3", "clip", "colbert", "splade",
}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every poolkit module ``name`` imports, wherever the import stands (functions and TYPE_CHECKING too)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [f"{prefix}.{a.name}" for a in node.names]
            # ``from . import x`` needs the package only for names that are no module of it
            targets = names + ([prefix] if any(n not in MODULES for n in names) else [])
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name and target != "poolkit":
                out.add(target)
    return out


def test_no_source_module_is_over_800_lines():
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > 800}
    assert not long


def test_the_core_has_no_import_cycles():
    graph = {m: {t for t in _imports(m, p) if t in MODULES} for m, p in MODULES.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state and module.startswith("poolkit") and not module.startswith("poolkit.builtin"):
            visit(module, [module])
    core_cycles = [c for c in cycles if all(not m.startswith(("poolkit.builtin", "poolkit.io_processors", "poolkit.kernels.")) for m in c)]
    assert not core_cycles


#: Where a built-in's name in core/ is data rather than a branch on the built-in, and why.
ALLOWED = {
    # the values of the `convert` setting are vLLM's spellings, which happen to be task names
    ("core/model.py", "embed"),
    ("core/model.py", "classify"),
}


def _core_branches_on_builtin_names() -> list[str]:
    found = []
    for name, path in MODULES.items():
        if not str(path.relative_to(ROOT)).startswith("core"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            constants = []
            if isinstance(node, ast.Compare):
                for operand in [node.left, *node.comparators]:
                    if isinstance(operand, (ast.Tuple, ast.List, ast.Set)):
                        constants += operand.elts
                    else:
                        constants.append(operand)
            elif isinstance(node, ast.Dict):
                constants = [k for k in node.keys if k is not None]
            elif isinstance(node, ast.match_case) if hasattr(ast, "match_case") else False:
                constants = [node.pattern]
            for c in constants:
                if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value.lower() in BUILTIN_NAMES:
                    if (str(path.relative_to(ROOT)), c.value) in ALLOWED:
                        continue
                    found.append(f"{path.relative_to(ROOT)}:{c.lineno} {c.value!r}")
    return found


def test_the_core_names_no_builtin_task_scorer_or_family_in_its_logic():
    """A comparison or a mapping keyed by a built-in's name in core/ is a branch on it."""
    assert _core_branches_on_builtin_names() == []


@pytest.mark.parametrize("folder", ["builtin_models"])
def test_models_import_no_pooler_or_kernel_module(folder):
    offenders = [
        f"{m} -> {t}"
        for m, p in MODULES.items()
        if m.startswith(f"poolkit.{folder}")
        for t in _imports(m, p)
        if t.startswith(("poolkit.builtin_poolers", "poolkit.kernels"))
    ]
    assert offenders == []
