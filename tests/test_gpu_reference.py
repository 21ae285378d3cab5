"""The GPU reference command (refusal without CUDA, its plan) and the GPU vs CPU table, built on CPU."""

import pandas as pd
import pytest
from click.testing import CliRunner

from diffbench import cli, gpu_reference
from diffbench.suite import load_suite
from diffbench.throughput_table import table_from_folders
from tests.helpers import write_suite

# -- the table, from run folders -------------------------------------------------------------------------------


def row(device, dtype="float32", compiled=False, scenario="offline", trials=8, **measured):
    return {
        "status": "ok",
        "dataset_label": "spirals",
        "denoiser_label": "mlp",
        "estimator_label": "shared-noise",
        "trials": trials,
        "device": device,
        "seed": 0,
        "accuracy": 0.9,
        "n_test": 1000,
        "scenario": scenario,
        "dtype": dtype,
        "compile": compiled,
        "device_name": {"cpu": "Some CPU", "cuda": "Some GPU"}[device],
        "threads": 2,
        "torch_version": "2.13.0",
        **measured,
    }


def write_run(folder, rows):
    folder.mkdir()
    pd.DataFrame(rows).to_parquet(folder / "results.parquet")
    return folder


@pytest.fixture
def cpu_and_gpu_runs(tmp_path):
    cpu = write_run(
        tmp_path / "cpu",
        [
            row("cpu", samples_per_s=1000.0, efficiency=0.95),
            row("cpu", scenario="single", samples_per_s=2000.0, efficiency=0.7, latency_p50_ms=0.5),
            row("cpu", trials=64, samples_per_s=100.0, efficiency=0.97),  # no GPU row for this cell
        ],
    )
    gpu = write_run(
        tmp_path / "gpu",
        [
            row("cuda", samples_per_s=8000.0, efficiency=0.9),
            row("cuda", "bfloat16", samples_per_s=12000.0, efficiency=0.8),
            row("cuda", compiled=True, samples_per_s=10000.0, efficiency=0.85),
            row("cuda", scenario="single", efficiency=0.9, latency_p50_ms=0.1, single_mode="cuda-graph"),
            row("cuda", "bfloat16", scenario="single", efficiency=0.8, latency_p50_ms=0.125, single_mode="cuda-graph"),
            row("cuda", compiled=True, scenario="single", efficiency=0.6, latency_p50_ms=0.2, single_mode="eager: X"),
            {**row("cuda", trials=1), "status": "failed"},  # failed cells are left out
        ],
    )
    return cpu, gpu


def test_the_table_puts_variants_side_by_side_with_the_cuda_speedup(cpu_and_gpu_runs):
    text = table_from_folders(list(cpu_and_gpu_runs))
    assert text.startswith("Measured on cpu: Some CPU, 2 threads; cuda: Some GPU; torch 2.13.0.")
    variants = "cpu float32 | cuda float32 | cuda float32 compiled | cuda bfloat16"
    head = f"| data × denoiser | estimator | trials | {variants} | best CUDA ÷ CPU |"
    assert text.count(head) == 2, "one table per scenario; CPU first, then by dtype, eager before compiled"
    lines = text.splitlines()
    offline = (
        "| spirals × mlp | `shared-noise` | 8 | 1,000/s (0.95) | 8,000/s (0.90) | 10,000/s (0.85) | 12,000/s (0.80)"
    )
    assert offline + " | 12.0× |" in lines, "best CUDA 12,000 ÷ CPU 1,000"
    assert "| spirals × mlp | `shared-noise` | 64 | 100/s (0.97) | — | — | — | — |" in lines
    single = "| 0.5 ms (0.70) | 0.1 ms (0.90, graph) | 0.2 ms (0.60) | 0.125 ms (0.80, graph) | 5.0× |"
    assert any(line.endswith(single) for line in lines), "latency: CPU p50 ÷ the best CUDA p50"
    assert "CUDA single-sample calls that ran eagerly: `eager: X`." in text
    assert "| 1 |" not in text, "the failed cell has no row"


def test_a_table_of_one_device_has_no_speedup_column(cpu_and_gpu_runs):
    text = table_from_folders([cpu_and_gpu_runs[0]])
    assert "| data × denoiser | estimator | trials | cpu float32 |\n" in text and "÷" not in text


