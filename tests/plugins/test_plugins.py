"""Plugin discovery and registration, through real entry points: every hook from an installed
plugin, user-code registration, poolkit.plugins.testing, import hygiene, kernels in ``poolkit
plugins``, and plugin architectures served through conversions. Plugins that fail or clash are in
test_plugin_failures.py.

Third-party plugins here are fake distributions written into a temporary ``site-packages``
(``fresh_plugins.install``): importlib.metadata discovers them exactly as it would a
``pip install``, on the real loading path.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
import threading
import time
from importlib.metadata import distribution
from pathlib import Path

import pytest
import torch
from fake_plugins import BROKEN, PLAIN_POOLER, install, plugin_source

import poolkit
from poolkit.contracts import hookspecs
from poolkit.contracts.architecture import Architecture
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.errors import PluginError, UnknownName
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.pooling import Pooler
from poolkit.plugins import registry
from poolkit.plugins.lookup import select_kernel
from poolkit.plugins.testing import ENV_VARS, PluginSandbox, plugin_registered

HOOKS = {name: fn for name, fn in vars(hookspecs).items() if hasattr(fn, "poolkit_spec")}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"

BUILTIN_POOLERS = {"CLS", "LAST", "MEAN", "MEAN_SQRT_LEN", "WEIGHTEDMEAN", "MAX", "ALL"}
BUILTIN_ACTIVATIONS = {"normalize", "identity", "softmax", "sigmoid"}
BUILTIN_ARCHITECTURES = {"BertModel", "RobertaModel", "XLMRobertaModel"}

DOUBLE_CLS = """
from poolkit import hookimpl
from poolkit.contracts.pooling import Pooler


class DoubleCls(Pooler):
    def __call__(self, hidden, batch):
        return hidden[batch.first_indices] * 2


@hookimpl
def poolkit_register_poolers(register):
    register("double_cls", DoubleCls)
