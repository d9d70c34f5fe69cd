"""Layering: models reach kernels through the kernel registry and heads through the task registry.

No module under ``builtin_models/`` imports a kernel module or a built-in pooler, and private
torch names (``torch.ops.*``, ``torch._*``) stay in ``kernels/``; the private oneDNN ops the CPU
kernels rely on are checked against the installed torch, so an upgrade that drops them fails
here instead of silently falling back to the slow path.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest
import torch
from layout import PACKAGES

from poolkit import LLM, ModelLoadError
from poolkit.builtin_models.blocks import linear as layers
from poolkit.contracts.kernel import LINEAR_ACTIVATIONS
from poolkit.kernels import linear
from poolkit.plugins import registry
from poolkit.plugins.lookup import select_kernel

ROOT = Path(__file__).resolve().parents[2]
#: Folders that hold no poolkit module, or whose modules may use private torch names.
_SKIPPED = {"tests", "kernels", "build", "dist", "node_modules", "__pycache__"}


def _python_files(root: Path) -> Iterator[Path]:
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in _SKIPPED and not d.startswith((".", "venv")) and "egg-info" not in d]
        yield from (Path(folder) / name for name in files if name.endswith(".py"))


def _imported_modules(path: Path, package: str) -> Iterator[tuple[int, str]]:
    """Every module ``path`` imports, absolute (relative imports resolved against ``package``),
    with the line; ``from a import b`` yields both ``a`` and ``a.b``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            yield node.lineno, base
            yield from ((node.lineno, f"{base}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def _private_torch_names(path: Path) -> Iterator[tuple[int, str]]:
    """Uses of ``torch.ops`` or of a ``_private`` torch name in ``path``, through any alias."""
    tree = ast.parse(path.read_text(), str(path))
    aliases: dict[str, str] = {}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "torch":
                    found.append((node.lineno, alias.name))
                    aliases[alias.asname or "torch"] = alias.name if alias.asname else "torch"
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "torch":
            for alias in node.names:
                found.append((node.lineno, f"{node.module}.{alias.name}"))
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:  # whole chains only
            parts = [node.attr]
            value = node.value
            while isinstance(value, ast.Attribute):
                parts.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in aliases:
                found.append((node.lineno, ".".join([aliases[value.id], *reversed(parts)])))
    for line, name in found:
        segments = name.split(".")
        if segments[:2] == ["torch", "ops"] or any(s.startswith("_") and not s.endswith("__") for s in segments):
            yield line, name


def test_models_import_neither_kernel_modules_nor_builtin_poolers() -> None:
    files = sorted((ROOT / "builtin_models").rglob("*.py"))
    assert files, "builtin_models/ has no modules"
    forbidden = ("poolkit.kernels", "poolkit.builtin_poolers")
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in files
        for line, name in _imported_modules(path, ".".join(["poolkit", *path.relative_to(ROOT).parent.parts]))
        if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden)
    ]
    assert not bad, (
        "models reach kernels through the kernel registry (poolkit.kernel_for, poolkit.select_kernel) and heads through the task "
        "registry (registry('task').get(name).build(model)), never by import:\n" + "\n".join(bad)
    )


def test_relative_imports_are_resolved_by_the_scan(tmp_path: Path) -> None:
    module = tmp_path / "sneaky.py"
    module.write_text("from ..kernels import linear\nfrom .. import builtin_poolers\nfrom .layers import linear\n")
    names = {name for _, name in _imported_modules(module, "poolkit.builtin_models")}
    assert {"poolkit.kernels.linear", "poolkit.builtin_poolers", "poolkit.builtin_models.layers"} <= names


def test_private_torch_names_stay_in_kernels() -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} uses {name}"
        for path in _python_files(ROOT)
        for line, name in _private_torch_names(path)
    ]
    assert not bad, "private torch ops and names (torch.ops.*, torch._*) belong in kernels/ only:\n" + "\n".join(bad)


