"""Reference classifiers: the fourth plugin kind, its conformance checks, its rows, plot lines and report section."""

from __future__ import annotations

import diffbench_plugins.references as builtin_references
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import diffbench
from diffbench import plugins, table_plots
from diffbench.cli import main
from diffbench.contract import PluginOutputError, check_probabilities
from diffbench.report import build_report
from diffbench.rundir import RunFolder
from diffbench.suite import Suite, load_suite
from diffbench.testing import check_reference
from diffbench.versus_references import best_vs_reference
from tests.helpers import write_suite
from tests.test_plugins import install_fake  # noqa: F401  (a fixture: an installed third-party distribution)


class Centroid(diffbench.Reference):
    """Nearest class mean, probabilities by softmax of minus the squared distances."""

    name = "centroid"
    params = {"scale": 1.0}

    def fit(self, x, y, num_classes, seed):
        flat = x.reshape(x.shape[0], -1)
        self.means = torch.stack([flat[y == c].mean(0) for c in range(num_classes)])

    def predict_proba(self, x):
        distances = torch.cdist(x.reshape(x.shape[0], -1), self.means) ** 2
        return (-distances / self.params["scale"]).softmax(1)


class Raises(Centroid):
    name = "raises"

    def fit(self, x, y, num_classes, seed):
        raise RuntimeError("no solver")


class WrongShape(Centroid):
    name = "wrong-shape-ref"

    def predict_proba(self, x):
        return super().predict_proba(x)[:, :1]


class NaNs(Centroid):
    name = "nan-ref"

    def predict_proba(self, x):
        return torch.full((x.shape[0], self.means.shape[0]), float("nan"))


class Constant(Centroid):
    name = "constant"

    def predict_proba(self, x):
        return torch.full((x.shape[0], self.means.shape[0]), 1.0 / self.means.shape[0])


class GlobalRandom(Centroid):
    name = "global-random"

    def predict_proba(self, x):
        return (super().predict_proba(x) + torch.rand(x.shape[0], self.means.shape[0])).softmax(1)


def reference_hooks(*classes):
    class ReferencePlugin:
        @diffbench.hookimpl
        def register_references(self, register):
            for cls in classes:
                register(cls)

    return ReferencePlugin()


@pytest.fixture
def builtins(register_plugin):
    """The built-in references, registered here when no installed entry point brings them yet."""
    if "logistic" not in plugins.registry()["reference"]:
        register_plugin(builtin_references)


def run_tiny(tmp_path, *extra, out="run"):
    suite = write_suite(tmp_path / "tiny.toml", trials=[1, 2], scenarios=["offline"])
    args = ["run", "--suite", suite, "--out", tmp_path / out, "--cache", tmp_path / "cache", *extra]
    return CliRunner(env={"DIFFBENCH_PLUGINS": None}).invoke(main, [str(a) for a in args], catch_exceptions=False)


# --- the plugin kind ---------------------------------------------------------------------------


def test_a_reference_plugin_registers_through_its_hook_for_one_test(register_plugin):
    assert "centroid" not in plugins.registry()["reference"]
    register_plugin(reference_hooks(Centroid))
    entry = plugins.get("reference", "centroid")
    assert entry.kind == "reference" and entry.cls is Centroid


def test_a_reference_that_is_no_reference_subclass_is_refused_in_one_line(register_plugin):
    register_plugin(reference_hooks(builtin_references.SmallCNN))
    with pytest.raises(plugins.PluginError, match="not a subclass of diffbench.Reference"):
        plugins.registry()


def test_an_unknown_reference_is_one_line_with_a_hint(builtins, tmp_path):
    result = run_tiny(tmp_path, "-r", "logistc")
    assert result.exit_code == 2
    assert "unknown reference 'logistc'; did you mean 'logistic'?" in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


def test_the_list_command_shows_the_references(builtins):
    result = CliRunner().invoke(main, ["list"])
    assert "references:" in result.output and "takes images [C, H, W]" in result.output
    assert "knn" in result.output and "k=5" in result.output


def test_a_selector_with_a_list_expands_to_one_reference_per_value(builtins):
    from diffbench.suite import instantiate

    assert [repr(r) for r in instantiate("reference", "knn[k=[1,5]]")] == ["knn[k=1]", "knn"]


