"""Plugin discovery and registration: entry points, plugin objects, files, modules, the env vars."""

import json
import sys

import pytest
import torch

import diffbench
from diffbench import plugins
from diffbench.contract import Plugin
from diffbench.hints import did_you_mean
from tests.helpers import error_lines, hooks_for

PLUGIN_FILE = '''
import torch
import diffbench

class Zero(diffbench.Estimator):
    """Scores every class zero."""

    name = "zero-est"
    params = {"scale": 1.0}

    def errors(self, model, x, trials, generator):
        return torch.zeros(x.shape[0], model.num_classes)

@diffbench.hookimpl
def register_estimators(register):
    register(Zero)
'''


class Dummy(diffbench.Estimator):
    """An estimator that scores every class zero."""

    name = "dummy"
    params = {"lr": 0.1, "steps": 3, "flag": False, "mode": "a", "sizes": [1, 2]}

    def errors(self, model, x, trials, generator):
        return torch.zeros(x.shape[0], model.num_classes)


@pytest.fixture
def plugin_file(tmp_path):
    path = tmp_path / "zero_plugin.py"
    path.write_text(PLUGIN_FILE)
    return path


def test_builtins_arrive_through_entry_points():
    found = plugins.registry()
    assert set(found) == {"dataset", "denoiser", "estimator", "reference"}
    builtins = [("dataset", "spirals"), ("denoiser", "mlp")] + [
        ("estimator", name) for name in ("full-mc", "shared-noise", "truncated")
    ]
    for kind, name in builtins:
        entry = found[kind][name]
        assert entry.kind == kind and entry.name == name and entry.cls.name == name
        assert entry.source.startswith("diffbench "), entry.source
        assert "diffbench_plugins." in entry.source


def test_a_registered_plugin_object_is_found_and_forgotten_on_unregister(register_plugin):
    obj = register_plugin(hooks_for(estimators=[Dummy]), name="test plugin")
    entry = plugins.get("estimator", "dummy")
    assert entry.cls is Dummy and entry.source == "test plugin"
    plugins.pm.unregister(obj)
    assert "dummy" not in plugins.registry()["estimator"]


def test_unknown_name_gets_a_did_you_mean():
    with pytest.raises(plugins.PluginError) as close:
        plugins.get("estimator", "shared-nosie")
    message = str(close.value)
    assert message.startswith("unknown estimator 'shared-nosie'; did you mean 'shared-noise'? known estimators: ")
    with pytest.raises(plugins.PluginError) as far:
        plugins.get("estimator", "zzzzzz")
    assert str(far.value).startswith("unknown estimator 'zzzzzz'; known estimators: ")
    assert str(far.value).endswith("(`diffbench list` shows them all, --plugin loads more)")


def test_the_did_you_mean_hint_names_the_closest_known_word_or_nothing():
    assert did_you_mean("stepz", ["lr", "steps", "batch_size"]) == "; did you mean 'steps'?"
    assert did_you_mean("zzzz", ["lr", "steps"]) == ""
    assert did_you_mean("steps", []) == ""


def test_a_name_clash_names_both_sources(register_plugin):
    class Clash(Dummy):
        name = "shared-noise"

    register_plugin(hooks_for(estimators=[Clash]), name="clashing plugin")
    with pytest.raises(plugins.PluginError) as info:
        plugins.registry()
    message = str(info.value)
    assert "'shared-noise' is registered twice" in message
    assert "clashing plugin" in message and "diffbench_plugins.monte_carlo" in message


@pytest.mark.parametrize(
    ("hooks", "match"),
    [
        ({"estimators": [int]}, "not a subclass of diffbench.Estimator"),
        ({"estimators": [type("SpiralsAgain", (diffbench.Dataset,), {"name": "x"})]}, "not a subclass"),
        ({"denoisers": [type("Nameless", (diffbench.Denoiser,), {})]}, "non-empty string `name`"),
        ({"datasets": [type("BadParams", (diffbench.Dataset,), {"name": "bp", "params": [1]})]}, "dict of defaults"),
    ],
)
def test_registering_a_bad_class_is_a_clear_error(register_plugin, hooks, match):
    register_plugin(hooks_for(**hooks), name="bad plugin")
    with pytest.raises(plugins.PluginError, match=match) as info:
        plugins.registry()
    assert "bad plugin" in str(info.value)


def test_a_plugin_raising_in_its_hook_is_reported(register_plugin):
    class Raising:
        @diffbench.hookimpl
        def register_datasets(self, register):
            raise RuntimeError("boom")

    register_plugin(Raising(), name="raising plugin")
    with pytest.raises(plugins.PluginError, match="raising plugin raised in register_datasets: RuntimeError: boom"):
        plugins.registry()


