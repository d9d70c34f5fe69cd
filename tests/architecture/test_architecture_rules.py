"""The shape of the code, as issue 12 fixed it: small modules, no import cycles, a core that names no built-in."""

from __future__ import annotations

import ast
import functools
import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from layout import PACKAGES

ROOT = Path(__file__).resolve().parents[2]
#: names of built-in tasks, scorers and model families the core must not branch on
BUILTIN_NAMES = {
    "embed", "classify", "token_embed", "token_classify", "sparse_embed", "plugin",
    "cross-encoder", "bi-encoder", "late-interaction", "listwise",
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


def test_no_test_module_is_over_800_lines():
    """Issue 64: the tests are held to the same bound, their shared helpers (support/, conftest.py) too."""
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "tests").rglob("*.py") if (n := len(p.read_text().splitlines())) > 800}
    assert not long


def test_the_runtime_the_adapters_and_the_inputs_hold_no_module_over_500_lines():
    """The layers a request runs through are read most: each of their modules holds one concern."""
    long = {
        str(p.relative_to(ROOT)): n
        for name, p in MODULES.items()
        if name.split(".")[1:2] in (["runtime"], ["lora"], ["inputs"]) and (n := len(p.read_text().splitlines())) > 500
    }
    assert not long


def test_the_tests_mirror_the_layers():
    """tests/ mirrors the code: no test module at its top; each folder a core layer (the front ends'
    as cli/, server/, integrations/), the built-in models or kernels, these rules, a peer's ported
    tests (vllm/, sentence_transformers/), the builders and fixtures (support/) or the data."""
    tests = ROOT / "tests"
    assert sorted(p.name for p in tests.glob("test_*.py")) == []
    expected = set(LAYERS) | {"cli", "server", "integrations", "architecture", "models", "kernels", "vllm",
                              "sentence_transformers", "support", "data"}
    folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    assert folders <= expected, folders - expected
    assert not list((tests / "support").glob("test_*.py")), "support/ holds builders and fixtures, no tests"


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
    ("core/config/conversion.py", "embed"),
    ("core/config/conversion.py", "classify"),
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


#: The core's layers, bottom first: a module imports from its own layer and the layers below it.
LAYERS = ["contracts", "plugins", "config", "loading", "lora", "runtime", "inputs", "api", "entrypoints"]


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "poolkit" and parts[1] in LAYERS else None


def test_every_core_module_sits_in_a_layer():
    loose = [
        str(path.relative_to(ROOT))
        for name, path in MODULES.items()
        if str(path.relative_to(ROOT)).startswith("core") and _layer(name) is None and name not in ("poolkit", "poolkit.__main__")
    ]
    assert loose == [], "core/ holds only the public face (__init__, __main__) and the layer packages"


def test_each_layer_imports_only_itself_and_the_layers_below():
    upward = [
        f"{name} ({_layer(name)}) imports {target} ({_layer(target)})"
        for name, path in MODULES.items()
        if _layer(name)
        for target in _imports(name, path)
        if _layer(target) and LAYERS.index(_layer(target)) > LAYERS.index(_layer(name))
    ]
    assert upward == []


def test_each_layer_says_what_it_may_import():
    """The layer's docstring names exactly the layers below it, in order."""
    for index, layer in enumerate(LAYERS):
        doc = ast.get_docstring(ast.parse((ROOT / "core" / layer / "__init__.py").read_text())) or ""
        said = doc.split("May import:", 1)[1] if "May import:" in doc else ""
        named = [other for other in LAYERS if f"``{other}/``" in said]
        below = LAYERS[:index]
        assert named == below or (layer == "entrypoints" and "every other layer" in said), (layer, named)


def test_the_layering_test_sees_an_upward_import(tmp_path):
    bad = tmp_path / "engine.py"
    bad.write_text("from ..api.llm import LLM\n")
    targets = _imports("poolkit.runtime.engine", bad)
    assert "poolkit.api.llm" in targets and LAYERS.index("api") > LAYERS.index("runtime")


def _entry_points() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["entry-points"]["poolkit.plugins"]


def _hook_functions(name: str, path: Path) -> tuple[bool, set[str]]:
    """Whether ``name`` defines a ``@hookimpl`` function, and the modules it imports hook functions
    (``poolkit_*`` names) from, which its entry point then registers too."""
    defines, sources = False, set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        decorators = [d.func if isinstance(d, ast.Call) else d for d in getattr(node, "decorator_list", [])]
        if isinstance(node, ast.FunctionDef) and any(
            (d.id if isinstance(d, ast.Name) else getattr(d, "attr", "")) == "hookimpl" for d in decorators
        ):
            defines = True
        elif isinstance(node, ast.ImportFrom) and any(a.name.startswith("poolkit_") for a in node.names):
            base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)] if node.level else []
            sources.add(".".join(base + [node.module]) if node.level else node.module)
    return defines, sources