# --- conformance kit ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [builtin_references.Logistic, builtin_references.KNN, Centroid])
def test_well_behaved_references_pass_the_kit(cls):
    probabilities = check_reference(cls)
    assert probabilities.shape == (12, 3)


def test_the_cnn_passes_the_kit_on_images_and_is_refused_on_points():
    check_reference(builtin_references.CNN(epochs=3), data_shape=(1, 8, 8))
    check_reference(builtin_references.CNN(epochs=3), data_shape=(1, 28, 28))  # the first convolution strides
    with pytest.raises(AssertionError, match="supports"):
        check_reference(builtin_references.CNN)


@pytest.mark.parametrize(
    "cls, message",
    [
        (Raises, "fit() raised RuntimeError: no solver"),
        (WrongShape, "returned shape [12, 1], expected [12, 3]"),
        (NaNs, "returned NaN or inf"),
        (Constant, "near chance"),
        (GlobalRandom, "the same seed gave different probabilities"),
    ],
)
def test_the_kit_catches_a_broken_reference(cls, message):
    with pytest.raises(AssertionError) as caught:
        check_reference(cls)
    assert message in str(caught.value) and cls.name in str(caught.value)


@pytest.mark.parametrize(
    "value, message",
    [
        (torch.ones(4, 3) / 3, None),
        (torch.ones(4, 2) / 2, "returned shape [4, 2], expected [4, 3]"),
        (torch.full((4, 3), float("nan")), "NaN or inf"),
        (torch.ones(4, 3), "not probabilities"),
        (torch.tensor([[1.5, -0.5, 0.0]] * 4), "not probabilities"),
    ],
)
def test_check_probabilities_names_the_reference_and_the_fix(value, message):
    if message is None:
        assert check_probabilities(value, 4, 3, "mine") is value
        return
    with pytest.raises(PluginOutputError) as caught:
        check_probabilities(value, 4, 3, "mine")
    assert message in str(caught.value) and "reference 'mine' predict_proba()" in str(caught.value)


# --- suites ------------------------------------------------------------------------------------


def test_a_suite_file_takes_references_and_old_suites_keep_their_settings(tmp_path):
    path = write_suite(tmp_path / "refs.toml", references=["logistic", "knn[k=3]"])
    assert load_suite(str(path)).references == ["logistic", "knn[k=3]"]
    assert "references" not in Suite().to_dict()  # a run folder from before references resumes unchanged
    assert Suite(references=["knn"]).to_dict()["references"] == ["knn"]


# --- runs --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One tiny run with ``-r logistic -r knn`` shared by this module's tests: (its folder, the CLI result)."""
    base = tmp_path_factory.mktemp("references")
    with plugins.using() as found:
        if "logistic" not in plugins.registry()["reference"]:
            found.register(builtin_references, None, "diffbench_plugins.references")
        result = run_tiny(base, "-r", "logistic", "-r", "knn")
    assert result.exit_code == 0, result.output
    return base / "run", result


def test_a_run_with_references_writes_one_row_each_beside_the_cells(reference_run):
    folder, result = reference_run
    assert "running 2 cells and 2 reference row(s)" in result.output
    assert ": reference classifiers, accuracy [95% CI]\n  logistic " in result.output  # the terminal summary
    table = pd.read_parquet(folder / "results.parquet")
    assert list(table["kind"]) == ["estimator", "estimator", "reference", "reference"]
    refs = table[table["kind"] == "reference"].set_index("estimator")
    assert list(refs.index) == ["logistic", "knn"] and set(refs["status"]) == {"ok"}
    assert (refs["trials"] == 0).all() and refs["nfe_per_sample"].isna().all() and (refs["denoiser"] == "").all()
    assert (refs["accuracy_ci_low"] <= refs["accuracy"]).all() and (refs["accuracy"] <= refs["accuracy_ci_high"]).all()
    assert (refs["n_test"] == 50).all() and (refs["test_digest"] == table["test_digest"].iloc[0]).all()
    assert (refs[["nll", "ece", "brier", "train_s", "samples_per_s"]].notna()).all().all()
    predictions = pd.read_parquet(folder / "predictions.parquet")
    assert set(refs["cell_id"]) <= set(predictions["cell_id"])
    knn = predictions[predictions["cell_id"] == refs.loc["knn", "cell_id"]]
    assert (knn["pred"] == knn["label"]).mean() == pytest.approx(refs.loc["knn", "accuracy"])


