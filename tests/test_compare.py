"""`diffbench compare`: cells matched across runs, verdicts within and beyond noise, the regression gate."""

import math

import pandas as pd
import pytest

from diffbench import results
from diffbench.atomic import write_atomic
from diffbench.compare import CompareError, accuracy_z, compare_runs, find_regressions, format_comparison
from tests.helpers import error_lines


def cell(estimator="shared-noise", trials=4, accuracy=0.9, speed=1000.0, iqr=10.0, status="ok", **extra):
    """One results row with the columns `compare` relies on; ``extra`` adds or overrides columns."""
    return {
        "dataset_label": "spirals",
        "denoiser_label": "mlp",
        "estimator_label": estimator,
        "trials": trials,
        "device": "cpu",
        "seed": 0,
        "status": status,
        "n_test": 1000,
        "accuracy": accuracy,
        "accuracy_ci_low": accuracy - 0.02,
        "accuracy_ci_high": accuracy + 0.02,
        "samples_per_s": speed,
        "samples_per_s_iqr": iqr,
        "efficiency": 1.0,
        "repeats": 5,
        "nfe_per_sample": 2.0 * trials,
        **extra,
    }


def run_dir(folder, *rows):
    folder.mkdir()
    write_atomic(pd.DataFrame(rows), folder / results.TABLE)
    return folder


def compared(a_rows, b_rows):
    return compare_runs(pd.DataFrame(a_rows), pd.DataFrame(b_rows))


def test_identical_runs_are_the_same_everywhere():
    rows = [cell(trials=1), cell(trials=4, accuracy=0.95, speed=400.0)]
    table = compared(rows, rows).table
    assert list(table["trials"]) == [1, 4]
    assert (table["accuracy_diff"] == 0).all()
    assert (table["accuracy_verdict"] == "same").all()
    assert (table["samples_per_s_ratio"] == 1).all()
    assert (table["samples_per_s_verdict"] == "same (within noise)").all()


def test_accuracy_z_is_the_pooled_two_proportion_test():
    z = accuracy_z(*(pd.Series([v]) for v in (0.80, 1000, 0.84, 1000))).iloc[0]
    pooled = 0.82
    assert z == pytest.approx(0.04 / math.sqrt(pooled * (1 - pooled) * 2 / 1000))
    assert accuracy_z(*(pd.Series([v]) for v in (1.0, 50, 1.0, 80))).iloc[0] == 0


@pytest.mark.parametrize(
    ("accuracy_b", "verdict"),
    [(0.90, "same"), (0.915, "same"), (0.89, "same"), (0.93, "better"), (0.86, "worse")],
)
def test_accuracy_verdict_beyond_noise_only_when_significant(accuracy_b, verdict):
    # n = 1000 at 0.9: the 95% two-proportion threshold is a difference of about 0.026
    table = compared([cell(accuracy=0.90)], [cell(accuracy=accuracy_b)]).table
    assert table["accuracy_diff"].iloc[0] == pytest.approx(accuracy_b - 0.90)
    assert table["accuracy_verdict"].iloc[0] == verdict


@pytest.mark.parametrize(
    ("speed_b", "iqr_b", "verdict"),
    [
        (1015.0, 10.0, "same (within noise)"),  # +15 < 10 + 10
        (985.0, 10.0, "same (within noise)"),
        (1100.0, 10.0, "faster"),
        (900.0, 10.0, "slower"),
        (900.0, 150.0, "same (within noise)"),  # a 10% drop, but B's repeats spread wider
        (1000.5, 0.0, "same (within noise)"),
    ],
)
def test_throughput_verdict_uses_the_sum_of_both_iqrs(speed_b, iqr_b, verdict):
    table = compared([cell(speed=1000.0, iqr=10.0)], [cell(speed=speed_b, iqr=iqr_b)]).table
    assert table["samples_per_s_ratio"].iloc[0] == pytest.approx(speed_b / 1000.0)
    assert table["samples_per_s_noise"].iloc[0] == pytest.approx(10.0 + iqr_b)
    assert table["samples_per_s_verdict"].iloc[0] == verdict