"""


def batch_and_hidden() -> tuple[PackedBatch, torch.Tensor]:
    batch = PackedBatch.from_sequences([[5, 6, 7], [8, 9]])
    hidden = torch.arange(10, dtype=torch.float32).view(5, 2)
    return batch, hidden


# -- discovery -----------------------------------------------------------------------------------


def test_third_party_plugin_is_discovered_through_its_entry_point(fresh_plugins):
    install(fresh_plugins, "double", DOUBLE_CLS, version="1.2.3")

    info = fresh_plugins.infos()["double"]

    assert info.as_dict() == {
        "name": "double",
        "distribution": "poolkit-double",
        "version": "1.2.3",
        "entry_point": "poolkit_fake_double",
        "builtin": False,
        "status": "ok",
        "error": None,
        "provides": {"pooler": ["DOUBLE_CLS"]},
    }
    entry = registry("pooler").entry("double_cls")
    assert entry.plugin == "double"
    assert type(entry.obj).__module__ == "poolkit_fake_double"
    assert sys.modules["poolkit_fake_double"].__file__.startswith(str(fresh_plugins.root))
    batch, hidden = batch_and_hidden()
    assert entry.obj(hidden, batch).tolist() == [[0.0, 2.0], [12.0, 14.0]]


def test_builtins_are_loaded_and_marked_builtin(fresh_plugins):
    declared = {ep.name for ep in distribution("poolkit").entry_points if ep.group == "poolkit.plugins"}
    infos = fresh_plugins.infos()

    builtins = {name: info for name, info in infos.items() if info.builtin}
    assert set(builtins) == declared
    for info in builtins.values():
        assert (info.distribution, info.version) == ("poolkit", poolkit.__version__)
        assert (info.status, info.error) == ("ok", None)
    assert set(infos["builtin_poolers"].provides["pooler"]) >= BUILTIN_POOLERS
    assert set(infos["builtin_activations"].provides["activation"]) >= BUILTIN_ACTIVATIONS
    assert {registry("pooler").entry(n).plugin for n in BUILTIN_POOLERS} == {"builtin_poolers"}
    assert {registry("activation").entry(n).plugin for n in BUILTIN_ACTIVATIONS} == {"builtin_activations"}
    if "builtin_bert" in declared:
        assert {registry("architecture").entry(n).plugin for n in BUILTIN_ARCHITECTURES} == {"builtin_bert"}


def test_every_hook_works_from_an_installed_plugin(fresh_plugins, tmp_path):
    model_dir = tmp_path / "packaged-model"
    model_dir.mkdir()
    source = plugin_source(
        f"""
        import torch
        from poolkit.contracts.architecture import Architecture
        from poolkit.contracts.io import IOProcessor, Prompt
        from poolkit.contracts.kernel import Kernel
        from poolkit.contracts.pooling import Pooler
        from poolkit.contracts.scoring import Scorer
        from poolkit.contracts.tasks import Task


        class Echo(Architecture):
            def forward(self, batch):
                return batch.input_ids.float().unsqueeze(1)


        class LastAgain(Pooler):
            def __call__(self, hidden, batch):
                return hidden[batch.last_indices]


        class Lines(IOProcessor):
            def pre_process(self, data, request_id=None):
                return [Prompt(text=line) for line in data.splitlines()]


        class Sparse(Task):
            name = "fake_embed"


        class Overlap(Scorer):
            name = "overlap"

            def supports(self, model):
                return False


        def add(x, y):
            return x + y


        @hookimpl
        def poolkit_register_architectures(register):
            register("EchoModel", Echo)


        @hookimpl
        def poolkit_register_poolers(register):
            register("last_again", LastAgain)


        @hookimpl
        def poolkit_register_activations(register):
            register("Double", lambda x: x * 2)


        @hookimpl
        def poolkit_register_io_processors(register):
            register("lines", Lines)


        @hookimpl
        def poolkit_register_kernels(register):
            register("fake_add:cpu", Kernel(fn=add, reference=torch.add, device="cpu", priority=5))


        @hookimpl
        def poolkit_register_tasks(register):
            register("fake_embed", Sparse)


        @hookimpl
        def poolkit_register_scorers(register):
            register("overlap", Overlap)


        @hookimpl
        def poolkit_resolve_model(name):
            return {str(model_dir)!r} if name == "fake-alias" else None


        @hookimpl
        def poolkit_resolve_architecture(name, config):
            return Echo if name == "EchoForAnything" else None


        @hookimpl
        def poolkit_checkpoint_layout(path):
            return None


        @hookimpl
        def poolkit_register_commands(app):
            @app.command("hello-fake")
            def hello():
                print("hello")
        """
    )
    fresh_plugins.install(
        "poolkit-everything", "0.1", {"everything": "poolkit_fake_all.plugin"}, {"poolkit_fake_all.plugin": source}
    )

    info = fresh_plugins.infos()["everything"]

    assert info.status == "ok", info.error
    assert set(HOOKS) <= set(vars(sys.modules["poolkit_fake_all.plugin"]))
    assert info.provides == {
        "architecture": ["EchoModel"],
        "pooler": ["LAST_AGAIN"],
        "activation": ["double"],
        "io_processor": ["lines"],
        "kernel": ["fake_add:cpu"],
        "task": ["fake_embed"],
        "scorer": ["overlap"],
        "model_resolver": ["poolkit_resolve_model"],
        "architecture_resolver": ["poolkit_resolve_architecture"],
        "layouts": ["poolkit_checkpoint_layout"],
        "commands": ["poolkit_register_commands"],
    }
    assert issubclass(registry("architecture").get("EchoModel"), Architecture)
    assert registry("activation").get("DOUBLE")(torch.tensor([1.5])).item() == 3.0
    assert [p.text for p in registry("io_processor").get("lines").pre_process("a\nb")] == ["a", "b"]
    assert select_kernel("fake_add", "cpu")(2, 3) == 5
    assert registry("task").get("fake_embed").name == "fake_embed"
    assert registry("scorer").get("overlap").name == "overlap"
    manager = fresh_plugins.manager()
    assert manager.resolve_model("fake-alias") == model_dir
    assert manager.resolve_architecture("EchoForAnything", None) is registry("architecture").get("EchoModel")

    import typer

    app = typer.Typer()
    manager.register_commands(app)
    assert "hello-fake" in [c.name for c in app.registered_commands]


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_every_hook_is_documented_under_its_signature(hook):
    heading = f"### {hook}({', '.join(inspect.signature(HOOKS[hook]).parameters)})"
    assert heading in DOCS.read_text().splitlines()


def test_a_lookup_during_loading_waits_for_all_plugins(fresh_plugins, tmp_path):
    started = tmp_path / "slow-plugin-started"
    body = f"""
    import pathlib
    import time

    pathlib.Path({str(started)!r}).touch()
    time.sleep(0.5)


    @hookimpl
    def poolkit_register_poolers(register):
        register("SLOW", lambda hidden, batch: hidden[batch.first_indices])
    """
    install(fresh_plugins, "slow", plugin_source(body))
    loader = threading.Thread(target=fresh_plugins.manager().load)
    loader.start()
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)

    found = "SLOW" in registry("pooler")  # asked while the other thread is still loading
    loader.join()

    assert found


# -- user-code registration ----------------------------------------------------------------------


def test_register_pooler_function_goes_to_the_registry_as_runtime(fresh_plugins):
    @poolkit.register_pooler("first_plus_last")
    def first_plus_last(hidden, batch):
        return hidden[batch.first_indices] + hidden[batch.last_indices]

    assert callable(first_plus_last) and first_plus_last.__name__ == "first_plus_last"
    entry = registry("pooler").entry("FIRST_PLUS_LAST")
    assert entry.plugin == "<runtime>"
    batch, hidden = batch_and_hidden()
    assert entry.obj(hidden, batch).tolist() == [[4.0, 6.0], [14.0, 16.0]]
    assert fresh_plugins.infos()["<runtime>"].as_dict()["provides"] == {"pooler": ["FIRST_PLUS_LAST"]}


def test_register_pooler_class_and_activation(fresh_plugins):
    @poolkit.register_pooler("min")
    class MinPooler(Pooler):
        def __call__(self, hidden, batch):
            return torch.stack([s.min(0).values for s in batch.split(hidden)])

    @poolkit.register_activation("Cube")
    def cube(x):
        return x**3

    assert isinstance(registry("pooler").get("MIN"), MinPooler)
    assert registry("activation").get("cube") is cube
    info = fresh_plugins.infos()["<runtime>"]
    assert (info.builtin, info.distribution, info.status) == (False, None, "ok")
    assert info.provides == {"pooler": ["MIN"], "activation": ["cube"]}


def test_runtime_registration_refuses_a_taken_name(fresh_plugins):
    clash = "pooler 'MEAN' from plugin '<runtime>' clashes with the one registered by plugin 'builtin_poolers'"
    with pytest.raises(PluginError, match=clash):
        poolkit.register_pooler("mean")(lambda hidden, batch: hidden)
    with pytest.raises(TypeError, match="activation 'nope' must be a callable"):
        poolkit.register_activation("nope")("not callable")


def test_unknown_name_lists_what_is_available_and_suggests(fresh_plugins, monkeypatch):
    monkeypatch.setenv("POOLKIT_PLUGINS", "")
    reg = registry("pooler")

    with pytest.raises(UnknownName) as err:
        reg.get("MAEN")

    message = str(err.value)
    assert isinstance(err.value, LookupError)
    assert message.startswith("unknown pooler 'MAEN'")
    assert "did you mean 'MEAN'?" in message
    assert f"; available: {', '.join(reg.names())}" in message
    assert BUILTIN_POOLERS <= set(reg.names())
    with pytest.raises(UnknownName) as err:
        registry("activation").get("zzz")
    assert "did you mean" not in str(err.value)
    assert str(err.value).startswith("unknown activation 'zzz'")


# -- poolkit.plugins.testing -----------------------------------------------------------------------------


class InlinePlugin:
    @hookimpl
    def poolkit_register_activations(self, register):
        register("halve", lambda x: x / 2)


class OverridingPlugin:
    @hookimpl
    def poolkit_register_activations(self, register):
        register("halve", lambda x: x / 4, override=True)


def test_plugin_registered_adds_and_removes(fresh_plugins):
    with plugin_registered(InlinePlugin(), "inline") as info:
        assert info.provides == {"activation": ["halve"]}
        assert registry("activation").get("halve")(torch.tensor([3.0])).item() == 1.5
        assert fresh_plugins.infos()["inline"].status == "ok"

    assert "halve" not in registry("activation")
    assert "inline" not in fresh_plugins.infos()
    assert fresh_plugins.manager().pm.get_plugin("inline") is None


def test_plugin_registered_raises_and_leaves_nothing_behind(fresh_plugins):
    class Typo:
        @hookimpl
        def poolkit_register_activationz(self, register):
            pass

    with pytest.raises(PluginError, match="unknown hook 'poolkit_register_activationz'"):
        with plugin_registered(Typo(), "typo"):
            pass  # pragma: no cover

    assert "typo" not in fresh_plugins.infos()


def test_removing_an_overridden_plugin_after_its_overrider(fresh_plugins):
    manager = fresh_plugins.manager()
    with plugin_registered(InlinePlugin(), "inline"):
        with plugin_registered(OverridingPlugin(), "overriding"):
            assert registry("activation").entry("halve").plugin == "overriding"
        assert "halve" not in registry("activation")
    assert "inline" not in manager.infos


def test_sandbox_leaves_no_trace(tmp_path, monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    with PluginSandbox(tmp_path) as sandbox:
        module = "poolkit_fake_trace.sub"
        source = PLAIN_POOLER.format(name="TRACE")
        dist_info = sandbox.install("poolkit-trace", "4.5", {"trace": module}, {module: source})
        assert dist_info == tmp_path / "poolkit_trace-4.5.dist-info"
        assert (tmp_path / "poolkit_fake_trace" / "__init__.py").read_text() == ""
        assert distribution("poolkit-trace").version == "4.5"
        assert sandbox.infos()["trace"].status == "ok"
        assert "poolkit_fake_trace.sub" in sys.modules

    assert str(tmp_path) not in sys.path
    assert not [m for m in sys.modules if m.startswith("poolkit_fake_trace")]
    assert poolkit.plugins.manager._manager is None


# -- import hygiene ------------------------------------------------------------------------------


def test_import_poolkit_has_no_side_effects():
    code = textwrap.dedent(
        """
        import sys
        import poolkit
        import poolkit.plugins.manager as p
        from poolkit import register_pooler, hookimpl
        assert p._manager is None, "a plugin manager was created on import"
        plugin_packages = ("poolkit.builtin", "poolkit.kernels", "poolkit.io_processors")
        loaded = sorted(m for m in sys.modules if m.startswith(plugin_packages))
        assert not loaded, loaded
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# -- kernels in `poolkit plugins` ----------------------------------------------------------------