def test_the_table_command_needs_no_gpu_and_names_a_bad_folder(cpu_and_gpu_runs, tmp_path):
    result = CliRunner().invoke(gpu_reference.main, ["--table", str(cpu_and_gpu_runs[0])])
    assert result.exit_code == 0 and "| 1,000/s (0.95) |" in result.stdout
    result = CliRunner().invoke(gpu_reference.main, ["--table", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"diffbench: error: '{tmp_path / 'nowhere'}' holds no results.parquet; give the folder a `diffbench run` wrote"
    ]


# -- the command -----------------------------------------------------------------------------------------------


def test_without_cuda_the_reference_refuses_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_reference.torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(gpu_reference.main, ["--out", str(tmp_path / "ref")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffbench: error: no CUDA device: torch.cuda.is_available() is")
    assert not (tmp_path / "ref").exists(), "nothing ran"


@pytest.mark.parametrize(("grid", "cells"), [("quick", 9), ("digits-unet", 6)])
def test_each_planned_run_is_a_valid_diffbench_run(grid, cells, tmp_path):
    """The CPU run of each grid parses and expands (the CUDA runs differ only in --device, --dtype, --compile)."""
    args = gpu_reference.run_args(tmp_path, tmp_path / "cache", grid, "cpu", tmp_path / "w.pt")
    assert args[-2:] == ["--checkpoint", str(tmp_path / "w.pt")] and f"{tmp_path}/{grid}-cpu" in args
    context = cli.run.make_context("run", args[1:])
    suite, devices, expanded = cli.build_grid(context.params)
    assert devices == ["cpu"] and len(expanded) == cells and {c.dtype for c in expanded} == {"float32"}
    assert suite.max_time_s == 0.5 and suite.batch_size == 8192 and suite.scenarios == ["offline", "single"]
    cuda = gpu_reference.run_args(tmp_path, tmp_path / "cache", grid, "cuda-compiled")
    assert cli.run.make_context("run", cuda[1:]).params["compiled"] is True and "--checkpoint" not in cuda


def test_the_suite_runs_the_quick_estimators_in_two_precisions():
    suite = load_suite(gpu_reference.SUITE)
    assert suite.estimators == load_suite("quick").estimators and suite.datasets == ["spirals"]
    assert suite.devices == ["cuda"] and suite.dtypes == ["float32", "bfloat16"]


def test_the_cpu_run_reads_the_one_checkpoint_the_gpu_trained(tmp_path):
    (tmp_path / "mlp-spirals-abc.pt").write_bytes(b"")
    (tmp_path / "unet-digits-def.pt").write_bytes(b"")
    assert gpu_reference.trained_checkpoint(tmp_path, "quick") == tmp_path / "mlp-spirals-abc.pt"
    (tmp_path / "unet-digits-xyz.pt").write_bytes(b"")
    with pytest.raises(Exception, match="expected one cached unet x digits checkpoint"):
        gpu_reference.trained_checkpoint(tmp_path, "digits-unet")


@pytest.mark.slow
def test_the_table_of_a_tiny_cpu_run(tmp_path, cli):
    suite = write_suite(tmp_path / "tiny.toml", estimators=["shared-noise", "full-mc"], trials=[1])
    result = cli("run", "--suite", suite, "--out", tmp_path / "run", "--cache", tmp_path / "cache", "--no-plots")
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    single = table[table["scenario"] == "single"]
    assert (single["single_mode"] == "eager: CUDA graphs need a CUDA device, not cpu").all()
    text = table_from_folders([tmp_path / "run"])
    for estimator in ("shared-noise", "full-mc"):
        offline = table[(table["scenario"] == "offline") & (table["estimator_label"] == estimator)].iloc[0]
        assert f"| `{estimator}` | 1 | {offline['samples_per_s']:,.0f}/s ({offline['efficiency']:.2f}) |" in text
    assert text.count("| cpu float32 |") == 2 and ", graph)" not in text


@pytest.mark.slow
def test_the_reference_runs_in_one_process_and_the_cpu_run_reuses_the_trained_weights(tmp_path, monkeypatch):
    """The reference's runs on CPU only (a tiny grid): two runs in one process, the second on --checkpoint."""
    tiny = [
        "-d",
        "spirals[n_train=200,n_test=50]",
        "-m",
        "mlp[width=16,depth=1]",
        "-e",
        "shared-noise",
        "--max-time",
        "0.2",
    ]
    monkeypatch.setattr(gpu_reference, "GRIDS", {"tiny": ([*tiny, "--trials", "1"], ("mlp", "spirals"))})
    monkeypatch.setattr(
        gpu_reference,
        "VARIANTS",
        {"first": ["--device", "cpu", "--dtype", "float32"], "cpu": gpu_reference.VARIANTS["cpu"]},
    )
    folders = gpu_reference.run_reference(tmp_path / "ref")
    assert folders == [tmp_path / "ref" / "tiny-first", tmp_path / "ref" / "tiny-cpu"]
    assert not (tmp_path / "ref" / "cache").exists(), "the reference's own cache is removed"
    first, second = (pd.read_parquet(folder / "results.parquet") for folder in folders)
    assert (first["cache_hit"] == False).all() and (first["train_s"] > 0).all()  # noqa: E712
    assert (second["train_s"] == 0).all(), "the CPU run loaded the weights the first run trained"
    assert list(first["accuracy"]) == list(second["accuracy"]), "same weights, same seed, same device"
    assert "| cpu float32 |" in table_from_folders(folders)