def test_every_builtin_hookimpl_module_has_its_entry_point_and_back():
    """Adding a built-in is two edits: the module with its ``@hookimpl`` functions, and its line
    under ``[project.entry-points."poolkit.plugins"]`` in pyproject.toml."""
    declared = set(_entry_points().values())
    scanned = {name: _hook_functions(name, path) for name, path in MODULES.items()}
    implementing = {name for name, (defines, _) in scanned.items() if defines}
    reached = declared | {source for name in declared if name in scanned for source in scanned[name][1]}
    assert sorted(implementing - reached) == [], "a module with @hookimpl functions has no entry point: poolkit never loads it"
    assert sorted(d for d in declared if d not in implementing and not scanned.get(d, (0, set()))[1]) == [], (
        "an entry point names a module with no @hookimpl function"
    )
    assert sorted(d for d in declared if d not in MODULES) == [], "an entry point names a module that does not exist"


def test_the_entry_point_check_sees_a_missing_line(tmp_path):
    module = tmp_path / "extra.py"
    module.write_text("from poolkit import hookimpl\n\n@hookimpl\ndef poolkit_register_tasks(register):\n    pass\n")
    assert _hook_functions("poolkit.builtin_poolers.extra", module) == (True, set())
    assert "poolkit.builtin_poolers.extra" not in _entry_points().values()


#: Where poolkit is imported from outside the package: the example plugins, the tests, the CI scripts,
#: the docs and README (their examples), and the project template ``poolkit plugins new`` renders.
IMPORTING = (
    *(p for p in (ROOT / "plugins").rglob("*.py") if "build" not in p.parts and "egg-info" not in str(p)),
    *(ROOT / "tests").rglob("*.py"),
    *(p for p in (ROOT / ".ci").rglob("*") if p.is_file()),
    *(ROOT / "docs").glob("*.md"),
    ROOT / "README.md",
    *(ROOT / "core" / "entrypoints" / "cli" / "plugin-template").rglob("*.tmpl"),
)
_FROM = re.compile(r"\bfrom\s+(poolkit(?:\.\w+)*)\s+import\s+(\([^)]*\)|[^\n`#]+)")
_IMPORT = re.compile(r"\bimport\s+(poolkit(?:\.\w+)+)\b")


def _written_imports(text: str) -> Iterator[tuple[str, list[str]]]:
    """Every absolute import of poolkit in ``text``, in code or in a string or a doc that shows code:
    ``(module, names)``, the names ``from module import`` takes (none for ``import module``)."""
    for match in _FROM.finditer(text):
        names = [re.match(r"\s*\(?\s*(\w+|\*)", piece) for piece in match.group(2).split(",")]
        yield match.group(1), [name.group(1) for name in names if name and name.group(1) != "*"]
    for match in _IMPORT.finditer(text):
        yield match.group(1), []


