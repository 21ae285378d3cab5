"""`diffbench env` and `--threads`."""

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from diffbench.cli import main


def test_env_prints_the_provenance_block():
    result = CliRunner().invoke(main, ["env"])
    assert result.exit_code == 0, result.output
    keys = [line.split()[0] for line in result.output.splitlines() if line.strip()]
    for key in ("diffbench_version", "torch_version", "threads", "git_commit", "cpu_name"):
        assert key in keys


@pytest.mark.slow
def test_threads_option_sets_and_records_torch_threads(tmp_path):
    before = torch.get_num_threads()
    suite = tmp_path / "tiny.toml"
    suite.write_text(
        'datasets = ["spirals[n_train=100,n_test=20]"]\ndenoisers = ["mlp[width=8,depth=1]"]\n'
        'estimators = ["shared-noise"]\ntrials = [1]\ndevices = ["cpu"]\nrepeats = 1\n[train]\nsteps = 5\n'
    )
    try:
        result = CliRunner().invoke(
            main,
            [
                "run",
                "--suite",
                str(suite),
                "--threads",
                "1",
                "--out",
                str(tmp_path / "run"),
                "--cache",
                str(tmp_path / "c"),
                "--no-plots",
            ],
        )
        assert result.exit_code == 0, result.output
        assert pd.read_parquet(tmp_path / "run" / "results.parquet")["threads"].tolist() == [1, 1]
    finally:
        torch.set_num_threads(before)