class TestParams:
    def test_defaults_are_merged_with_overrides(self):
        est = Dummy(steps=5)
        assert est.params == {"lr": 0.1, "steps": 5, "flag": False, "mode": "a", "sizes": [1, 2]}
        assert Dummy.params["steps"] == 3, "class defaults are untouched"
        assert repr(est) == "dummy[steps=5]" and repr(Dummy()) == "dummy"

    def test_unknown_key_gets_a_did_you_mean(self):
        with pytest.raises(diffbench.ParamError, match="no param 'step'; did you mean 'steps'") as info:
            Dummy(step=5)
        assert "known params: lr, steps, flag, mode, sizes" in str(info.value)

    def test_numbers_are_coerced_to_the_default_type(self):
        est = Dummy(lr=1, steps=4.0, sizes=(3,))
        assert est.params["lr"] == 1.0 and isinstance(est.params["lr"], float)
        assert est.params["steps"] == 4 and isinstance(est.params["steps"], int)
        assert est.params["sizes"] == [3]

    @pytest.mark.parametrize(
        ("key", "value"),
        [("lr", "fast"), ("lr", True), ("steps", 2.5), ("steps", "3"), ("flag", 1), ("mode", 2), ("sizes", 1)],
    )
    def test_wrong_types_are_rejected(self, key, value):
        with pytest.raises(diffbench.ParamError, match=f"param '{key}' must be"):
            Dummy(**{key: value})

    def test_validate_runs_after_merging(self):
        class Positive(Plugin):
            name = "positive"
            params = {"n": 1}

            def validate(self):
                if self.params["n"] < 1:
                    raise diffbench.ParamError("n must be positive")

        with pytest.raises(diffbench.ParamError, match="positive"):
            Positive(n=0)


