"""The kernel registry and its contracts: each op's reference and documented signature, every
kernel taking its reference's arguments, select_kernel / kernel_for / kernel_table and ``poolkit info``."""

from __future__ import annotations

import functools
import sys
import textwrap
from typing import Any

import pytest
import torch

from poolkit import Kernel
from poolkit.contracts.hookspecs import hookimpl
from poolkit.kernels import linear
from poolkit.kernels.linear import linear_act
from poolkit.kernels.pooling import segment_pool_reference
from poolkit.plugins import registry
from poolkit.plugins.lookup import select_kernel


def _builtin_references() -> dict:
    from poolkit.kernels import attention, elementwise, int8, lora, maxsim, splade, token_pool

    return {
        "lora_delta": lora.lora_delta_reference,
        "gated_linear": linear.gated_linear,
        "gated_activation": linear.gated_activation,
        "linear_int8": int8.linear_int8,
        "gated_linear_int8": int8.gated_linear_int8,
        "residual_norm": elementwise.residual_norm,
        "rms_norm": elementwise.rms_norm,
        "rotary": elementwise.rotary,
        "linear_act": linear_act,
        "maxsim": maxsim.maxsim_reference,
        "segment_pool": segment_pool_reference,
        "splade_pool": splade.splade_pool_reference,
        "varlen_attention": attention.varlen_attention,
        "varlen_attention_softcap": attention.softcap_varlen_attention,
        "varlen_attention_int8": attention.varlen_attention,
        "prefix_attention": attention.prefix_attention,
        "token_pool": token_pool.hierarchical_pool,
    }


def _builtin_ops() -> set[str]:
    """The ops that built-in plugins register kernels for (installed plugins may add others)."""
    from poolkit.plugins import get_manager

    infos = get_manager().plugin_infos()
    return {name.split(":", 1)[0] for i in infos if i.builtin for name in i.provides.get("kernel", [])}


def _documented_signature(fn) -> str:
    """``fn(a, b, mode="mean", flag=False)``: how docs/plugins.md writes an op's signature."""
    import inspect
    import json

    params = inspect.signature(fn).parameters.values()
    shown = [
        p.name if p.default is p.empty else f"{p.name}={json.dumps(p.default) if isinstance(p.default, str) else p.default}"
        for p in params
    ]
    return f"fn({', '.join(shown)})"


def test_kernel_reference_gives_each_builtin_ops_reference() -> None:
    import poolkit
    import poolkit.plugins.lookup
    from poolkit.contracts.errors import UnknownName
    from poolkit.plugins import get_manager

    references = _builtin_references()
    assert set(references) == _builtin_ops() and set(references) <= set(poolkit.plugins.lookup.kernel_ops())
    assert {op: poolkit.kernel_reference(op) for op in references} == references
    builtin = {i.name for i in get_manager().plugin_infos() if i.builtin}
    for entry in registry("kernel").entries():  # every built-in kernel declares its op's reference
        if entry.plugin in builtin:
            assert entry.obj.reference is references[entry.name.split(":", 1)[0]], entry.name
    assert poolkit.kernel_reference is poolkit.plugins.lookup.kernel_reference
    assert poolkit.select_kernel is select_kernel and poolkit.kernel_table is poolkit.plugins.lookup.kernel_table
    with pytest.raises(UnknownName, match=r"^unknown kernel op 'segment_pol'; available: gated_activation, gated_linear, gated_linear_int8, linear_act, linear_int8, lora_delta, maxsim, prefix_attention, residual_norm, rms_norm, rotary, segment_pool"):
        poolkit.kernel_reference("segment_pol")


def test_every_builtin_kernel_op_has_its_contract_documented() -> None:
    """docs/plugins.md has a row per op with the reference's exact signature; the module says the same."""
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
    for op, reference in _builtin_references().items():
        signature = _documented_signature(reference)
        assert f"| `{op}` | `{signature}` |" in docs, (op, signature)
        module_doc = sys.modules[reference.__module__].__doc__
        assert "contract" in module_doc and f"``{op}``" in module_doc, reference.__module__
        assert f"``{signature}" in module_doc.replace("\n", " "), (reference.__module__, signature)
    section = docs.split("### poolkit_register_kernels(register)", 1)[1].split("\n### ", 1)[0]
    assert "kernel_reference(" in section and "poolkit.kernels" not in section  # no implementation module imported