def test_plugins_lists_each_kernel_with_where_it_is_selected(fresh_plugins):
    """Each plugin that registered kernels gets ``kernels``; the output stays a JSON list of plugins."""
    from typer.testing import CliRunner

    from poolkit.entrypoints.cli import app

    install(
        fresh_plugins,
        "twokernels",
        plugin_source(
            """
            from poolkit import Kernel, kernel_reference


            @hookimpl
            def poolkit_register_kernels(register):
                reference = kernel_reference("maxsim")
                register("fake_maxsim:never", Kernel(fn=reference, reference=reference, is_available=lambda: False))
                register("fake_maxsim:cuda", Kernel(fn=reference, reference=reference, device="cuda", priority=3))
            """
        ),
    )
    plain = json.loads(CliRunner().invoke(app, ["plugins"]).stdout)
    listed = json.loads(CliRunner().invoke(app, ["plugins", "--all"]).stdout)
    assert isinstance(listed, list) and [p["name"] for p in plain] == [p["name"] for p in listed if not p["builtin"]]
    mine = next(p for p in plain if p["name"] == "twokernels")
    assert mine["provides"] == {"kernel": ["fake_maxsim:never", "fake_maxsim:cuda"]}
    assert mine["kernels"] == [
        {"kernel": "fake_maxsim:cuda", "device": "cuda", "priority": 3, "available": True, "selected_for": ["cuda"]},
        {"kernel": "fake_maxsim:never", "device": "any", "priority": 0, "available": False, "selected_for": []},
    ]
    for plugin in listed:
        kernels = plugin.get("kernels")
        assert (kernels is not None) == ("kernel" in plugin["provides"]), plugin["name"]
        for kernel in kernels or []:
            op = kernel["kernel"].split(":", 1)[0]
            entry = registry("kernel").get(kernel["kernel"])
            assert (kernel["device"], kernel["priority"], kernel["available"]) == (entry.device, entry.priority, entry.is_available())
            if op != "fake_maxsim":  # checked above: its two kernels share one fn, and none runs on the CPU
                expected = [d for d in ("cpu", "cuda") if entry.device in (d, "any") and select_kernel(op, d) is entry.fn]
                assert kernel["selected_for"] == expected, kernel
    pooling = next(p for p in listed if p["name"] == "builtin_pooling_kernel")
    assert {k["kernel"] for k in pooling["kernels"]} == set(pooling["provides"]["kernel"])