def test_cli_plugin_file_is_listed_with_its_file_source(cli, plugin_file):
    result = cli("--plugin", plugin_file, "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("zero-est"))
    assert "scale=1.0" in lines[at]
    assert lines[at + 1].strip() == f"from file {plugin_file.resolve()}"


def test_cli_list_json_has_four_kinds(cli):
    result = cli("list", "--json")
    assert result.exit_code == 0
    listing = json.loads(result.stdout)
    assert set(listing) == {"datasets", "denoisers", "estimators", "references", "held_back"}
    assert listing["held_back"] == []
    estimators = {entry["name"]: entry for entry in listing["estimators"]}
    assert {"full-mc", "shared-noise", "truncated"} <= set(estimators)
    assert estimators["truncated"]["params"] == {"loss": "l2", "t_min": 0, "t_max": 300}
    assert estimators["full-mc"]["doc"].startswith("A fresh timestep")


# Regression (bug found by this suite): `list` never showed Denoiser.accepts.
def test_cli_list_shows_what_a_denoiser_accepts(cli):
    result = cli("list")
    assert "takes any shape" in result.stdout


def test_env_var_loads_a_file_plugin(cli, plugin_file, monkeypatch):
    monkeypatch.setenv(plugins.ENV_VAR, f" {plugin_file} ,")
    result = cli("list", "--json")
    assert result.exit_code == 0, result.output
    names = [entry["name"] for entry in json.loads(result.stdout)["estimators"]]
    assert "zero-est" in names


def test_a_module_plugin_loads_by_name(tmp_path, monkeypatch):
    (tmp_path / "my_zero_plugin.py").write_text(PLUGIN_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = plugins.load_plugin("my_zero_plugin")
    try:
        assert plugins.get("estimator", "zero-est").source == "module my_zero_plugin"
    finally:
        plugins.pm.unregister(module)
        sys.modules.pop("my_zero_plugin", None)


def test_a_missing_plugin_file_is_one_line_and_exit_2(cli, tmp_path):
    result = cli("--plugin", tmp_path / "nope.py", "list")
    assert result.exit_code == 2
    assert error_lines(result) == [
        f"diffbench: error: plugin file '{tmp_path / 'nope.py'}' does not exist; check the --plugin path"
    ]
    assert result.stdout == ""


def test_a_missing_plugin_module_is_one_line_and_exit_2(cli):
    result = cli("--plugin", "no_such_diffbench_plugin_module", "list")
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert line.startswith("diffbench: error: plugin module 'no_such_diffbench_plugin_module' cannot be imported")


def test_a_plugin_file_that_fails_to_import_is_one_line(cli, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('half-written plugin')\n")
    result = cli("--plugin", broken, "list")
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert "failed to import: RuntimeError: half-written plugin" in line


# Regression (bug found by this suite): pluggy's PluginValidationError escaped as a traceback with exit 1.
def test_a_plugin_with_a_wrong_hook_signature_is_one_line(cli, tmp_path):
    bad = tmp_path / "bad_signature.py"
    bad.write_text("import diffbench\n\n@diffbench.hookimpl\ndef register_estimators(reg):\n    pass\n")
    result = cli("--plugin", bad, "list")
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert line.startswith("diffbench: error:") and "register_estimators" in line


# Regression (bug found by this suite): a file plugin already imported was returned without registering it.
def test_a_file_plugin_can_be_loaded_again_after_unregistering(plugin_file):
    module = plugins.load_plugin(str(plugin_file))
    plugins.pm.unregister(module)
    again = plugins.load_plugin(str(plugin_file))
    assert "zero-est" in plugins.registry()["estimator"]
    plugins.pm.unregister(again)


@pytest.fixture
def install_fake(tmp_path, monkeypatch):
    """``install_fake(source)``: an installed distribution `diffbench-plugin-fake` 1.2.3 whose entry point
    `fake` is the module ``fake_diffbench_plugin`` with that source."""

    def install(source: str = PLUGIN_FILE) -> None:
        (tmp_path / "fake_diffbench_plugin.py").write_text(source)
        info = tmp_path / "diffbench_plugin_fake-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: diffbench-plugin-fake\nVersion: 1.2.3\n")
        (info / "entry_points.txt").write_text("[diffbench]\nfake = fake_diffbench_plugin\n")
        monkeypatch.syspath_prepend(str(tmp_path))

    yield install
    sys.modules.pop("fake_diffbench_plugin", None)


@pytest.fixture
def fake_distribution(install_fake):
    """The fake distribution (entry point `fake` registers zero-est), seen by a plugin set that scans installs."""
    install_fake()
    with plugins.using(installed=True):
        yield


FAKE_HELD_BACK = {
    "name": "fake",
    "distribution": "diffbench-plugin-fake",
    "version": "1.2.3",
    "value": "fake_diffbench_plugin",
}


def test_without_the_allow_list_every_entry_point_loads(fake_distribution):
    plugins.load_entry_points()
    assert plugins.get("estimator", "zero-est").source == "diffbench-plugin-fake 1.2.3 (fake_diffbench_plugin)"
    assert plugins.held_back == []


@pytest.mark.parametrize("value", ["diffbench-plugin-fake", " Diffbench_Plugin.Fake ,other-dist"])
def test_an_allowed_distribution_loads(fake_distribution, monkeypatch, value):
    monkeypatch.setenv(plugins.ALLOW_ENV_VAR, value)
    plugins.load_entry_points()
    assert "zero-est" in plugins.registry()["estimator"] and plugins.held_back == []


def test_an_empty_allow_list_loads_the_builtins_only_and_list_shows_the_rest(cli, fake_distribution):
    env = {plugins.ALLOW_ENV_VAR: ""}
    listing = json.loads(cli("list", "--json", env=env).stdout)
    names = {entry["name"] for entry in listing["estimators"]}
    assert "zero-est" not in names and {"full-mc", "shared-noise", "truncated"} <= names
    assert listing["held_back"] == [FAKE_HELD_BACK]
    result = cli("list", env=env)
    assert result.exit_code == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    at = lines.index(f"held back by {plugins.ALLOW_ENV_VAR}:")
    assert lines[at + 1].split() == ["fake", "diffbench-plugin-fake", "1.2.3", "(fake_diffbench_plugin)"]


def test_the_registry_follows_a_changed_allow_list(fake_distribution, monkeypatch):
    plugins.load_entry_points()
    assert "zero-est" in plugins.registry()["estimator"]
    monkeypatch.setenv(plugins.ALLOW_ENV_VAR, "")
    plugins.load_plugins()
    assert "zero-est" not in plugins.registry()["estimator"]
    assert [held.distribution for held in plugins.held_back] == ["diffbench-plugin-fake"]
    monkeypatch.delenv(plugins.ALLOW_ENV_VAR)
    plugins.load_plugins()
    assert "zero-est" in plugins.registry()["estimator"] and plugins.held_back == []


def test_an_unknown_name_in_the_allow_list_is_a_warning(cli, fake_distribution):
    result = cli("list", "--json", env={plugins.ALLOW_ENV_VAR: "diffbench-plugin-fake,no-such-dist"})
    assert result.exit_code == 0
    (line,) = error_lines(result)
    assert line.startswith(f"diffbench: warning: {plugins.ALLOW_ENV_VAR} names no-such-dist, but no installed")
    assert "diffbench-plugin-fake" in line
    assert json.loads(result.stdout)["held_back"] == []


# --- lazy discovery and plugin sets under a test's control -----------------------------------

LAZY_PROBE = """
import json, sys
import diffbench.testing
testing_imports_runner = "diffbench.runner" in sys.modules
import diffbench.cli
from diffbench import plugins
before = sorted(m for m in sys.modules if m.startswith("diffbench_plugins"))
plugins.registry()
after = sorted(m for m in sys.modules if m.startswith("diffbench_plugins"))
print(json.dumps({"testing_imports_runner": testing_imports_runner, "before": before, "after": after}))
"""


@pytest.fixture(scope="module")
def fresh_interpreter():
    """What a fresh interpreter imports: diffbench.testing, then the CLI, then the registry."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", LAZY_PROBE], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.slow  # a fresh interpreter imports torch and the CLI's libraries
def test_importing_diffbench_and_its_cli_loads_no_plugin(fresh_interpreter):
    assert fresh_interpreter["before"] == []
    assert "diffbench_plugins.toys" in fresh_interpreter["after"], "the first registry() loads the entry points"


@pytest.mark.slow  # a fresh interpreter imports torch and the CLI's libraries
def test_the_testing_kit_does_not_import_the_runner(fresh_interpreter):
    assert fresh_interpreter["testing_imports_runner"] is False


def test_discovery_waits_for_the_first_lookup(monkeypatch):
    scans = []
    real = plugins.importlib.metadata.distributions
    monkeypatch.setattr(plugins.importlib.metadata, "distributions", lambda: scans.append(1) or real())
    fresh = plugins.PluginSet()
    assert scans == [] and fresh.pm.get_plugins() == set()
    with plugins.using(installed=True, builtins=False) as scanned:
        assert len(scans) == 1 and scanned is plugins.active()
        plugins.registry()
        plugins.load_plugins()
        assert len(scans) == 1, "discovery runs once per plugin set"


def test_a_plugin_set_for_a_test_holds_the_builtins_and_what_it_is_given():
    outer = plugins.active()
    with plugins.using(hooks_for(estimators=[Dummy])) as inner:
        assert plugins.active() is inner and plugins.pm is inner.pm
        found = plugins.registry()["estimator"]
        assert found["dummy"].cls is Dummy and "shared-noise" in found
    assert plugins.active() is outer and "dummy" not in plugins.registry()["estimator"]
    with plugins.using(hooks_for(estimators=[Dummy]), builtins=False):
        assert {kind: set(entries) for kind, entries in plugins.registry().items()} == {
            "dataset": set(),
            "denoiser": set(),
            "estimator": {"dummy"},
            "reference": set(),
        }


def test_an_installed_plugin_is_seen_only_by_a_set_that_scans_installs(install_fake):
    install_fake()
    with plugins.using():
        assert "zero-est" not in plugins.registry()["estimator"]
    with plugins.using(installed=True):
        assert plugins.get("estimator", "zero-est").source == "diffbench-plugin-fake 1.2.3 (fake_diffbench_plugin)"


MISSPELT = """
import diffbench

@diffbench.hookimpl
def register_estimatorz(register):
    pass
"""


def test_a_misspelt_hook_in_a_plugin_file_is_one_line_naming_plugin_and_hooks(cli, tmp_path):
    misspelt = tmp_path / "misspelt.py"
    misspelt.write_text(MISSPELT)
    result = cli("--plugin", misspelt, "list")
    assert result.exit_code == 2
    assert error_lines(result) == [
        f"diffbench: error: plugin file {misspelt.resolve()} implements unknown hook 'register_estimatorz'; "
        "did you mean 'register_estimators'? (diffbench's hooks: register_datasets, register_denoisers, "
        "register_estimators, register_references)"
    ]
    assert not any("misspelt" in plugins.pm.get_name(p) for p in plugins.pm.get_plugins()), "left unregistered"


def test_a_misspelt_hook_on_a_registered_object_fails_the_registry(register_plugin):
    class Misspelt:
        @diffbench.hookimpl
        def register_dataset(self, register):
            pass

    register_plugin(Misspelt(), name="misspelt object")
    with pytest.raises(plugins.PluginError, match="misspelt object implements unknown hook 'register_dataset'; did"):
        plugins.registry()


def test_an_installed_plugin_that_fails_to_import_is_a_plugin_error(install_fake):
    install_fake("raise RuntimeError('half-installed')\n")
    with pytest.raises(plugins.PluginError) as info, plugins.using(installed=True):
        pass
    message = str(info.value)
    assert message.startswith("plugin diffbench-plugin-fake 1.2.3 (fake_diffbench_plugin) failed to import")
    assert "RuntimeError: half-installed" in message and plugins.ALLOW_ENV_VAR in message