def test_one_repeat_has_no_spread_so_any_difference_counts():
    table = compared([cell(speed=1000.0, iqr=0.0)], [cell(speed=1001.0, iqr=0.0)]).table
    assert table["samples_per_s_verdict"].iloc[0] == "faster"


def test_latency_is_compared_lower_is_better_when_both_runs_have_it():
    latency = {"latency_p50_ms": 10.0, "latency_p90_ms": 12.0, "latency_iqr_ms": 0.5}
    a = [cell(**latency)]
    b = [cell(**{**latency, "latency_p50_ms": 8.0, "latency_p90_ms": 12.2})]
    table = compared(a, b).table
    assert table["latency_p50_ms_ratio"].iloc[0] == pytest.approx(0.8)
    assert table["latency_p50_ms_verdict"].iloc[0] == "faster"
    assert table["latency_p90_ms_verdict"].iloc[0] == "same (within noise)"  # 0.2 < 0.5 + 0.5
    assert "p50 ms B/A" in format_comparison(compared(a, b))
    assert "latency_p50_ms_a" not in compared([cell()], b).table  # only one run has latency


def test_latency_without_iqr_takes_p90_minus_p50_as_its_spread():
    a = [cell(latency_p50_ms=10.0, latency_p90_ms=11.0)]
    b = [cell(latency_p50_ms=11.5, latency_p90_ms=12.0)]
    table = compared(a, b).table
    assert table["latency_p50_ms_noise"].iloc[0] == pytest.approx(1.0 + 0.5)
    assert table["latency_p50_ms_verdict"].iloc[0] == "same (within noise)"
    b = [cell(latency_p50_ms=12.5, latency_p90_ms=13.0)]
    assert compared(a, b).table["latency_p50_ms_verdict"].iloc[0] == "slower"


def test_cells_key_on_scenario_dtype_and_compile_when_present():
    a = [cell(scenario="offline", speed=1000.0), cell(scenario="single", speed=50.0)]
    b = [cell(scenario="offline", speed=1000.0), cell(scenario="single", speed=50.0)]
    table = compared(a, b).table
    assert list(table["scenario"]) == ["offline", "single"]
    assert (table["samples_per_s_ratio"] == 1).all()
    both_dtypes = [cell(dtype="float32", speed=1000.0), cell(dtype="bfloat16", speed=3000.0)]
    table = compared(both_dtypes, both_dtypes).table
    assert list(table["dtype"]) == ["float32", "bfloat16"]
    assert (table["samples_per_s_verdict"] == "same (within noise)").all()


def test_the_text_has_one_table_per_scenario_with_its_own_speed_metrics():
    latency = {"latency_p50_ms": 0.24, "latency_p90_ms": 0.3, "latency_iqr_ms": 0.01}
    runs = [cell(scenario="offline", speed=1000.0), cell(scenario="single", iqr=float("nan"), **latency)]
    text = format_comparison(compared(runs, runs))
    offline, single = text.split("scenario: offline\n")[1].split("scenario: single\n")
    assert "samples/s B/A" in offline and "p50 ms" not in offline
    assert "p50 ms B/A" in single and "samples/s" not in single.split("\n\n")[0]
    assert " 0.240 " in single  # latency to three significant figures
    assert "samples/s 1 same (within noise); p50 ms 1 same (within noise)" in text  # n/a is not counted


def test_a_run_without_the_scenario_column_matches_the_offline_cells():
    newer = [cell(scenario="offline", speed=1000.0), cell(scenario="single", speed=50.0)]
    comparison = compared([cell(speed=1000.0)], newer)
    assert list(comparison.table["scenario"]) == ["offline"]
    assert comparison.table["samples_per_s_ratio"].iloc[0] == 1
    assert comparison.only_b == ["shared-noise 4 trials single"]
    # a single value in the newer run is what the older run is taken to hold
    comparison = compared([cell(speed=1000.0)], [cell(compile=True, speed=1000.0)])
    assert len(comparison.table) == 1 and not comparison.only_a and not comparison.only_b