def test_private_torch_scan_sees_through_aliases(tmp_path: Path) -> None:
    module = tmp_path / "sneaky.py"
    module.write_text(
        "import torch\nimport torch.nn.functional as F\nfrom torch import ops as o\n"
        "torch.ops.mkldnn._linear_pointwise\nF._canonical_mask\ntorch._dynamo\no.aten\ntorch.__version__\n"
    )
    names = {name for _, name in _private_torch_names(module)}
    assert {"torch.ops.mkldnn._linear_pointwise", "torch.nn.functional._canonical_mask", "torch._dynamo"} <= names
    assert "torch.ops" in names  # the import of ``ops`` itself
    assert "torch.__version__" not in names and "torch.nn.functional" not in names


def test_the_cpu_kernels_name_every_private_op_they_call() -> None:
    source = ast.parse((ROOT / "kernels" / "linear.py").read_text())
    called = {
        node.attr
        for node in ast.walk(source)
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "torch.ops.mkldnn"
    }
    assert called and called <= set(linear.ONEDNN_OPS), called - set(linear.ONEDNN_OPS)


@pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="torch is built without oneDNN: the CPU kernels use plain torch"
)
def test_installed_torch_has_the_private_ops_the_cpu_kernels_use() -> None:
    missing = [op for op in linear.ONEDNN_OPS if not hasattr(torch.ops.mkldnn, op)]
    assert not missing, (
        f"torch {torch.__version__} has oneDNN but lacks torch.ops.mkldnn.{', torch.ops.mkldnn.'.join(missing)}, "
        "which the fused linear_act kernel (kernels/linear.py) calls: every model's linear layers would fall back "
        "to the slow unfused path. Port the kernel to this torch's ops (or pin torch)."
    )
    # oneDNN's rank follows the CPU (linear._onednn_priority): chosen on AVX-512, below the torch reference on AVX2
    chosen = (linear.linear_act_onednn, linear.linear_act_amx) if linear._onednn_priority() > 0 else (linear.linear_act,)
    assert select_kernel("linear_act", "cpu") in chosen
    x, w, b = torch.randn(3, 8), torch.randn(5, 8), torch.randn(5)
    try:
        got = linear.linear_act_onednn(x, w, b, "gelu")
        linear._onednn_dtypes()
    except (RuntimeError, TypeError) as exc:
        pytest.fail(f"torch {torch.__version__} changed a private oneDNN op the linear_act kernel calls: {exc}")
    torch.testing.assert_close(got, linear.linear_act(x, w, b, "gelu"), atol=2e-5, rtol=1e-5)


# -- the linear_act contract the models rely on -------------------------------------------------


def test_the_linear_kernels_implement_exactly_the_contracts_activations() -> None:
    """The activation names have one home, the op's contract; kernels/linear.py implements those and no others."""
    assert tuple(linear.ACTIVATIONS) == LINEAR_ACTIVATIONS
    assert set(linear._ONEDNN_POST_OPS) == set(LINEAR_ACTIVATIONS)
    assert set(linear.AMX_ACTIVATIONS) <= set(LINEAR_ACTIVATIONS)


def test_models_fuse_only_activations_the_contract_names() -> None:
    fused = {layers.fused_activation(name) for name in layers._FUSABLE_ACTIVATIONS}
    assert fused and fused <= set(LINEAR_ACTIVATIONS)


def test_every_linear_act_kernel_takes_every_activation_of_the_contract() -> None:
    x, w, b = torch.randn(4, 8), torch.randn(6, 8), torch.randn(6)
    kernels = [e for e in registry("kernel").entries() if e.name.startswith("linear_act:") and e.obj.is_available()]
    assert kernels
    for entry in kernels:
        for act in LINEAR_ACTIVATIONS:
            want = entry.obj.reference(x, w, b, act)
            got = entry.obj.fn(x, w, b, act)
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5, msg=f"{entry.name} with act={act!r}")


@pytest.mark.parametrize("name", sorted(layers._FUSABLE_ACTIVATIONS))
def test_fusable_activations_compute_what_the_kernel_fuses(name: str) -> None:
    x = torch.randn(5, 7, dtype=torch.float64)
    op = layers.fused_activation(name)
    assert torch.equal(layers.activation_function(name)(x), linear.ACTIVATIONS[op](x))


