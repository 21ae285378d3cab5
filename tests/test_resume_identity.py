"""``--resume`` checks each model's data and module against what its finished cells recorded."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import diffbench
from diffbench import resume_identity
from tests.helpers import error_lines, hooks_for, write_suite


class PointsOnDisk(diffbench.Dataset):
    """Two Gaussian blobs whose centres are read from a JSON file: edit the file, the test data changes."""

    name = "points-on-disk"
    params = {"path": ""}

    def load(self, seed):
        shift = json.loads(open(self.params["path"]).read())["shift"]
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(60) % 2
        x = torch.randn(60, 2, generator=g) * 0.3 + (y[:, None] * 2 - 1) * shift
        return diffbench.Splits(x[:40], y[:40], x[40:], y[40:], ["a", "b"])


@pytest.fixture
def on_disk(tmp_path, register_plugin):
    register_plugin(hooks_for(datasets=[PointsOnDisk]))
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"shift": 1.0}))
    suite = write_suite(tmp_path / "s.toml", datasets=[f"points-on-disk[path={data}]"], trials=[1, 2], repeats=1)
    return data, suite


def interrupted_after_one_cell(cli, tmp_path, suite):
    """A run of two cells, with the second cell's files gone as if it was interrupted before that cell."""
    folder = tmp_path / "run"
    args = ["--suite", suite, "--cache", tmp_path / "cache", "--no-plots", "--no-report"]
    assert cli("run", *args, "--out", folder).exit_code == 0
    table = pd.read_parquet(folder / "results.parquet")
    gone = table[table["trials"] == 2]["cell_id"].iloc[0]
    for path in (folder / "cells").glob(f"{gone}*"):
        path.unlink()
    return folder, args


def test_resume_after_the_test_data_changed_fails_that_models_cells_in_one_line(cli, tmp_path, on_disk):
    data, suite = on_disk
    folder, args = interrupted_after_one_cell(cli, tmp_path, suite)
    first = pd.read_parquet(folder / "results.parquet").query("trials == 1")
    data.write_text(json.dumps({"shift": 3.0}))  # another test set behind the same settings
    result = cli("run", *args, "--resume", folder)
    assert result.exit_code == 1
    table = pd.read_parquet(folder / "results.parquet")
    kept = table[table["trials"] == 1]
    pd.testing.assert_series_equal(kept["accuracy"].reset_index(drop=True), first["accuracy"].reset_index(drop=True))
    assert table["test_digest"].dropna().nunique() == 1, "one test set in the table"
    failed = table[table["trials"] == 2]
    assert list(failed["status"].unique()) == ["failed"]
    error = failed["error"].iloc[0]
    digest = first["test_digest"].iloc[0]
    assert error.startswith(f"cannot resume '{folder}': its finished cell shared-noise at 1 trials (")
    assert f"recorded test_digest '{digest}', but the data now gives '" in error
    assert error.endswith("start a new run with another --out")
    assert any(line.endswith(error) for line in error_lines(result)), "said as it happened"


def test_resume_with_the_same_data_runs_the_missing_cells(cli, tmp_path, on_disk):
    _, suite = on_disk
    folder, args = interrupted_after_one_cell(cli, tmp_path, suite)
    assert cli("run", *args, "--resume", folder).exit_code == 0
    table = pd.read_parquet(folder / "results.parquet")
    assert (table["status"] == "ok").all() and table["cell_id"].nunique() == 2


def test_a_changed_pretrained_model_is_named_with_its_key():
    then = resume_identity.Recorded("run", "shared-noise at 1 trials (c1)", (("model_revision", "abc"),))
    resume_identity.check(then, {"model_revision": "abc", "model_source": "elsewhere"})  # not recorded: not judged
    with pytest.raises(resume_identity.IdentityChanged, match="recorded model_revision 'abc', but the model now give"):
        resume_identity.check(then, {"model_revision": "def"})


def test_recorded_values_compare_across_the_parquet_round_trip():
    rows = {"c1": [{"estimator_label": "e", "trials": 1, "heldout_n": np.int64(5), "latent": np.bool_(False)}]}
    then = resume_identity.recorded("run", ["c1"], rows)
    resume_identity.check(then, {"heldout_n": 5, "latent": False})
    assert resume_identity.recorded("run", ["c1"], {"c1": [{"test_digest": float("nan")}]}) is None
