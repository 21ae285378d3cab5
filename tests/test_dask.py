"""The dask executor: a local cluster of 2 worker processes gives the local executor's table."""

import json

import pandas as pd
import pytest

from diffbench.cell import GROUP_KEY, key_id
from tests.helpers import error_lines, write_suite

pytest.importorskip("distributed")

ACCURACY = [
    "cell_id",
    "scenario",
    "estimator_label",
    "trials",
    "accuracy",
    "accuracy_ci_low",
    "accuracy_ci_high",
    "nfe_per_sample",
    "nll",
    "temperature",
]


@pytest.mark.slow
def test_a_local_cluster_gives_the_local_table_and_figure_data(cli, tmp_path):
    """Also for an estimator that fits state (importance): each cell and each figure fits its own copy."""
    suite = write_suite(
        tmp_path / "tiny.toml",
        datasets=["spirals[n_train=200,n_test=50]", "moons[n_train=200,n_test=50]"],
        estimators=["shared-noise", "full-mc", "importance[bins=4,fit_trials=2]"],
        trials=[1, 2],
        max_time_s=0.2,
    )
    local = cli("run", "--suite", suite, "--out", tmp_path / "local", "--cache", tmp_path / "c1", "--no-plots")
    assert local.exit_code == 0, local.output
    dask = cli(
        "run", "--suite", suite, "--out", tmp_path / "dask", "--cache", tmp_path / "c2",
        "--executor", "dask", "--workers", "2",
    )  # fmt: skip
    assert dask.exit_code == 0, dask.output
    assert "dask: 2 workers" in dask.stderr
    a = pd.read_parquet(tmp_path / "local" / "results.parquet")
    b = pd.read_parquet(tmp_path / "dask" / "results.parquet")
    assert not b["cache_hit"].any(), "the dask run trained its two models itself"
    assert sorted(p.name for p in (tmp_path / "c2").glob("*.pt")) == sorted(
        p.name for p in (tmp_path / "c1").glob("*.pt")
    )
    pd.testing.assert_frame_equal(a[ACCURACY], b[ACCURACY])
    assert a["fit_nfe_per_sample"].gt(0).any(), "importance fitted"
    for figure_data in ("samples.parquet", "regions.parquet", "timesteps.parquet"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "local" / figure_data), pd.read_parquet(tmp_path / "dask" / figure_data)
        )
    regions_a = pd.read_parquet(tmp_path / "local" / "regions.parquet")
    importance = regions_a[regions_a["estimator_label"].str.startswith("importance")]
    assert len(importance) > 0
    assert not a["concurrent"].any()
    for name in (
        "samples.parquet",
        "regions.parquet",
        "timesteps.parquet",
        "accuracy_vs_nfe.png",
        "decision_regions.png",
    ):
        assert (tmp_path / "dask" / name).is_file(), name


def test_dask_options_need_the_dask_executor(cli, tmp_path):
    result = cli("run", "--workers", "2", "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert error_lines(result) == ["diffbench: error: --workers and --scheduler need --executor dask"]


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:1", "tcp://127.0.0.1:notaport"], ids=["unreachable", "malformed"])
def test_an_unreachable_scheduler_is_one_line(cli, tmp_path, address):
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        result = cli("run", "--trials", "1", "--executor", "dask", "--scheduler", address, "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    (line,) = [line for line in error_lines(result) if line.startswith("diffbench: error:")]
    assert line == error_lines(result)[-1]
    assert line.startswith(f"diffbench: error: cannot reach the dask scheduler at '{address}' (")
    assert line.endswith(
        "start one with `dask scheduler` and give the address it prints, or drop --scheduler for a local cluster"
    )


@pytest.mark.slow
def test_bank_tasks_compute_each_error_once_and_give_the_local_accuracy(cli, tmp_path):
    """On 2 workers a model's errors are computed by its bank tasks, once: the cells read them all back, and the
    rows computed equal the local run's (where each cell fills the bank as it goes in one process)."""
    suite = write_suite(
        tmp_path / "tiny.toml",
        datasets=["spirals[n_train=200,n_test=40]"],
        estimators=["shared-noise", "full-mc", "truncated", "importance[bins=4,fit_trials=2]"],
        trials=[1, 4],
        max_time_s=0.1,
        errors="bank",
    )
    base = ["run", "--suite", suite, "--no-plots", "--no-report"]
    local = cli(*base, "--out", tmp_path / "local", "--cache", tmp_path / "c1")
    assert local.exit_code == 0, local.output
    dask = cli(*base, "--out", tmp_path / "dask", "--cache", tmp_path / "c2", "--executor", "dask", "--workers", "2")
    assert dask.exit_code == 0, dask.output
    a = pd.read_parquet(tmp_path / "local" / "results.parquet")
    b = pd.read_parquet(tmp_path / "dask" / "results.parquet")
    pd.testing.assert_series_equal(a["accuracy"], b["accuracy"])
    assert (b["errors_source"] == "bank").all()
    assert b["computed_nfe"].sum() == 0, "every error the cells asked for was computed by the bank tasks"
    tasks = pd.concat(pd.read_parquet(p) for p in (tmp_path / "dask" / "parts").glob("*.bank.parquet"))
    group = key_id(a.iloc[0].to_dict(), GROUP_KEY)
    assert sorted(set(tasks["task"])) == [f"bank-fit-{group}", f"bank-shard-{group}-0", f"bank-shard-{group}-1"]
    computed_local = a.drop_duplicates("cell_id")["computed_nfe"].sum()
    assert tasks["computed_nfe"].sum() == computed_local > 0
    (local_account,) = json.loads((tmp_path / "local" / "errors.json").read_text())
    (dask_account,) = json.loads((tmp_path / "dask" / "errors.json").read_text())
    assert dask_account["computed_nfe"] == dask_account["bank_task_nfe"] == local_account["computed_nfe"]
    assert dask_account["live_nfe"] == local_account["live_nfe"]
