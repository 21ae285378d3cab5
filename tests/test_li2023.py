"""The built-in li2023 suite: it parses, selects the cells claims 1-6 need, and a run with claims on writes claims.md
and the report's claims section; one network trained to two objectives (``unet[objective=flow]``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diffbench import claims, columns, plugins
from diffbench.contract import ParamError
from diffbench.report import build_report
from diffbench.suite import Suite, SuiteError, expand, instantiate, load_suite, suite_from_dict
from diffbench.training import cache_key
from tests.helpers import write_suite

#: The models the suite is for: (dataset, network) trained to both objectives.
MODELS = [("mnist5k", "unet"), ("digits", "unet"), ("spirals", "mlp")]


@pytest.fixture(scope="module")
def grid():
    suite = load_suite("li2023")
    return suite, expand(suite, ["cpu"])


def test_the_suite_parses_asks_for_claims_and_uses_the_bank(grid):
    suite, _ = grid
    assert suite.claims and suite.errors == "bank" and suite.scenarios == ["offline"]
    assert suite.quality == "accuracy", "the claims read accuracies: no calibration pass, no noise repeats"
    assert suite.references == ["logistic", "knn", "cnn"]
    assert suite.to_dict()["claims"] is True
    assert "claims" not in Suite().to_dict(), "older run folders resume with the same settings"
    assert "quality" not in Suite().to_dict() and suite.to_dict()["quality"] == "accuracy"


def test_every_model_is_trained_to_epsilon_and_to_flow(grid):
    suite, cells = grid
    trained = {(c.dataset.name, c.denoiser.name, suite.train_settings(c.denoiser, c.dataset).objective) for c in cells}
    for data, net in MODELS:
        assert {(data, net, "epsilon"), (data, net, "flow")} <= trained
    labels = {repr(c.denoiser) for c in cells if c.denoiser.name == "unet"}
    assert labels == {"unet[channels=16,objective=epsilon]", "unet[channels=16,objective=flow]"}
    assert len({c.group_id for c in cells if c.dataset.name == "mnist5k" and c.denoiser.name == "unet"}) == 2


def synthetic_rows(cells, rng):
    """A results table the suite's cells (and references) could give: random accuracies, the real labels and params."""
    rows = []
    for cell in cells:
        if cell.denoiser.name == "unet" and cell.dataset.name == "spirals":
            continue  # skipped by the run: unet takes images
        k = 10 if cell.dataset.name != "spirals" else 2
        nfe = cell.trials * k * (0.6 if cell.estimator.name == "adaptive" else 1)
        rows.append(
            {
                "cell_id": cell.id,
                "kind": "estimator",
                "dataset": cell.dataset.name,
                "dataset_label": repr(cell.dataset),
                "denoiser_label": repr(cell.denoiser),
                "estimator": cell.estimator.name,
                "estimator_label": repr(cell.estimator),
                "trials": cell.trials,
                "accuracy": rng.uniform(0.5, 1.0),
                "n_test": 200,
                "nfe_per_sample": nfe,
                "num_timesteps": 1000,
                "status": "ok",
                "scenario": "offline",
                **columns.param_columns("estimator", cell.estimator.params),
            }
        )
    for data in {repr(c.dataset) for c in cells}:
        for name in ["logistic", "knn"] + (["cnn"] if not data.startswith("spirals") else []):
            rows.append(
                {"cell_id": f"{data}-{name}", "kind": "reference", "dataset": data, "dataset_label": data,
                 "denoiser_label": "", "estimator": name, "estimator_label": name, "trials": 0,
                 "accuracy": rng.uniform(0.5, 1.0), "n_test": 200, "status": "ok", "scenario": "offline"}
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_the_suite_selects_every_row_claims_1_to_6_need_on_every_model(grid):
    suite, cells = grid
    table = synthetic_rows(cells, np.random.default_rng(0))
    models = {f"{d} x {n}" for d, n in table[table["kind"] == "estimator"][["dataset_label", "denoiser_label"]].values}
    ts = np.arange(20) * 50 + 25
    timesteps = pd.concat(
        pd.DataFrame({"dataset_label": m.split(" x ")[0], "denoiser_label": m.split(" x ")[1], "t": ts,
                      "t_fraction": ts / 1000, "accuracy": np.linspace(0.3, 0.9, 20), "n_test": 200})
        for m in models
    )  # fmt: skip
    found = claims.check_claims(table, None, timesteps)
    assert [c.number for c in found] == [1, 2, "2b", 3, 4, 5, 6]
    for claim in found:
        if claim.number == 6:
            assert {f.model for f in claim.findings} == {repr(d) for d in instantiate_datasets(suite)}
        else:
            assert {f.model for f in claim.findings} == models
        missing = [f.model for f in claim.findings if f.verdict == claims.MISSING]
        assert not missing, f"claim {claim.number} lacks rows on {missing}"
    for data, net in MODELS:
        assert any(m.startswith(data) and f" x {net}[" in m for m in models)


def instantiate_datasets(suite):
    return [d for s in suite.datasets for d in instantiate("dataset", s)]


# --- one network, two objectives --------------------------------------------------------------------------------


def test_a_denoiser_selector_picks_its_training_objective_over_the_suites():
    eps, flow, plain = (
        *instantiate("denoiser", "mlp[width=8,objective=[epsilon,flow]]"),
        instantiate("denoiser", "mlp")[0],
    )
    assert (repr(eps), repr(flow), repr(plain)) == (
        "mlp[width=8,objective=epsilon]",
        "mlp[width=8,objective=flow]",
        "mlp",
    )
    assert eps.params == flow.params == {**plain.params, "width": 8}, "the network is the same"
    suite = Suite(train={"objective": "v_prediction"})
    assert [suite.train_settings(d).objective for d in (eps, flow, plain)] == ["epsilon", "flow", "v_prediction"]
    assert repr(instantiate("denoiser", "mlp[objective=flow]")[0]) == "mlp[objective=flow]"
    with pytest.raises(ParamError, match="unknown objective 'velocity'; choose one of epsilon, v_prediction, flow"):
        instantiate("denoiser", "mlp[objective=velocity]")


def test_the_two_objectives_are_cached_apart_and_epsilon_shares_the_plain_models_weights():
    import torch

    from diffbench.schedule import NoiseSchedule

    data = plugins.get("dataset", "spirals").cls()
    eps, flow, plain = (instantiate("denoiser", s)[0] for s in ("mlp[objective=epsilon]", "mlp[objective=flow]", "mlp"))
    schedule, suite = NoiseSchedule("linear", 1000), Suite()
    keys = [
        cache_key(data, d, schedule, suite.train_settings(d, data), 0, torch.device("cpu")) for d in (eps, flow, plain)
    ]
    assert keys[0] == keys[2] != keys[1]


def test_claims_must_be_true_or_false():
    with pytest.raises(SuiteError, match="'claims' must be true or false"):
        suite_from_dict({"claims": "yes"})


# --- end to end ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_tiny_li2023_run_writes_claims_md_and_the_reports_claims_section(cli, tmp_path):
    path = write_suite(
        tmp_path / "tiny-li2023.toml",
        datasets=["spirals[n_train=300,n_test=60]"],
        denoisers=["mlp[width=16,depth=1,objective=[epsilon,flow]]"],
        estimators=[
            "full-mc",
            "shared-noise[loss=[l2,l1]]",
            "stratified[mode=even,weighting=[simple,elbo]]",
            "truncated[t_max=100]",
            "adaptive",
        ],
        trials=[1, 4],
        references=["logistic"],
        claims=True,
        errors="bank",
        scenarios=["offline"],
        max_time_s=0.05,
        train={"steps": 60},
    )
    result = cli("run", "--suite", path, "--out", tmp_path / "run", "--cache", tmp_path / "cache", "--no-plots")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "run" / claims.CLAIMS_FILE).read_text()
    verdicts = (claims.HOLDS, claims.FAILS, claims.INCONCLUSIVE, claims.MISSING)
    for number in ("1", "2", "2b", "3", "4", "5", "6"):
        (line,) = [line for line in text.splitlines() if line.startswith(f"## {number}. ")]
        assert line.endswith(verdicts) or "mixed" in line, line
    findings = [line for line in text.splitlines() if line.startswith("- **spirals[n_train=300,n_test=60] x mlp")]
    assert len(findings) == 2 * 6, "claims 1-5 and 2b, each on both objectives"
    assert not any(claims.MISSING in line for line in findings), "the tiny grid measures every claim"
    assert "| shared-noise vs full-mc at 4 trials" in text and "paired McNemar" in text
    page = build_report([tmp_path / "run"], draw=False)
    assert '<section id="claims"><h2>Does it reproduce the paper?</h2>' in page and '<a href="#claims">' in page
    assert "Shared noise beats independent noise at equal NFE" in page


@pytest.mark.slow
def test_without_claims_a_run_writes_no_claims_md_and_no_section(cli, tmp_path, suite_file):
    result = cli("run", "--suite", suite_file(), "--out", tmp_path / "run", "--no-plots", "--cache", tmp_path / "c")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "run" / claims.CLAIMS_FILE).exists()
    assert 'id="claims"' not in build_report([tmp_path / "run"], draw=False)


def test_a_denoiser_that_declares_its_own_objective_param_keeps_its_default_and_takes_the_override():
    from diffbench.contract import Denoiser

    class Own(Denoiser):
        name = "own-objective"
        params = {"objective": "mine"}

        def build(self, data_shape, num_classes):
            raise NotImplementedError

    assert Own().params["objective"] == "mine" and Own().objective == ""
    assert Own(objective="theirs").params["objective"] == "theirs" and Own(objective="theirs").objective == ""
