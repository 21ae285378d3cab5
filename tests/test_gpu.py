"""CUDA: estimators and a tiny run on the GPU (skipped without one)."""

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from diffbench import plugins
from diffbench.cli import main
from tests.helpers import Recorder, make_model, write_suite

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("name", ["full-mc", "shared-noise", "truncated"])
def test_estimator_on_cuda(name):
    model = make_model(Recorder(dim=2, num_classes=3), device="cuda", max_batch=16)
    x = torch.randn(5, 2, device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    err = plugins.get("estimator", name).cls().errors(model, x, 4, generator)
    assert err.shape == (5, 3) and err.device.type == "cuda" and torch.isfinite(err).all()
    assert model.nfe == 5 * 4 * 3
    again = plugins.get("estimator", name).cls().errors(model, x, 4, torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(err, again)


def test_tiny_run_on_cuda(tmp_path):
    suite = write_suite(tmp_path / "tiny.toml", devices=["cuda"], estimators=["shared-noise", "full-mc"])
    args = ["run", "--suite", suite, "--out", tmp_path / "run", "--cache", tmp_path / "cache", "--no-plots"]
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert len(table) == 8 and (table["status"] == "ok").all()
    assert sorted(table["scenario"].unique()) == ["offline", "single"]
    assert set(table["device"]) == {"cuda"}
    assert (table["device_name"] == torch.cuda.get_device_name()).all()
    assert (table["nfe_per_sample"] == table["trials"] * 2).all()
    assert (table["peak_memory_mb"] > 0).all()
    single = table[table["scenario"] == "single"]
    assert (single["single_mode"] == "cuda-graph").all(), "the built-in estimators capture: nothing synchronises"
    assert list((tmp_path / "cache").glob("*.pt")), "trained on cuda and cached"


def test_lower_precision_on_cuda(tmp_path):
    suite = write_suite(tmp_path / "tiny.toml", devices=["cuda"], trials=[2], dtypes=["float32", "float16", "bfloat16"])
    args = ["run", "--suite", suite, "--out", tmp_path / "run", "--cache", tmp_path / "cache", "--no-plots"]
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    ran = set(table["dtype"])
    assert {"float32", "float16"} <= ran, "every CUDA GPU runs float16 autocast"
    if "bfloat16" not in ran:
        assert "skipping bfloat16 on cuda" in result.output
    assert (table["status"] == "ok").all() and (table["peak_memory_mb"] > 0).all()