# -- issue 17: conversion to a declared base, the token_classify rule, hook typos, disabled plugins --


def _tiny_classifier(path: Path) -> Path:
    from tiny_models import build_classifier

    return build_classifier(path, "bert", 3)


def test_convert_embed_serves_a_plugin_classifier_with_the_base_it_declares(fresh_plugins, tmp_path):
    """A plugin's ``XForSequenceClassification`` names its headless architecture in ``base_architecture``;
    no ``XModel`` naming rule is needed."""
    from poolkit.builtin_models.bert import BertForSequenceClassification, BertModel

    class Encoder(BertModel):
        pass

    class Classifier(BertForSequenceClassification):
        base_architecture = "TinyConvEncoder"

    class Plugin:
        @hookimpl
        def poolkit_register_architectures(self, register):
            register("TinyConvEncoder", Encoder)
            register("TinyConvForSequenceClassification", Classifier)

    path = _tiny_classifier(tmp_path / "clf")
    overrides = {"architectures": ["TinyConvForSequenceClassification"]}
    with plugin_registered(Plugin(), "tinyconv"):
        llm = poolkit.LLM(str(path), convert="embed", hf_overrides=overrides, dtype="float32")
        assert llm.model.architecture_name == "TinyConvEncoder" and type(llm.model.architecture) is Encoder
        assert "classify" not in llm.supported_tasks and "embed" in llm.supported_tasks
        named = poolkit.LLM(str(path), convert="embed", dtype="float32")  # BertForSequenceClassification -> BertModel
        got, want = llm.embed("hello there")[0].outputs.embedding, named.embed("hello there")[0].outputs.embedding
        assert got == pytest.approx(want, abs=1e-6)
        assert poolkit.LLM(str(path), hf_overrides=overrides).model.architecture_name == "TinyConvForSequenceClassification"