def test_the_references_appear_on_the_plot_and_in_the_report(reference_run):
    folder, _ = reference_run
    table = RunFolder(folder).read_table()
    ok = table[table["status"] == "ok"]
    figure = table_plots.accuracy_vs_nfe(ok[ok["kind"] == "estimator"], ok[ok["kind"] == "reference"])
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert {"reference: logistic", "reference: knn"} <= set(labels)
    assert (folder / "accuracy_vs_nfe.png").is_file()
    versus = best_vs_reference(table, RunFolder(folder).read_predictions())
    assert len(versus) == 2 and (versus["best_nfe"] <= versus["budget_nfe"]).all()  # one row per budget
    assert versus["budget_nfe"].is_monotonic_increasing and set(versus["test"]) == {"paired (McNemar exact)"}
    best_ref = ok[ok["kind"] == "reference"].sort_values("accuracy", ascending=False).iloc[0]
    assert (versus["reference"] == best_ref["estimator_label"]).all()
    page = build_report([folder], draw=False)
    assert "Against reference classifiers" in page and best_ref["estimator_label"] in page


@pytest.mark.slow
def test_resume_keeps_finished_reference_rows(builtins, reference_run, tmp_path):
    folder, _ = reference_run
    before = pd.read_parquet(folder / "results.parquet")
    args = ["run", "--resume", folder, "--cache", tmp_path / "cache"]
    result = CliRunner(env={"DIFFBENCH_PLUGINS": None}).invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "4 of 4 cells already finished" in result.output
    after = pd.read_parquet(folder / "results.parquet")
    assert list(after["started_at"]) == list(before["started_at"])


@pytest.mark.slow
def test_bad_references_fail_their_own_rows_in_one_line_and_the_rest_is_kept(register_plugin, tmp_path):
    register_plugin(reference_hooks(Centroid, Raises, WrongShape, NaNs))
    result = run_tiny(
        tmp_path, "-r", "raises", "-r", "wrong-shape-ref", "-r", "centroid", "-r", "nan-ref", "--no-plots"
    )
    assert result.exit_code == 1
    table = pd.read_parquet(tmp_path / "run" / "results.parquet").set_index("estimator_label")
    assert table.loc["centroid", "status"] == "ok" and (table.loc["shared-noise", "status"] == "ok").all()
    errors = table["error"]
    assert errors["raises"].startswith("reference 'raises' fit() raised RuntimeError: no solver; mend the plugin")
    assert (
        "reference 'wrong-shape-ref' predict_proba() returned shape [50, 1], expected [50, 2]"
        in errors["wrong-shape-ref"]
    )
    assert "reference 'nan-ref' predict_proba() returned NaN or inf; return finite" in errors["nan-ref"]
    assert all("\n" not in errors[name] for name in ("raises", "wrong-shape-ref", "nan-ref"))
    assert "failed: reference raises on spirals" in result.output


@pytest.mark.slow
def test_the_cnn_refuses_points_in_one_line(builtins, tmp_path):
    result = run_tiny(tmp_path, "-r", "cnn", "--no-plots")
    assert result.exit_code == 0, result.output
    assert "skipping spirals[n_train=200,n_test=50] x reference cnn: cnn takes images [C, H, W]" in result.output
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert set(table["kind"]) == {"estimator"}


THIRD_PARTY = '''
import torch
import diffbench

class Prototype(diffbench.Reference):
    """Nearest class mean."""

    name = "prototype"
    params = {"temperature": 1.0}

    def fit(self, x, y, num_classes, seed):
        flat = x.reshape(x.shape[0], -1)
        self.means = torch.stack([flat[y == c].mean(0) for c in range(num_classes)])

    def predict_proba(self, x):
        distances = torch.cdist(x.reshape(x.shape[0], -1), self.means) ** 2
        return (-distances / self.params["temperature"]).softmax(1)

@diffbench.hookimpl
def register_references(register):
    register(Prototype)
'''