def _relative_imports(name: str, path: Path) -> Iterator[tuple[str, list[str]]]:
    """The package module ``name``'s relative imports, made absolute: ``(module, names)``."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            yield ".".join(base + ([node.module] if node.module else [])), [a.name for a in node.names if a.name != "*"]


@functools.cache
def _defined_names(module: str) -> set[str] | None:
    """The names ``module`` binds at its top level (under a top-level ``if``/``try`` too), read from its
    source; ``None`` for a module with a module ``__getattr__``, whose names only importing it tells."""
    body = list(ast.parse(MODULES[module].read_text(encoding="utf-8")).body)
    for node in list(body):
        if isinstance(node, (ast.If, ast.Try)):
            body.extend(node.body + node.orelse + [n for h in getattr(node, "handlers", []) for n in h.body])
    names: set[str] = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return None if "__getattr__" in names else names


def _missing(module: str, names: list[str]) -> list[str]:
    """What of ``from module import names`` (``import module`` without names) does not exist."""
    if module not in MODULES:
        return [module]
    defined = _defined_names(module)
    if defined is None:
        imported = importlib.import_module(module)
        defined = {n for n in names if hasattr(imported, n)}
    return [f"{module}.{n}" for n in names if n not in defined and f"{module}.{n}" not in MODULES]


def _missing_imports() -> list[str]:
    found = [(path, imported) for path in IMPORTING for imported in _written_imports(path.read_text(encoding="utf-8"))]
    for name, path in MODULES.items():
        found += [(path, imported) for imported in _written_imports(path.read_text(encoding="utf-8"))]
        found += [(path, imported) for imported in _relative_imports(name, path)]
    return sorted({f"{path.relative_to(ROOT)}: {gone}" for path, imported in found for gone in _missing(*imported)})


def test_every_import_of_poolkit_names_a_module_and_a_name_that_exist():
    """Each module has one import path, its layer's: the package, the example plugins, the tests, the
    CI scripts, the docs and the plugin template import nothing by a path that does not exist (the
    short paths of the modules before the layers, ``poolkit.batch``, ``poolkit.model``, ... are gone).
    A path is found as ``importlib.util.find_spec`` would find it in the built package, from the
    source tree that pyproject.toml maps (no module imported), so an import inside a function or a
    string of code (a plugin a test writes, a script it runs) is checked too."""
    assert _missing_imports() == []


def test_the_import_check_sees_a_path_that_does_not_exist(tmp_path):
    gone = "poolkit" + ".batch"  # spelled apart, so this file does not import it
    text = f"from {gone} import PackedBatch\nimport {gone}\nfrom poolkit.contracts.batch import PackedBatch, Nothing\n"
    missing = [m for imported in _written_imports(text) for m in _missing(*imported)]
    assert missing == ["poolkit.batch", "poolkit.contracts.batch.Nothing", "poolkit.batch"]
    module = tmp_path / "sneaky.py"
    module.write_text("from .layers import linear\nfrom .blocks.linear import linear\n")
    relative = [m for imported in _relative_imports("poolkit.builtin_models.sneaky", module) for m in _missing(*imported)]
    assert relative == ["poolkit.builtin_models.layers"]


#: The folders of the built-in plugins, and the core's layers a plugin may use (those below the runtime).
BUILTIN_FOLDERS = ("builtin_models", "builtin_poolers", "io_processors", "kernels")
PLUGIN_LAYERS = ("contracts", "plugins", "config", "loading")


def _builtin_modules() -> dict[str, Path]:
    return {name: path for name, path in MODULES.items() if name.split(".")[1:2] and name.split(".")[1] in BUILTIN_FOLDERS}


def test_builtins_use_only_the_cores_lower_layers():
    """A built-in is a plugin: it reaches the core through the contracts, the registries, the settings
    and the weight loading, as a third-party plugin does, never through the runtime, the inputs, the
    API or a front end."""
    above = [
        f"{name} imports {target}"
        for name, path in _builtin_modules().items()
        for target in _imports(name, path)
        if _layer(target) and _layer(target) not in PLUGIN_LAYERS
    ]
    assert _builtin_modules() and above == []


def test_the_core_imports_no_builtin():
    """The core finds the built-ins as it finds any plugin, through their entry points and the
    registries they fill: no core module imports one (a function-level import included), so a
    built-in could be left out, or replaced by a third-party plugin, as the design says."""
    builtins = set(_builtin_modules())
    imports = [
        f"{name} imports {target}"
        for name, path in MODULES.items()
        if name not in builtins
        for target in _imports(name, path)
        if target in builtins
    ]
    assert imports == []


def test_the_core_rule_sees_a_function_level_import_of_a_builtin(tmp_path):
    bench = tmp_path / "retrieval.py"
    bench.write_text("def run():\n    from poolkit.builtin_poolers.token_pooling import pool_tokens\n")
    assert "poolkit.builtin_poolers.token_pooling" in _imports("poolkit.entrypoints.bench.retrieval", bench)


def test_builtins_name_each_other_relatively():
    """Built-in modules import their siblings (and the other built-in folders) relatively, so the tree's
    own folders show those arrows; only the core is named by its package path (``poolkit.contracts...``)."""
    absolute = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.module}"
        for name, path in _builtin_modules().items()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[:2] in
        [["poolkit", folder] for folder in BUILTIN_FOLDERS]
    ]
    assert absolute == []


def test_the_builtin_rules_see_an_upward_import(tmp_path):
    bad = tmp_path / "model.py"
    bad.write_text("from poolkit.api.llm import LLM\nfrom poolkit.builtin_models.blocks.linear import linear\n")
    assert _layer("poolkit.api.llm") not in PLUGIN_LAYERS and "poolkit.api.llm" in _imports("poolkit.builtin_models.model", bad)