def test_convert_embed_without_a_base_says_what_is_missing(fresh_plugins, tmp_path):
    from poolkit import ModelLoadError
    from poolkit.builtin_models.bert import BertForSequenceClassification

    class Classifier(BertForSequenceClassification):
        pass

    class Plugin:
        @hookimpl
        def poolkit_register_architectures(self, register):
            register("TinyConvForSequenceClassification", Classifier)

    path = _tiny_classifier(tmp_path / "clf")
    with plugin_registered(Plugin(), "tinyconv"), pytest.raises(ModelLoadError) as err:
        poolkit.LLM(str(path), convert="embed", hf_overrides={"architectures": ["TinyConvForSequenceClassification"]})
    message = str(err.value)
    assert message == (
        "convert='embed' serves hidden states without the classification head, but "
        "TinyConvForSequenceClassification is registered with one and its base architecture 'TinyConvModel' "
        "(by the name rule <Prefix>Model) is not registered; register the headless architecture as "
        "'TinyConvModel', or set base_architecture on Classifier to the registered name of its headless architecture"
    )
    assert "no poolkit architecture" not in message and "native" not in message


def test_a_plugin_sequence_classifier_serves_token_classify_as_built_ins_do(fresh_plugins, tmp_path):
    """The rule is ``Architecture.token_classifier``'s default: a plugin that writes only ``sequence_classifier``
    serves ``token_classify`` with it on every token, as vLLM serves a sequence classifier."""
    from poolkit.builtin_models.bert import BertForSequenceClassification

    class SequenceHeadOnly(BertForSequenceClassification):
        token_classifier = Architecture.token_classifier  # as written by a plugin that never defines it

    class Plugin:
        @hookimpl
        def poolkit_register_architectures(self, register):
            register("SeqOnlyForSequenceClassification", SequenceHeadOnly)

    path = _tiny_classifier(tmp_path / "clf")
    overrides = {"architectures": ["SeqOnlyForSequenceClassification"]}
    with plugin_registered(Plugin(), "seqonly"):
        llm = poolkit.LLM(str(path), hf_overrides=overrides, dtype="float32")
        assert {"classify", "token_classify"} <= set(llm.supported_tasks)
        (out,) = llm.encode("hello there", pooling_task="token_classify")
        arch = llm.model.architecture
        with torch.inference_mode():
            hidden = arch(PackedBatch.from_sequences([out.prompt_token_ids], device=llm.model.device))
            want = torch.softmax(arch.sequence_classifier()(hidden).float(), dim=-1).cpu()
        assert torch.allclose(out.outputs.data, want, atol=1e-5)


