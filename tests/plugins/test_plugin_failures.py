"""Plugins that fail or clash, through real entry points: a broken or exiting plugin is skipped with
one warning (an error in strict mode), the POOLKIT_*PLUGINS switches, and names registered twice."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from fake_plugins import BROKEN, PLAIN_POOLER, install, plugin_source

import poolkit
from poolkit.contracts.errors import PluginError, UnknownName
from poolkit.plugins import registry


def warnings_about(caplog: pytest.LogCaptureFixture, plugin: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and f"plugin '{plugin}'" in r.getMessage()
    ]


# -- failures ------------------------------------------------------------------------------------


def test_broken_plugin_is_skipped_with_one_warning_and_explained_later(fresh_plugins, caplog):
    install(fresh_plugins, "broken", BROKEN, dist="poolkit-aaa-broken", version="0.3.1")
    install(fresh_plugins, "fine", PLAIN_POOLER.format(name="FINE"), dist="poolkit-zzz-fine")

    infos = fresh_plugins.infos()

    assert warnings_about(caplog, "broken") == [
        "plugin 'broken' (poolkit-aaa-broken 0.3.1) was skipped: "
        "import failed: RuntimeError: boom: libfoo is missing"
    ]
    assert infos["broken"].status == "error"
    assert infos["broken"].error == "import failed: RuntimeError: boom: libfoo is missing"
    assert infos["broken"].provides == {}
    assert infos["fine"].status == "ok"  # loading went on after the failure
    assert "FINE" in registry("pooler")
    with pytest.raises(UnknownName) as err:
        registry("pooler").get("FANCY")
    assert "unknown pooler 'FANCY'" in str(err.value)
    assert "failed to load and may have provided it: 'broken' (import failed: RuntimeError" in str(err.value)


@pytest.mark.parametrize(
    ("body", "cause"),
    [
        (
            "import poolkit_no_such_dependency\n",
            "import failed: ModuleNotFoundError: No module named 'poolkit_no_such_dependency'",
        ),
        ("def oops(:\n", "import failed: SyntaxError"),
        (
            "@hookimpl\ndef poolkit_register_poolers(register):\n    raise RuntimeError('hook exploded')\n",
            "RuntimeError: hook exploded",
        ),
        (
            "@hookimpl\ndef poolkit_register_poolers(registry):\n    pass\n",
            "invalid hook implementation",
        ),
    ],
    ids=["missing-dependency", "syntax-error", "hook-raises", "bad-signature"],
)
def test_each_kind_of_broken_plugin_is_an_error(fresh_plugins, caplog, body, cause):
    install(fresh_plugins, "bad", plugin_source(body))

    info = fresh_plugins.infos()["bad"]

    assert info.status == "error"
    assert info.error.startswith(cause), info.error
    assert info.provides == {}
    assert len(warnings_about(caplog, "bad")) == 1
    assert fresh_plugins.manager().pm.get_plugin("bad") is None


def test_misspelt_hook_makes_the_whole_plugin_an_error(fresh_plugins):
    body = """
    @hookimpl
    def poolkit_register_poolerz(register):
        register("TYPO", lambda hidden, batch: hidden)


    @hookimpl
    def poolkit_register_activations(register):
        register("fine_but_skipped", lambda x: x)
    """
    install(fresh_plugins, "typo", plugin_source(body))

    info = fresh_plugins.infos()["typo"]

    assert info.status == "error"
    assert info.error.startswith("invalid hook implementation: unknown hook 'poolkit_register_poolerz' in plugin")
    assert "fine_but_skipped" not in registry("activation")
    assert "TYPO" not in registry("pooler")


class Unwinding(BaseException):
    """Stands for any ``BaseException`` a plugin may raise that is not an ``Exception``."""


#: Plugin bodies that raise a BaseException that is no Exception, and the cause each is reported with.
NOT_AN_EXCEPTION = {
    "sys-exit-code": ("import sys\nsys.exit(3)\n", "import failed: SystemExit: 3"),
    "sys-exit-message": ("raise SystemExit('plugin gave up')\n", "import failed: SystemExit: plugin gave up"),
    "bare-system-exit": ("raise SystemExit\n", "import failed: SystemExit"),
    "base-exception": (
        f"from {__name__} import Unwinding\nraise Unwinding('deep')\n",
        "import failed: Unwinding: deep",
    ),
    "generator-exit": ("raise GeneratorExit\n", "import failed: GeneratorExit"),
    "hook-exits": (
        "@hookimpl\ndef poolkit_register_poolers(register):\n    register('EXITING', lambda h, b: h)\n    raise SystemExit(4)\n",
        "SystemExit: 4",
    ),
}


@pytest.mark.parametrize(("body", "cause"), NOT_AN_EXCEPTION.values(), ids=NOT_AN_EXCEPTION.keys())
def test_a_plugin_raising_system_exit_is_skipped_like_any_broken_plugin(fresh_plugins, caplog, body, cause):
    install(fresh_plugins, "exiting", plugin_source(body), version="0.9")
    install(fresh_plugins, "zfine", PLAIN_POOLER.format(name="ZFINE"))

    infos = fresh_plugins.infos()

    assert (infos["exiting"].status, infos["exiting"].error) == ("error", cause)
    assert warnings_about(caplog, "exiting") == [f"plugin 'exiting' (poolkit-exiting 0.9) was skipped: {cause}"]
    assert infos["exiting"].provides == {} and "EXITING" not in registry("pooler")
    assert fresh_plugins.manager().pm.get_plugin("exiting") is None
    assert infos["zfine"].status == "ok" and "ZFINE" in registry("pooler")  # loading went on


def test_a_system_exit_plugin_is_a_plugin_error_in_strict_mode(fresh_plugins, monkeypatch):
    install(fresh_plugins, "exiting", "raise SystemExit(3)\n", version="0.9")
    monkeypatch.setenv("POOLKIT_STRICT_PLUGINS", "1")

    expected = r"plugin 'exiting' \(poolkit-exiting 0\.9\) was skipped: import failed: SystemExit: 3"
    with pytest.raises(PluginError, match=expected):
        registry("pooler")
    with pytest.raises(PluginError, match=expected):
        registry("pooler")


def test_ctrl_c_while_a_plugin_imports_still_stops_and_leaves_no_half_loaded_toolkit(fresh_plugins):
    install(fresh_plugins, "interrupted", "raise KeyboardInterrupt\n")

    with pytest.raises(KeyboardInterrupt):
        registry("pooler")
    with pytest.raises(PluginError, match=r"loading plugins was interrupted \(KeyboardInterrupt\)"):
        registry("pooler")


@pytest.mark.parametrize("command", [["plugins"], ["embed", "--model", "{model}", "--dtype", "float32", "hello world"]])
def test_every_cli_command_survives_a_plugin_that_exits(fresh_plugins, monkeypatch, capsys, caplog, tiny_encoders, command):
    from poolkit.entrypoints import cli

    install(fresh_plugins, "exiting", "import sys\nsys.exit(3)\n", version="0.9")
    argv = [arg.format(model=tiny_encoders["bert"]) for arg in command]
    monkeypatch.setattr("sys.argv", ["poolkit", *argv])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code in (0, None)
    out, err = capsys.readouterr()
    assert warnings_about(caplog, "exiting") == [
        "plugin 'exiting' (poolkit-exiting 0.9) was skipped: import failed: SystemExit: 3"
    ]
    assert "Traceback" not in err
    if argv[0] == "plugins":
        listed = {p["name"]: p for p in json.loads(out)}
        assert (listed["exiting"]["status"], listed["exiting"]["error"]) == ("error", "import failed: SystemExit: 3")
    else:
        assert len(json.loads(out)["embedding"]) == 32


def test_a_fresh_process_reports_a_plugin_that_exits_on_stderr(fresh_plugins):
    install(fresh_plugins, "exiting", "import sys\nsys.exit(3)\n", version="0.9")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fresh_plugins.root), os.environ.get("PYTHONPATH", "")])}

    result = subprocess.run(
        [sys.executable, "-m", "poolkit", "plugins"], capture_output=True, text=True, timeout=120, env=env
    )

    assert result.returncode == 0, result.stderr
    assert "plugin 'exiting' (poolkit-exiting 0.9) was skipped: import failed: SystemExit: 3" in result.stderr
    assert any(p["name"] == "exiting" and p["status"] == "error" for p in json.loads(result.stdout))


def test_the_python_api_survives_a_plugin_that_exits(fresh_plugins, tiny_encoders, caplog):
    install(fresh_plugins, "exiting", "raise SystemExit(3)\n")

    llm = poolkit.LLM(str(tiny_encoders["bert"]), dtype="float32")

    assert len(llm.embed("hello world")[0].outputs.embedding) == 32
    assert len(warnings_about(caplog, "exiting")) == 1


def test_a_command_hook_that_exits_skips_its_plugin(fresh_plugins, caplog):
    import typer

    body = "@hookimpl\ndef poolkit_register_commands(app):\n    raise SystemExit(5)\n"
    install(fresh_plugins, "cmds", plugin_source(body))

    fresh_plugins.manager().register_commands(typer.Typer())

    info = fresh_plugins.infos()["cmds"]
    assert (info.status, info.error) == ("error", "registering commands failed: SystemExit: 5")
    assert warnings_about(caplog, "cmds") == ["plugin 'cmds' was skipped: registering commands failed: SystemExit: 5"]


def test_a_resolver_that_exits_is_a_plugin_error_naming_it(fresh_plugins):
    body = "@hookimpl\ndef poolkit_resolve_model(name):\n    raise SystemExit(6)\n"
    install(fresh_plugins, "resolver", plugin_source(body))

    with pytest.raises(PluginError, match=r"^plugin 'resolver' raised SystemExit: 6 in poolkit_resolve_model$"):
        poolkit.LLM("some-org/some-model")


@pytest.mark.parametrize(
    ("hook", "call", "message"),
    [
        ("poolkit_register_poolers", "register('STRINGY', 'not a pooler')",
         "TypeError: pooler 'STRINGY' must be a poolkit.Pooler or a function, got str"),
        ("poolkit_register_activations", "register('answer', 42)",
         "TypeError: activation 'answer' must be a callable tensor -> tensor, got int"),
        ("poolkit_register_architectures", "register('DictModel', dict)",
         "TypeError: architecture 'DictModel' must be a subclass of poolkit.Architecture, got <class 'dict'>"),
        ("poolkit_register_kernels", "register('op:impl', len)",
         "TypeError: kernel 'op:impl' must be a poolkit.Kernel, got builtin_function_or_method"),
        ("poolkit_register_tasks", "register('task', object())",
         "TypeError: task 'task' must be a poolkit.Task, got object"),
        ("poolkit_register_io_processors", "register('io', 'text')",
         "TypeError: IO processor 'io' must be a poolkit.IOProcessor, got str"),
        ("poolkit_register_poolers", "register(7, lambda h, b: h)",
         "TypeError: pooler names must be non-empty strings, got 7"),
    ],
    ids=["pooler", "activation", "architecture", "kernel", "task", "io-processor", "name"],
)
def test_registering_the_wrong_type_is_an_error_naming_the_offender(fresh_plugins, hook, call, message):
    body = f"@hookimpl\ndef {hook}(register):\n    {call}\n"
    install(fresh_plugins, "wrong", plugin_source(body))

    info = fresh_plugins.infos()["wrong"]

    assert (info.status, info.error) == ("error", message)


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ('register("bad_activation", None)', "TypeError: activation 'bad_activation' must be a callable"),
        (
            'register("softmax", lambda x: x)',
            "activation 'softmax' from plugin 'half' clashes with the one registered by plugin 'builtin_activations'",
        ),
        ('register("GOOD_activation", lambda x: x)', "plugin 'half' registers activation 'good_activation' twice"),
    ],
    ids=["invalid", "clash", "twice"],
)
def test_a_plugin_registers_all_or_nothing(fresh_plugins, second, message):
    body = f"""
    @hookimpl
    def poolkit_register_activations(register):
        register("good_activation", lambda x: x)
        {second}
    """
    install(fresh_plugins, "half", plugin_source(body))

    info = fresh_plugins.infos()["half"]

    assert info.status == "error"
    assert info.error.startswith(message), info.error
    assert "good_activation" not in registry("activation")
    assert registry("activation").entry("softmax").plugin == "builtin_activations"


# -- environment switches ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allow", "expected"),
    [
        ("alpha", {"alpha": "ok", "beta": "disabled"}),
        (" alpha , beta ", {"alpha": "ok", "beta": "ok"}),
        ("", {"alpha": "disabled", "beta": "disabled"}),
    ],
    ids=["one", "both-with-spaces", "empty-means-none"],
)
def test_allow_list_loads_only_listed_third_party_plugins(fresh_plugins, monkeypatch, allow, expected):
    install(fresh_plugins, "alpha", PLAIN_POOLER.format(name="ALPHA"))
    install(fresh_plugins, "beta", PLAIN_POOLER.format(name="BETA"))
    monkeypatch.setenv("POOLKIT_PLUGINS", allow)

    infos = fresh_plugins.infos()

    assert {name: infos[name].status for name in expected} == expected
    for name, status in expected.items():
        assert (f"poolkit_fake_{name}" in sys.modules) is (status == "ok")
        assert (name.upper() in registry("pooler")) is (status == "ok")
    assert all(info.status == "ok" for info in infos.values() if info.builtin)
    others = [info for info in infos.values() if not info.builtin and info.name not in expected]
    assert all(info.status == "disabled" for info in others)


def test_block_list_disables_before_import(fresh_plugins, monkeypatch, caplog):
    install(fresh_plugins, "bomb", BROKEN)
    install(fresh_plugins, "kept", PLAIN_POOLER.format(name="KEPT"))
    monkeypatch.setenv("POOLKIT_DISABLE_PLUGINS", "bomb,builtin_poolers")

    infos = fresh_plugins.infos()

    assert (infos["bomb"].status, infos["bomb"].error) == ("disabled", None)
    assert "poolkit_fake_bomb" not in sys.modules
    assert warnings_about(caplog, "bomb") == []
    assert infos["kept"].status == "ok"
    assert infos["builtin_poolers"].status == "ok"  # built-ins cannot be switched off
    assert "MEAN" in registry("pooler")


def test_strict_mode_raises_on_a_broken_plugin_and_keeps_raising(fresh_plugins, monkeypatch):
    install(fresh_plugins, "broken", BROKEN, version="0.3.1")
    monkeypatch.setenv("POOLKIT_STRICT_PLUGINS", "1")
    manager = fresh_plugins.manager()

    expected = r"plugin 'broken' \(poolkit-broken 0\.3\.1\) was skipped: import failed: RuntimeError: boom"
    with pytest.raises(PluginError, match=expected):
        registry("pooler")
    with pytest.raises(PluginError, match=expected):
        manager.plugin_infos()


def test_strict_mode_cli_prints_one_error_line(fresh_plugins, monkeypatch, capsys):
    from poolkit.entrypoints import cli

    install(fresh_plugins, "broken", BROKEN, version="0.3.1")
    monkeypatch.setenv("POOLKIT_STRICT_PLUGINS", "1")
    monkeypatch.setattr("sys.argv", ["poolkit", "plugins"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: plugin 'broken' (poolkit-broken 0.3.1) was skipped") and "Traceback" not in err


def test_lookup_names_disabled_plugins(fresh_plugins, monkeypatch):
    install(fresh_plugins, "broken", BROKEN)
    monkeypatch.setenv("POOLKIT_DISABLE_PLUGINS", "poolkit-broken")
    with pytest.raises(UnknownName, match="Disabled by POOLKIT_PLUGINS / POOLKIT_DISABLE_PLUGINS: broken"):
        registry("pooler").get("NOT_A_POOLER")


def test_strict_mode_off_with_zero(fresh_plugins, monkeypatch):
    install(fresh_plugins, "broken", BROKEN)
    monkeypatch.setenv("POOLKIT_STRICT_PLUGINS", "0")

    assert fresh_plugins.infos()["broken"].status == "error"


# -- duplicates ----------------------------------------------------------------------------------


@pytest.mark.parametrize("override", [False, True])
def test_registering_a_taken_name_needs_override(fresh_plugins, caplog, override):
    body = f"""
    from poolkit.contracts.pooling import Pooler


    class MyMean(Pooler):
        def __call__(self, hidden, batch):
            return hidden[batch.first_indices]


    @hookimpl
    def poolkit_register_poolers(register):
        register("mean", MyMean, override={override})
    """
    install(fresh_plugins, "meanie", plugin_source(body))
    caplog.set_level(logging.INFO, logger="poolkit")

    info = fresh_plugins.infos()["meanie"]
    entry = registry("pooler").entry("MEAN")

    if override:
        assert (info.status, info.provides) == ("ok", {"pooler": ["MEAN"]})
        assert entry.plugin == "meanie"
        assert type(entry.obj).__name__ == "MyMean"
        assert "pooler 'MEAN' from plugin 'meanie' overrides plugin 'builtin_poolers'" in caplog.text
    else:
        assert info.status == "error"
        assert info.error == (
            "pooler 'MEAN' from plugin 'meanie' clashes with the one registered by plugin "
            "'builtin_poolers'; pass override=True to replace it"
        )
        assert entry.plugin == "builtin_poolers"


def test_overriding_a_builtin_is_one_warning_at_the_default_level(fresh_plugins, caplog):
    body = """
    @hookimpl
    def poolkit_register_activations(register):
        register("softmax", lambda x: x, override=True)
    """
    install(fresh_plugins, "softer", plugin_source(body))

    assert fresh_plugins.infos()["softer"].status == "ok"

    assert warnings_about(caplog, "softer") == [
        "activation 'softmax' from plugin 'softer' overrides plugin 'builtin_activations'"
    ]
    assert registry("activation").entry("softmax").plugin == "softer"


def test_user_code_redefining_its_own_registration_is_not_a_warning(fresh_plugins, caplog):
    for _ in range(2):  # a notebook cell run twice
        poolkit.register_activation("twice", override=True)(lambda x: x)

    assert warnings_about(caplog, "<runtime>") == []


def test_two_third_party_plugins_registering_one_name(fresh_plugins):
    for plugin in ("pa", "pb"):
        install(fresh_plugins, plugin, PLAIN_POOLER.format(name="SHARED"))

    infos = fresh_plugins.infos()

    assert infos["pa"].status == "ok"
    assert infos["pb"].status == "error"
    assert "clashes with the one registered by plugin 'pa'" in infos["pb"].error
    assert registry("pooler").entry("SHARED").plugin == "pa"


def test_two_distributions_with_one_entry_point_name(fresh_plugins, caplog):
    first = PLAIN_POOLER.format(name="FIRST")
    fresh_plugins.install("poolkit-first", "1.0", {"same": "poolkit_fake_first"}, {"poolkit_fake_first": first})
    fresh_plugins.install("poolkit-second", "2.0", {"same": "poolkit_fake_second"}, {"poolkit_fake_second": BROKEN})

    infos = fresh_plugins.infos()

    assert (infos["same"].distribution, infos["same"].status) == ("poolkit-first", "ok")
    second = infos["same (poolkit-second)"]
    assert (second.distribution, second.version, second.status) == ("poolkit-second", "2.0", "error")
    assert second.error == (
        "plugin name 'same' is already used by distribution 'poolkit-first'; rename one of the entry points"
    )
    assert "poolkit_fake_second" not in sys.modules
    assert warnings_about(caplog, "same") == [f"plugin 'same' (poolkit-second 2.0) was skipped: {second.error}"]
