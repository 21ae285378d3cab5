"""The report, plots and readers of a run folder with hostile text or damaged files: no traceback, no silent loss."""

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from diffbench import plots, report
from tests.test_report import REFERENCE, table_json

HOSTILE = ["$\\foo{$", "<!--<script>", "</script><script>window.pwned=1</script>", "a & b > c \u2028 d $x$"]


@pytest.fixture
def hostile(tmp_path) -> Path:
    """The reference run with hostile estimator labels and class names, and no PNGs (so every plot is drawn)."""
    folder = Path(
        shutil.copytree(REFERENCE, tmp_path / "hostile $x{ run", ignore=shutil.ignore_patterns("*.png", "*.html"))
    )
    frame = pd.read_parquet(folder / "results.parquet")
    labels = {old: HOSTILE[i % len(HOSTILE)] + str(i) for i, old in enumerate(frame["estimator_label"].unique())}
    for name in ("results.parquet", "reliability.parquet", "regions.parquet"):
        table = pd.read_parquet(folder / name)
        if "estimator_label" in table:
            table["estimator_label"] = table["estimator_label"].map(lambda v: labels.get(v, v))
        table.to_parquet(folder / name, index=False)
    frame = pd.read_parquet(folder / "results.parquet")
    frame["dataset_label"] = frame["dataset_label"] + " $\\foo{$"
    frame.to_parquet(folder / "results.parquet", index=False)
    return folder


def test_dollars_in_labels_and_paths_are_drawn_literally(hostile):
    made = plots.plot_run(hostile)
    assert {p.name for p in made} >= {"accuracy_vs_nfe.png", "throughput.png", "reliability.png"}
    frame = pd.read_parquet(hostile / "results.parquet")
    drawn = plots.runs_side_by_side([("$\\foo{$", frame), ("b", frame)])
    assert drawn is not None and drawn.startswith(b"\x89PNG")


def test_hostile_labels_keep_the_whole_table_and_every_section(hostile):
    text = report.build_report([hostile])
    data = table_json(text)
    assert len(data["rows"]) == len(pd.read_parquet(hostile / "results.parquet"))
    labels = {row[[c["name"] for c in data["columns"]].index("estimator_label")] for row in data["rows"]}
    assert any(label.startswith("<!--<script>") for label in labels)
    json_text = re.search(r'id="table-data">(.*?)</script>', text, re.S)[1]
    assert not set("<>&\u2028\u2029") & set(json_text)
    for section in ('id="figures"', 'id="failures"', 'id="provenance"'):
        assert section in text


def test_only_the_pages_own_script_may_run():
    text = report.build_report([REFERENCE])
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', text)[1]
    assert "unsafe-inline" not in policy.split("script-src")[1]
    script = re.search(r"<script>(.*?)</script>\s*</body>", text, re.S)[1]
    assert f"'{report.script_hash(script)}'" in policy