def test_cells_in_one_run_only_and_failed_cells_are_listed_not_compared():
    a = [cell(trials=1), cell(trials=2), cell(trials=4), cell(trials=8), cell(trials=16, status="failed")]
    b = [cell(trials=4), cell(trials=8, status="failed"), cell(trials=16), cell(trials=32)]
    comparison = compared(a, b)
    assert list(comparison.table["trials"]) == [4]
    assert comparison.only_a == ["shared-noise 1 trial", "shared-noise 2 trials"]
    assert comparison.only_b == ["shared-noise 32 trials"]
    assert comparison.failed == ["shared-noise 8 trials", "shared-noise 16 trials"]
    text = format_comparison(comparison)
    assert "2 cells only in A: shared-noise 1 trial, shared-noise 2 trials" in text
    assert "1 cell only in B: shared-noise 32 trials" in text
    assert "all cells: dataset_label=spirals" in text


def test_runs_sharing_no_cell_are_an_error():
    with pytest.raises(CompareError, match="share no cell"):
        compared([cell(trials=1)], [cell(trials=2)])
    with pytest.raises(CompareError, match="none finished ok in both"):
        compared([cell(status="failed")], [cell()])


def test_a_run_holding_a_cell_twice_is_an_error():
    with pytest.raises(CompareError, match="run B holds some cell more than once"):
        compared([cell()], [cell(), cell()])


@pytest.mark.parametrize(
    ("b_row", "pct", "regressed"),
    [
        (cell(speed=800.0), 10, True),  # -20% beyond noise
        (cell(speed=800.0), 25, False),  # -20% is within the allowed 25%
        (cell(speed=800.0, iqr=300.0), 10, False),  # -20% but within noise
        (cell(speed=1200.0), 0, False),  # faster
        (cell(accuracy=0.80), 5, True),  # 10 points lower, significant
        (cell(accuracy=0.80), 15, False),
        (cell(accuracy=0.89), 0, False),  # lower, but not significant at n=1000
    ],
)
def test_regression_rule(b_row, pct, regressed):
    comparison = compared([cell(accuracy=0.9, speed=1000.0)], [b_row])
    assert bool(find_regressions(comparison, pct)) is regressed


def test_latency_regression_is_a_rise():
    a = [cell(latency_p50_ms=10.0, latency_p90_ms=10.0)]
    b = [cell(latency_p50_ms=13.0, latency_p90_ms=13.0)]
    assert find_regressions(compared(a, b), 20) == ["shared-noise 4 trials (p50 ms x1.30, p90 ms x1.30)"]
    assert find_regressions(compared(a, b), 40) == []


def test_cli_prints_the_table_and_saves_csv(cli, tmp_path):
    a = run_dir(tmp_path / "a", cell(trials=1), cell(trials=4), cell(trials=8))
    b = run_dir(tmp_path / "b", cell(trials=1, speed=2000.0), cell(trials=4, accuracy=0.95))
    out = tmp_path / "cmp.csv"
    result = cli("compare", a, b, "--out", out)
    assert result.exit_code == 0, result.output
    assert "faster" in result.stdout and "better" in result.stdout
    assert "2 cells compared" in result.stdout
    assert "1 cell only in A: shared-noise 8 trials" in result.stdout
    saved = pd.read_csv(out)
    assert list(saved["trials"]) == [1, 4]
    assert list(saved["samples_per_s_ratio"]) == [2.0, 1.0]
    assert list(saved["accuracy_verdict"]) == ["same", "better"]


def test_cli_fail_on_regression_exits_1(cli, tmp_path):
    a = run_dir(tmp_path / "a", cell(speed=1000.0))
    b = run_dir(tmp_path / "b", cell(speed=700.0))
    assert cli("compare", a, b).exit_code == 0
    assert cli("compare", a, b, "--fail-on-regression", 40).exit_code == 0
    result = cli("compare", a, b, "--fail-on-regression", 10)
    assert result.exit_code == 1
    assert error_lines(result) == [
        "Error: 1 cell(s) regressed by more than 10% beyond noise: shared-noise 4 trials (samples/s x0.70)"
    ]


