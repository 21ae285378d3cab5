"""The command line of portable error banks: `diffbench bank export` and `diffbench rescore` (registered by cli.py).

The file format and the export are ``diffbench.bank_file``'s; the rescoring is ``diffbench.rescore``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
import pandas as pd

from diffbench import bank_file, results
from diffbench.cli_grid import INPUT_ERRORS, InputError, log
from diffbench.rundir import RunFolder


@click.group("bank")
def bank_group() -> None:
    """Portable error banks: export a bank-mode run's errors to one file (then `diffbench rescore` it)."""


@bank_group.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--cache",
    "cache_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="The cache the run wrote its banks to (default: the one the run folder records, then the default cache).",
)
def export_command(run_dir: Path, file: Path, cache_dir: Path | None) -> None:
    """Write the error banks of a run scored with --errors bank, and what replays them, into FILE (.npz)."""
    try:
        models = bank_file.export(run_dir, file, cache_dir)
    except (bank_file.BankFileError, FileNotFoundError, results.TableError) as exc:
        raise InputError(str(exc)) from None
    except OSError as exc:
        raise InputError(f"cannot write '{file}' ({exc.strerror or exc}); give a file you can write") from None
    for model in models:
        ident = model.about["identity"]
        pair = f"{ident['dataset_label']} x {ident['denoiser_label']}"
        log(f"bank {model.about['bank']}: {pair} on {ident['device']}, {len(model.keys):,} draws")
    click.echo(f"bank file: {file} ({file.stat().st_size / 1e6:.1f} MB)")


Finish = Callable[..., None]  # cli.finish_run(frame, out, plots=..., report=...): plots, report, summary, exit code


def rescore_command(finish: Finish) -> click.Command:
    """The `rescore` command, ending as `run` does with ``finish`` (given by cli.py, which owns it)."""

    @click.command("rescore")
    @click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
    @click.option(
        "-e",
        "--estimator",
        "estimators",
        multiple=True,
        metavar="SELECTOR",
        help="Estimator selector (repeatable); default: the run's estimators.",
    )
    @click.option("--trials", metavar="LIST", help="Trials per class, comma-separated; default: the run's.")
    @click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True, help="The new run folder.")
    @click.option("--no-plots", is_flag=True, help="Write the table only.")
    @click.option("--no-report", is_flag=True, help="Do not write report.html into the run folder.")
    def rescore(
        file: Path, estimators: tuple[str, ...], trials: str | None, out: Path, no_plots: bool, no_report: bool
    ) -> None:
        """Score estimators and budgets from a bank file without the model: accuracy, calibration, flip rate.

        No timing: the timing columns are empty and timing_note says why.
        """
        frame = rescored(file, estimators, trials, out)
        finish(frame, out, plots=not no_plots, report=not no_report)

    return rescore


def rescored(file: Path, estimators: tuple[str, ...], trials: str | None, out: Path) -> pd.DataFrame:
    """The rescored table written into ``out``; InputError (one line, exit 2) on a bad file or a missing draw."""
    from diffbench import rescore
    from diffbench.selectors import parse_int_list

    if RunFolder(out).holds_run():
        raise InputError(f"'{out}' already holds a run; choose another --out")
    try:
        budgets = parse_int_list(trials) if trials else None
        header, models = bank_file.read(file)
        return rescore.rescore(header, models, out, estimators, budgets, file, log)
    except (bank_file.BankFileError, rescore.RescoreError, *INPUT_ERRORS) as exc:
        raise InputError(str(exc)) from None
