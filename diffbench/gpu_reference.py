"""The GPU reference run: one command, ``python -m diffbench.gpu_reference``, on a machine with a CUDA GPU.

Runs the ``gpu-reference`` suite (the quick suite's spirals x mlp and estimators at trials 1, 8
and 64, sized to be quick) and digits x unet at trials 1 and 4, each on CUDA in float32 and
bfloat16, on CUDA compiled (float32), and on this machine's CPU in float32 with the weights the GPU
trained (``--checkpoint``), into ``results/reference-gpu/<grid>-<variant>/``. Then writes
``gpu-vs-cpu.md`` there, the throughput tables of ``diffbench.throughput_table``, and prints it.
Models train into a fresh cache folder inside the output folder (removed at the end), so the run
times training too. ``--table DIR...`` only builds the table from existing run folders (no GPU needed).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import click
import torch

from diffbench import cli
from diffbench.results import TableError
from diffbench.throughput_table import table_from_folders

SUITE = "gpu-reference"
OUT = Path("results") / "reference-gpu"
TABLE = "gpu-vs-cpu.md"
#: grid name -> its selectors on top of the suite, and the denoiser-dataset pair whose weights it trains
GRIDS: dict[str, tuple[list[str], tuple[str, str]]] = {
    "quick": ([], ("mlp", "spirals")),
    "digits-unet": (["-d", "digits", "-m", "unet", "--trials", "1,4"], ("unet", "digits")),
}
#: variant name -> its options; the suite's own dtypes (float32, bfloat16) apply where no --dtype is given
VARIANTS: dict[str, list[str]] = {
    "cuda": ["--device", "cuda"],
    "cuda-compiled": ["--device", "cuda", "--dtype", "float32", "--compile"],
    "cpu": ["--device", "cpu", "--dtype", "float32"],  # with --checkpoint: the weights the GPU trained
}


def no_cuda_reason() -> str:
    """Why this machine cannot run the reference; '' when it can."""
    if torch.cuda.is_available():
        return ""
    build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (
        f"no CUDA device: torch.cuda.is_available() is false (torch {torch.__version__}, {build}); "
        "run this on a machine with an NVIDIA GPU and a CUDA build of torch"
    )


def run_args(out: Path, cache: Path, grid: str, variant: str, checkpoint: Path | None = None) -> list[str]:
    """The ``diffbench`` arguments of one run of the reference."""
    extra, _ = GRIDS[grid]
    args = ["run", "--suite", SUITE, "--out", str(out / f"{grid}-{variant}"), "--cache", str(cache)]
    args += [*extra, *VARIANTS[variant], "--no-plots", "--no-report", "--no-progress"]
    return args + (["--checkpoint", str(checkpoint)] if checkpoint is not None else [])


def trained_checkpoint(cache: Path, grid: str) -> Path:
    """The weights the grid's CUDA run trained: the one cached checkpoint of its pair (training.py names them)."""
    denoiser, dataset = GRIDS[grid][1]
    found = sorted(cache.glob(f"{denoiser}-{dataset}-*.pt"))
    if len(found) != 1:
        raise click.ClickException(f"expected one cached {denoiser} x {dataset} checkpoint in '{cache}', found {found}")
    return found[0]


def diffbench(args: list[str]) -> None:
    """One ``diffbench`` command in this process; its failure stops the reference with the same message."""
    click.echo(f"$ diffbench {' '.join(args)}", err=True)
    cli.main.main(args=args, prog_name="diffbench", standalone_mode=False)


def run_reference(out: Path) -> list[Path]:
    """Every run of the reference into ``out``; the run folders, in order."""
    cache = out / "cache"
    folders = []
    try:
        for grid in GRIDS:
            for variant in VARIANTS:
                checkpoint = trained_checkpoint(cache, grid) if variant == "cpu" else None
                started = time.perf_counter()
                diffbench(run_args(out, cache, grid, variant, checkpoint))
                click.echo(f"{grid}-{variant}: {time.perf_counter() - started:.0f} s", err=True)
                folders.append(out / f"{grid}-{variant}")
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return folders


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=OUT, show_default=True)
@click.option(
    "--table",
    "table_from",
    multiple=True,
    type=click.Path(path_type=Path, file_okay=False),
    metavar="DIR",
    help="Only build the GPU vs CPU table from these run folders (repeatable); needs no GPU.",
)
def main(out: Path, table_from: tuple[Path, ...]) -> None:
    """Run the GPU reference (CUDA float32, bfloat16, compiled; CPU float32) and print the GPU vs CPU table."""
    if table_from:
        try:
            click.echo(table_from_folders(list(table_from)), nl=False)
        except (FileNotFoundError, TableError) as exc:
            raise cli.InputError(str(exc)) from None
        return
    reason = no_cuda_reason()
    if reason:
        raise cli.InputError(reason)
    if out.exists() and any(out.iterdir()):
        raise cli.InputError(f"'{out}' is not empty; give --out a new folder (or remove it) for the reference run")
    started = time.perf_counter()
    folders = run_reference(out)
    table = table_from_folders(folders)
    elapsed = time.perf_counter() - started
    note = f"\n`python -m diffbench.gpu_reference` took {elapsed / 60:.1f} min, models trained included.\n"
    (out / TABLE).write_text(table + note, encoding="utf-8")
    click.echo(table + note, nl=False)
    click.echo(f"table: {out / TABLE}", err=True)


if __name__ == "__main__":
    sys.exit(main())