@pytest.mark.parametrize("pct", ["nan", "inf", "-inf", "-1", "1e400"])
def test_cli_refuses_a_regression_gate_that_cannot_fire(cli, tmp_path, pct):
    a = run_dir(tmp_path / "a", cell(accuracy=0.9))
    b = run_dir(tmp_path / "b", cell(accuracy=0.5))  # a regression any finite gate would catch
    result = cli("compare", a, b, "--fail-on-regression", pct)
    assert result.exit_code == 2
    assert f"Invalid value for '--fail-on-regression': '{pct}' must be a finite number >= 0" in result.output


def test_cli_missing_folder_is_a_one_line_error(cli, tmp_path):
    a = run_dir(tmp_path / "a", cell())
    result = cli("compare", a, tmp_path / "nowhere")
    assert result.exit_code == 2
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("diffbench: error:") and "holds no results.parquet" in lines[0]


def test_cli_no_shared_cell_is_a_one_line_error(cli, tmp_path):
    a = run_dir(tmp_path / "a", cell(trials=1))
    b = run_dir(tmp_path / "b", cell(trials=2))
    result = cli("compare", a, b)
    assert result.exit_code == 2
    lines = error_lines(result)
    assert len(lines) == 1 and "the runs share no cell" in lines[0]


def on_machine(speed, bare, host="box", **extra):
    return cell(speed=speed, iqr=10.0, bare_rows_per_s=bare, hostname=host, device_name="cpu-x", **extra)


def test_a_machine_that_slowed_down_between_runs_is_not_read_as_a_slower_estimator():
    comparison = compared([on_machine(1000.0, 50_000.0)], [on_machine(800.0, 40_000.0)])
    row = comparison.table.iloc[0]
    assert row["samples_per_s_ratio"] == pytest.approx(0.8)
    assert row["samples_per_s_ratio_vs_network"] == pytest.approx(1.0), "the bare network slowed down alike"
    assert row["samples_per_s_verdict"] == "same (within noise)"
    assert "bare network ran 0.80x as fast in B" in format_comparison(comparison)
    assert find_regressions(comparison, 5.0) == []


def test_an_estimator_slower_beside_an_unchanged_network_is_slower():
    comparison = compared([on_machine(1000.0, 50_000.0)], [on_machine(800.0, 50_000.0)])
    row = comparison.table.iloc[0]
    assert row["samples_per_s_ratio_vs_network"] == pytest.approx(0.8)
    assert row["samples_per_s_verdict"] == "slower"
    assert len(find_regressions(comparison, 5.0)) == 1


def test_another_host_or_absolute_speed_judges_the_raw_figures():
    other_host = compared([on_machine(1000.0, 50_000.0)], [on_machine(800.0, 40_000.0, host="other")])
    assert other_host.table.iloc[0]["samples_per_s_verdict"] == "slower", "a different machine is the point"
    assert math.isnan(other_host.table.iloc[0]["samples_per_s_ratio_vs_network"])
    absolute = compare_runs(
        pd.DataFrame([on_machine(1000.0, 50_000.0)]), pd.DataFrame([on_machine(800.0, 40_000.0)]), absolute=True
    )
    assert absolute.table.iloc[0]["samples_per_s_verdict"] == "slower"


def test_latency_is_put_at_the_machine_speed_through_the_bare_latency():
    a = cell(scenario="single", latency_p50_ms=2.0, latency_p90_ms=2.2, latency_iqr_ms=0.05, bare_latency_p50_ms=1.0)
    b = cell(scenario="single", latency_p50_ms=3.0, latency_p90_ms=3.3, latency_iqr_ms=0.05, bare_latency_p50_ms=1.5)
    row = compared([a], [b]).table.iloc[0]
    assert row["latency_p50_ms_ratio"] == pytest.approx(1.5)
    assert row["latency_p50_ms_ratio_vs_network"] == pytest.approx(1.0)
    assert row["latency_p50_ms_verdict"] == "same (within noise)"
