"""The results table's one schema: every column a run writes is declared, and the README lists exactly those."""

import re
from pathlib import Path

import pandas as pd
import pytest

from diffbench import columns, report
from diffbench.results import single, summary
from tests.helpers import write_suite

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_columns() -> list[str]:
    """The column names the first cell of each row of the README's table "Reading the results" names."""
    text = README.read_text()
    section = text[text.index("## Reading the results") :]
    section = section[: section.index("\n#", 1)]
    names = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        for name in re.findall(r"`([^`]+)`", line.split(" | ")[0]):
            shorthand = re.fullmatch(r"(.*)_low/high(.*)", name)  # accuracy_ci_low/high: both ends
            names += [f"{shorthand[1]}_{end}{shorthand[2]}" for end in ("low", "high")] if shorthand else [name]
    return names


def test_the_readme_lists_exactly_the_declared_columns_once():
    listed = readme_columns()
    assert len(listed) == len(set(listed)), [n for n in listed if listed.count(n) > 1]
    declared = [c.name for c in columns.COLUMNS + columns.FAMILIES]
    assert sorted(listed) == sorted(declared)


def test_the_readme_check_sees_a_missing_column():
    assert "accuracy_ci_high" in readme_columns() and "p_dataset_*" in readme_columns()
    assert "accuracy_ci_low/high" not in readme_columns()


def test_every_column_has_a_type_and_a_meaning_and_one_declaration():
    names = [c.name for c in columns.COLUMNS]
    assert len(names) == len(set(names))
    assert all(c.dtype in ("str", "int", "float", "bool") and c.meaning for c in columns.COLUMNS)
    assert all(c.name.endswith("*") and columns.declared(c.name[:-1] + "x") for c in columns.FAMILIES)


def test_the_reports_key_columns_and_help_are_the_schemas():
    assert set(columns.KEY_COLUMNS) - {"run"} <= set(columns.BY_NAME)
    assert list(report.KEY_COLUMNS) == list(columns.KEY_COLUMNS)
    assert report.HELP == columns.HELP


def test_a_row_keeps_the_order_parts_first_gave_and_refuses_an_undeclared_column():
    row = columns.row({"cell_id": "a", "schedule": "linear"}, {"p_estimator_k": 2, "schedule": "custom"})
    assert list(row.items()) == [("cell_id", "a"), ("schedule", "custom"), ("p_estimator_k", 2)]
    with pytest.raises(columns.UndeclaredColumn, match="accuracyy"):
        columns.row({"accuracy": 1.0}, {"accuracyy": 1.0})
    with pytest.raises(columns.UndeclaredColumn):
        columns.derived("accuracy")


@pytest.mark.slow
def test_every_column_a_real_run_writes_is_declared_and_typed(cli, tmp_path):
    suite = write_suite(
        tmp_path / "tiny.toml",
        estimators=["shared-noise", "full-mc"],
        trials=[1],
        scenarios=["offline", "single"],
        max_time_s=0.05,
    )
    result = cli("run", "--suite", suite, "--out", tmp_path / "run", "--cache", tmp_path / "c", "--no-plots")
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert [c for c in table.columns if not columns.declared(c)] == []
    kinds = {"str": pd.api.types.is_string_dtype, "int": pd.api.types.is_integer_dtype}
    kinds |= {"float": pd.api.types.is_float_dtype, "bool": pd.api.types.is_bool_dtype}
    for name in table.columns:
        column = columns.BY_NAME.get(name)
        if column is not None and table[name].notna().all():
            assert kinds[column.dtype](table[name]), f"{name} is {table[name].dtype}, declared {column.dtype}"
    assert {"single"} <= set(table["scenario"]) and "single-sample latency p50 (ms) by trials" in result.stdout


def test_the_summary_of_a_single_sample_run_is_its_latency_table():
    rows = [
        {"status": "ok", "scenario": "single", "dataset_label": "spirals", "denoiser_label": "mlp", "device": "cpu"}
        | {"estimator_label": estimator, "trials": trials, "latency_p50_ms": ms}
        for estimator, trials, ms in (("full-mc", 1, 1.5), ("full-mc", 4, 3.25), ("shared-noise", 1, 0.75))
    ]
    text = summary(pd.DataFrame(rows))
    assert text != "no cell finished"
    lines = text.splitlines()
    assert lines[0] == "spirals x mlp on cpu: single-sample latency p50 (ms) by trials"
    assert lines[-2].split() == ["full-mc", "1.50", "3.25"] and lines[-1].split() == ["shared-noise", "0.75", "NaN"]
    assert len(single(pd.DataFrame(rows).assign(scenario="offline"))) == 0


def test_a_failed_run_still_says_no_cell_finished():
    assert summary(pd.DataFrame([{"status": "failed", "scenario": "single"}])) == "no cell finished"