@pytest.mark.slow
def test_a_third_party_reference_package_passes_the_kit_and_shows_in_table_plot_and_report(
    install_fake,  # noqa: F811  (the fixture imported above)
    tmp_path,
):
    install_fake(THIRD_PARTY)
    with plugins.using(installed=True):
        entry = plugins.get("reference", "prototype")
        assert entry.source.startswith("diffbench-plugin-fake 1.2.3")
        check_reference(entry.cls)
        result = run_tiny(tmp_path, "-r", "prototype")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "run"
    table = pd.read_parquet(folder / "results.parquet")
    row = table[table["kind"] == "reference"].iloc[0]
    assert row["estimator"] == "prototype" and row["status"] == "ok" and row["p_reference_temperature"] == 1.0
    ok = table[table["status"] == "ok"]
    figure = table_plots.accuracy_vs_nfe(ok[ok["kind"] == "estimator"], ok[ok["kind"] == "reference"])
    assert "reference: prototype" in figure.axes[0].get_legend_handles_labels()[1]
    page = build_report([folder], draw=False)
    assert "prototype: " in page and "McNemar" in page


def test_one_reference_row_per_dataset_and_reference_not_per_denoiser(builtins):
    from diffbench.reference_cell import reference_plans
    from diffbench.suite import expand

    suite = Suite(
        datasets=["spirals", "moons"], denoisers=["mlp", "resmlp"], trials=[1, 2], references=["logistic", "knn"]
    )
    grid = expand(suite, ["cpu"])
    assert len(grid) == 2 * 2 * 3 * 2
    plans = reference_plans(suite, grid, {})
    assert [p.cell.pair() for p in plans] == [
        "spirals x reference logistic",
        "spirals x reference knn",
        "moons x reference logistic",
        "moons x reference knn",
    ]
    assert len({p.id for p in plans} | {c.id for c in grid}) == len(plans) + len(grid)


class Counted(Centroid):
    """Centroid that counts its fits (the cache must save all but the first)."""

    name = "counted"
    fits = 0

    def fit(self, x, y, num_classes, seed):
        type(self).fits += 1
        super().fit(x, y, num_classes, seed)


def test_a_references_answers_are_cached_by_content_and_fitted_again_only_when_needed(register_plugin, tmp_path):
    register_plugin(reference_hooks(Counted))
    Counted.fits = 0
    rows, outputs = [], {}
    for out, extra in [("a", ()), ("b", ()), ("c", ("--no-cache",)), ("d", ()), ("e", ("--seed", "1"))]:
        if out == "d":  # a damaged cache file is said in one line and replaced
            (damaged,) = (tmp_path / "cache" / "references").glob("counted-spirals-*.npz")
            damaged.write_bytes(b"not a zip")
        result = run_tiny(tmp_path, "-r", "counted", "--no-plots", "--no-report", *extra, out=out)
        assert result.exit_code == 0, result.output
        outputs[out] = result.stdout
        table = pd.read_parquet(tmp_path / out / "results.parquet")
        rows.append(table[table["kind"] == "reference"].iloc[0])
        if out == "d":
            (line,) = [line for line in result.stderr.splitlines() if "x reference counted: cached answers" in line]
            assert "are unreadable (" in line and line.endswith("; fitting it again")
    assert Counted.fits == 4, "a, c (--no-cache), d (damaged file) and e (another seed) fit; b reads a's answers"
    a, b, c, d, _ = rows
    assert not a["cache_hit"] and b["cache_hit"] and not c["cache_hit"] and not d["cache_hit"]
    assert b["train_s"] == 0 and a["train_s"] > 0 and "from the cache" in b["timing_note"]
    assert b["samples_per_s"] == pytest.approx(a["samples_per_s"])
    assert "  counted " in outputs["b"] and "fit cached, " in outputs["b"] and "fit cached" not in outputs["a"]
    for column in ("accuracy", "nll", "ece", "temperature"):
        assert b[column] == a[column] == c[column], column
    predictions = [pd.read_parquet(tmp_path / out / "predictions.parquet") for out in "ab"]
    pd.testing.assert_frame_equal(*(p[p["cell_id"] == a["cell_id"]].reset_index(drop=True) for p in predictions))