def test_an_architecture_written_against_the_old_classifier_names_still_serves(fresh_plugins, tmp_path):
    """``sequence_head`` / ``token_head`` were renamed ``sequence_classifier`` / ``token_classifier``
    (a head is a task's): a plugin that overrides the old names is served by them, with a
    DeprecationWarning naming the new one, and the old names still answer."""
    from poolkit.builtin_models.bert import BertForSequenceClassification

    with pytest.warns(DeprecationWarning) as caught:

        class OldNames(BertForSequenceClassification):
            def sequence_head(self):
                return self.classifier  # without BERT's pooler: not what the built-in would run

            def token_head(self):
                return None

    messages = sorted(str(w.message).split(" (")[0] for w in caught)
    assert messages == [
        "test_an_architecture_written_against_the_old_classifier_names_still_serves.<locals>.OldNames.sequence_head() "
        "has been renamed Architecture.sequence_classifier()",
        "test_an_architecture_written_against_the_old_classifier_names_still_serves.<locals>.OldNames.token_head() "
        "has been renamed Architecture.token_classifier()",
    ]
    assert OldNames.sequence_classifier is OldNames.sequence_head

    class Plugin:
        @hookimpl
        def poolkit_register_architectures(self, register):
            register("OldNamesForSequenceClassification", OldNames)

    path = _tiny_classifier(tmp_path / "clf")
    with plugin_registered(Plugin(), "oldnames"):
        llm = poolkit.LLM(str(path), hf_overrides={"architectures": ["OldNamesForSequenceClassification"]}, dtype="float32")
        assert "classify" in llm.supported_tasks and "token_classify" not in llm.supported_tasks
        (out,) = llm.classify("hello there")
        arch = llm.model.architecture
        assert arch.sequence_head() is arch.sequence_classifier() is arch.classifier
        assert arch.token_head() is None
        with torch.inference_mode():
            hidden = arch(PackedBatch.from_sequences([out.prompt_token_ids], device=llm.model.device))
            want = torch.softmax(arch.classifier(hidden[:1]).float(), dim=-1)[0].cpu()
        assert torch.allclose(torch.tensor(out.outputs.probs), want, atol=1e-5)


def test_a_misspelt_hook_name_suggests_the_hook(fresh_plugins):
    install(
        fresh_plugins,
        "typo",
        plugin_source(
            """
            @hookimpl
            def poolkit_register_pooler(register):
                register("TYPO", lambda hidden, batch: hidden[batch.first_indices])
            """
        ),
    )
    info = fresh_plugins.infos()["typo"]
    assert info.status == "error"
    assert "unknown hook 'poolkit_register_pooler'" in info.error
    assert info.error.endswith("(did you mean 'poolkit_register_poolers'?)")


def test_an_unknown_architecture_names_disabled_plugins(fresh_plugins, monkeypatch, tiny_encoders):
    from poolkit import ModelLoadError

    install(fresh_plugins, "broken", BROKEN)
    monkeypatch.setenv("POOLKIT_DISABLE_PLUGINS", "poolkit-broken")
    with pytest.raises(ModelLoadError) as err:
        poolkit.LLM(str(tiny_encoders["bert"]), hf_overrides={"architectures": ["NoSuchModel"]})
    message = str(err.value)
    assert message.startswith("no poolkit architecture for NoSuchModel")
    assert message.endswith("Disabled by POOLKIT_PLUGINS / POOLKIT_DISABLE_PLUGINS: broken") and "\n" not in message