def test_every_builtin_kernel_takes_its_references_arguments() -> None:
    """Kernel.reference's promise, checked over every built-in kernel: the same parameters, in the
    same order, with the same defaults (a model calls the op by position and keyword without knowing
    which kernel runs), and the reference's annotations where a kernel declares itself with
    ``implements``."""
    import inspect

    from poolkit.plugins import get_manager

    builtin = {i.name for i in get_manager().plugin_infos() if i.builtin}
    checked = 0
    for entry in registry("kernel").entries():
        if entry.plugin not in builtin:
            continue
        fn, reference = entry.obj.fn, entry.obj.reference
        shown = lambda f: [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]  # noqa: E731
        assert shown(fn) == shown(reference), entry.name
        if fn is not reference and not isinstance(fn, functools.partial):
            assert fn.__annotations__ == reference.__annotations__, entry.name
        checked += 1
    assert checked >= 30


def test_implements_refuses_a_kernel_that_does_not_take_the_references_arguments() -> None:
    from poolkit import implements

    def reference(x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
        return x

    @implements(reference)
    def fast(x, mode="mean"):
        return x

    assert fast.__annotations__ == reference.__annotations__ and fast(1) == 1
    assert Kernel(fn=fast, device="cpu").reference is reference  # declared once, at the definition
    with pytest.raises(TypeError, match=r"^Kernel\('.*<locals>.reference'\) needs its op's reference"):
        Kernel(fn=reference)
    for wrong in ("def kernel(x, mode='max'): pass", "def kernel(mode, x): pass", "def kernel(x, mode='mean', extra=1): pass"):
        scope: dict = {}
        exec(wrong, scope)
        with pytest.raises(TypeError, match=r"^kernel kernel\(.*\) does not take the arguments of its op's reference .*reference\(x"):
            implements(reference)(scope["kernel"])


def test_kernel_reference_works_inside_a_plugins_hook(fresh_plugins) -> None:
    source = textwrap.dedent(
        """
        from poolkit import Kernel, hookimpl, kernel_reference


        @hookimpl
        def poolkit_register_kernels(register):
            reference = kernel_reference("segment_pool")
            register("segment_pool:fastpool", Kernel(fn=reference, reference=reference, device="cpu", priority=-1))
        """
    )
    fresh_plugins.install("poolkit-fastpool", "1.0", {"fastpool": "poolkit_fake_fastpool"}, {"poolkit_fake_fastpool": source})
    info = fresh_plugins.infos()["fastpool"]
    assert info.status == "ok", info.error
    assert registry("kernel").get("segment_pool:fastpool").reference is segment_pool_reference


def _switched_kernels(op: str, switch: dict, *, segment_pool_too: bool = False, **fast: Any) -> tuple[Any, Any, Any]:
    """A plugin registering ``op:slow`` (always available) and ``op:fast`` (priority 1, available
    while ``switch["on"]``; ``fast`` adds Kernel arguments), and the two functions. With
    ``segment_pool_too`` it registers ``segment_pool:a_flip`` too, first by name and with another
    reference (``kernel_reference`` keeps the built-in one)."""

    def slow(x):
        return x + 1

    def quick(x):
        return x + 1

    class Switched:
        @hookimpl
        def poolkit_register_kernels(self, register):
            register(f"{op}:slow", Kernel(fn=slow, reference=slow))
            register(f"{op}:fast", Kernel(fn=quick, reference=slow, priority=1, is_available=lambda: switch["on"], **fast))
            if segment_pool_too:
                register("segment_pool:a_flip", Kernel(fn=quick, reference=slow, priority=-1))

    return Switched(), slow, quick


def test_select_kernel_takes_a_device_or_its_name_and_asks_is_available_every_call(fresh_plugins) -> None:
    import poolkit
    from poolkit.contracts.errors import UnknownName
    from poolkit.plugins.testing import plugin_registered

    switch = {"on": False}
    plugin, slow, fast = _switched_kernels("fake_flip", switch, segment_pool_too=True, device="cpu")

    def table() -> list[tuple]:
        rows = poolkit.kernel_table(["cpu", torch.device("cuda"), "cpu:0"])
        return [(r["for_device"], r["kernel"], r["registered_by"], r["available"], r["selected"]) for r in rows if r["op"] == "fake_flip"]

    with plugin_registered(plugin, "flip"):
        assert all(select_kernel("fake_flip", d) is slow for d in ("cpu", torch.device("cpu"), "cpu:0"))
        assert table() == [
            ("cpu", "fake_flip:fast", "flip", False, False),
            ("cpu", "fake_flip:slow", "flip", True, True),
            ("cuda", "fake_flip:slow", "flip", True, True),
        ]
        switch["on"] = True  # no reload: the next lookup asks again
        assert all(select_kernel("fake_flip", d) is fast for d in ("cpu", torch.device("cpu")))
        assert select_kernel("fake_flip", "cuda") is slow
        assert table()[:2] == [("cpu", "fake_flip:fast", "flip", True, True), ("cpu", "fake_flip:slow", "flip", True, False)]
        switch["on"] = False
        assert select_kernel("fake_flip", torch.device("cpu")) is slow
        assert poolkit.kernel_reference("fake_flip") is slow
        assert poolkit.kernel_reference("segment_pool") is segment_pool_reference
    with pytest.raises(UnknownName, match="no kernel for op 'fake_flip' on device 'cpu'"):
        select_kernel("fake_flip", "cpu")


def test_kernel_for_looks_a_kernel_up_once_per_owner_and_device(fresh_plugins) -> None:
    import types

    import poolkit
    from poolkit.plugins.lookup import kernel_for
    from poolkit.plugins.testing import plugin_registered

    switch = {"on": False}
    plugin, slow, fast = _switched_kernels("fake_once", switch)

    assert poolkit.kernel_for is kernel_for
    with plugin_registered(plugin, "flip"):
        owner = types.SimpleNamespace()
        assert kernel_for(owner, "fake_once", "cpu") is slow
        switch["on"] = True
        assert kernel_for(owner, "fake_once", torch.device("cpu")) is slow  # kept: asked once per owner and device
        assert kernel_for(types.SimpleNamespace(), "fake_once", "cpu") is fast  # another owner asks again
        assert owner._kernels == {("fake_once", torch.device("cpu")): slow}


def test_kernel_table_ranks_like_select_kernel() -> None:
    from poolkit.plugins.lookup import kernel_table

    rows = kernel_table()
    assert {r["for_device"] for r in rows} == {"cpu", "cuda"}
    assert {(op, device) for op in _builtin_ops() for device in ("cpu", "cuda")} <= {(r["op"], r["for_device"]) for r in rows}
    for op, device in {(op, device) for op in _builtin_ops() for device in ("cpu", "cuda")}:
        group = [r for r in rows if (r["op"], r["for_device"]) == (op, device)]
        assert [r["priority"] for r in group] == sorted((r["priority"] for r in group), reverse=True)
        (chosen,) = [r for r in group if r["selected"]]  # every built-in op has a torch kernel for "any"
        assert registry("kernel").get(chosen["kernel"]).fn is select_kernel(op, device)
        assert chosen["available"] and all(r["device"] in (device, "any") for r in group)
        entry = registry("kernel").entry(chosen["kernel"])
        assert (chosen["registered_by"], chosen["device"], chosen["priority"]) == (entry.plugin, entry.obj.device, entry.obj.priority)


def test_info_shows_the_kernel_table_for_the_models_device(tiny_encoders) -> None:
    import json

    from poolkit import LLM
    from poolkit.plugins.lookup import kernel_table

    described = LLM(str(tiny_encoders["bert"]), device="cpu").model.describe()
    assert described["kernels"] == kernel_table(["cpu"])
    selected = {r["op"]: r["kernel"] for r in described["kernels"] if r["selected"]}
    assert registry("kernel").get(selected["segment_pool"]).fn is select_kernel("segment_pool", "cpu")
    json.dumps(described)