def test_other_activations_come_from_transformers() -> None:
    from transformers.activations import ACT2FN

    assert layers.fused_activation("quick_gelu") is None and layers.fused_activation(None) is None
    x = torch.randn(5)
    assert torch.equal(layers.activation_function("quick_gelu")(x), ACT2FN["quick_gelu"](x))
    with pytest.raises(ModelLoadError, match="unsupported activation 'nope'"):
        layers.activation_function("nope")


# -- SPLADE: the sparse_embed task owns the head and the load-time refusal ------------------------


def test_sparse_encoder_without_a_splade_head_is_refused_by_the_sparse_task(tiny_encoders, tmp_path: Path) -> None:
    path = tmp_path / "sparse-bert"
    shutil.copytree(tiny_encoders["bert"], path)
    (path / "1_SpladePooling").mkdir()
    (path / "1_SpladePooling" / "config.json").write_text(json.dumps({"pooling_strategy": "max"}))
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.sparse_encoder.modules.MLMTransformer"},
        {"idx": 1, "name": "1", "path": "1_SpladePooling",
         "type": "sentence_transformers.sparse_encoder.modules.splade_pooling.SpladePooling"},
    ]))
    refused = r"is a sentence-transformers SparseEncoder \(SpladePooling\), but BertModel has no SPLADE head"
    with pytest.raises(ModelLoadError, match=refused):
        LLM(str(path))
    assert "check_model" in vars(type(registry("task").get("sparse_embed")))



def _type_checking_lines(path: Path) -> set[int]:
    """The lines of ``path``'s ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            lines.update(range(node.lineno, max(n.end_lineno or n.lineno for n in node.body) + 1))
    return lines


def test_the_serving_layer_knows_no_protocol():
    """The serving layer (what the server does for a request, ``core/entrypoints/serving``) imports
    neither door nor a web or RPC framework at run time, and TEI's gRPC door imports nothing from
    the HTTP door: both pass the same checks and run the same work (issue 81)."""
    doors = ("poolkit.entrypoints.server", "poolkit.entrypoints.grpc", "fastapi", "starlette", "grpc", "uvicorn")
    serving = ROOT / "core" / "entrypoints" / "serving"
    for path in sorted(serving.glob("*.py")):
        annotations_only = _type_checking_lines(path)
        found = [(line, m) for line, m in _imported_modules(path, "poolkit.entrypoints.serving") if line not in annotations_only]
        assert not [(line, m) for line, m in found if m.startswith(doors)], path.name
    for path in sorted((ROOT / "core" / "entrypoints" / "grpc").glob("*.py")):
        found = [(line, m) for line, m in _imported_modules(path, "poolkit.entrypoints.grpc") if m.startswith("poolkit.entrypoints.server")]
        assert not found, (path.name, found)


def _package_sources() -> Iterator[tuple[Path, str]]:
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path, path.read_text(encoding="utf-8")


def test_the_front_ends_pass_the_renderer_through_six_members():
    """Every surface builds a request and passes the renderer's door; what lies behind it (sides,
    prompt names, media, chats) is the renderer's own (issue 81: front ends called 23 members)."""
    renderer = ROOT / "core" / "inputs" / "renderer.py"
    tree = ast.parse(renderer.read_text(encoding="utf-8"))
    (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Renderer"]
    members = {node.name for node in cls.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    members |= {"reads", "model", "media_processor", "media_policy", "served"}
    called: dict[str, set[str]] = {}
    for path, text in _package_sources():
        if path.parent == renderer.parent:
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Attribute) and node.attr in members:
                owner = node.value
                name = owner.attr if isinstance(owner, ast.Attribute) else owner.id if isinstance(owner, ast.Name) else ""
                if name == "renderer":
                    called.setdefault(node.attr, set()).add(str(path.relative_to(ROOT)))
    assert len(called) <= 6, called


def test_input_type_is_read_at_the_doors_only():
    """A request's ``input_type`` is a wire field: the wire modules and the renderer's door read it,
    tasks, architectures and the serving layer speak of a side (issue 81: 22 files read it)."""
    found = sorted(str(path.relative_to(ROOT)) for path, text in _package_sources() if "input_type" in text)
    assert len(found) <= 6, found
