"""dtype (autocast) and torch.compile: recorded per row, and skipped with one line where the device cannot."""

import pandas as pd
import pytest
import torch

from diffbench import acceleration, measurement
from tests.helpers import Recorder, write_suite


class HalfHater(torch.nn.Module):
    """Fails whenever autocast is on, like a module with a kernel missing for the lower precision."""

    def forward(self, x, t, c):
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError("no kernel for this dtype\nsecond line")
        return x


def test_float32_runs_the_module_itself_and_autocast_returns_float32():
    module = Recorder()
    assert acceleration.accelerate(module, torch.device("cpu"), "float32", False) is module
    wrapped = acceleration.accelerate(module, torch.device("cpu"), "bfloat16", False)
    out = wrapped(torch.randn(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    assert out.dtype == torch.float32


def test_unsupported_names_the_reason_in_one_line():
    cpu = torch.device("cpu")
    assert acceleration.unsupported(Recorder(), cpu, "bfloat16", False, (2,), 3) == ""
    reason = acceleration.unsupported(HalfHater(), cpu, "float16", False, (2,), 3)
    assert reason == "RuntimeError: no kernel for this dtype"
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        acceleration.accelerate(Recorder(), cpu, "float8", False)


def test_a_failing_compile_is_unsupported(monkeypatch):
    def broken(module, **kw):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    reason = acceleration.unsupported(Recorder(), torch.device("cpu"), "float32", True, (2,), 3)
    assert reason == "RuntimeError: no C++ compiler found"


@pytest.mark.slow
def test_dtypes_are_a_grid_axis_recorded_per_row(cli, tmp_path):
    suite = write_suite(tmp_path / "tiny.toml", trials=[2], dtypes=["float32", "bfloat16"], scenarios=["offline"])
    result = cli("run", "--suite", suite, "--out", tmp_path / "run", "--cache", tmp_path / "c", "--no-plots")
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert list(table["dtype"]) == ["float32", "bfloat16"] and (table["status"] == "ok").all()
    assert (table["accuracy"] - table["accuracy"].iloc[0]).abs().max() <= 0.1, "bfloat16 barely changes accuracy"
    assert "shared-noise [bfloat16]" in result.stdout, "the summary tells the variants apart"


@pytest.mark.slow
def test_an_unsupported_combination_is_skipped_with_one_line(cli, tmp_path, monkeypatch):
    real = measurement.unsupported

    def no_float16(module, device, dtype, compile, shape, classes, **kw):
        return (
            "float16 kernels are missing here"
            if dtype == "float16"
            else real(module, device, dtype, compile, shape, classes)
        )

    monkeypatch.setattr(measurement, "unsupported", no_float16)
    suite = write_suite(tmp_path / "tiny.toml", trials=[1, 2], scenarios=["offline"])
    result = cli(
        "run", "--suite", suite, "--dtype", "float32,float16", "--out", tmp_path / "run", "--cache", tmp_path / "c",
        "--no-plots",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    skips = [line for line in result.stderr.splitlines() if line.startswith("skipping float16")]
    assert skips == ["skipping float16 on cpu for mlp[width=16,depth=1]: float16 kernels are missing here"]
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert list(table["dtype"]) == ["float32", "float32"]


@pytest.mark.parametrize("bad", ["--dtype=float8", "--scenario=batch", "--batch-size=0"])
def test_bad_variant_options_are_one_line_errors(cli, tmp_path, bad):
    result = cli("run", bad, "--out", tmp_path / "run", "--cache", tmp_path / "c")
    assert result.exit_code == 2
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "c").exists()
