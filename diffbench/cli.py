"""The `diffbench` command line: run, train, list, env, plot, report, compare; bank export and rescore.

The options that choose a grid, and the grid they build, are ``diffbench.cli_grid``'s.
"""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
import pandas as pd

from diffbench import bank, claims, limits, plugins, pretrained, provenance, results
from diffbench.atomic import replace_atomically
from diffbench.cell import Cell
from diffbench.checkpoints import CheckpointError, non_finite_weights, read_state_dict
from diffbench.cli_bank import bank_group, rescore_command
from diffbench.cli_grid import (
    InputError,
    build_grid,
    cache_folder,
    check_folders,
    grid_options,
    log,
    resumed_suite,
    show_progress,
)
from diffbench.compare import CompareError, find_regressions, format_comparison
from diffbench.rundir import ResumeError, RunFolder, TableWriteError
from diffbench.suite import Suite

if TYPE_CHECKING:  # the executors are imported when `run` chooses one
    from diffbench.executor import Executor


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="diffbench")
@click.option(
    "--plugin",
    "plugin_specs",
    multiple=True,
    metavar="FILE.py|MODULE",
    help="Load an unpackaged plugin (repeatable). DIFFBENCH_PLUGINS adds more, comma-separated.",
)
def main(plugin_specs: tuple[str, ...]) -> None:
    """Benchmark diffusion classifiers: which estimator gives the best accuracy for the compute."""
    try:
        plugins.load_plugins(plugin_specs)
    except plugins.PluginError as exc:
        raise InputError(str(exc)) from None


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the plugins as JSON.")
def list_plugins(as_json: bool) -> None:
    """List every dataset, denoiser, estimator and reference classifier plugin with its params and source."""
    try:
        found = plugins.registry()
    except plugins.PluginError as exc:
        raise InputError(str(exc)) from None
    listing = {
        kind + "s": [
            {
                "name": r.name,
                "params": r.cls.params,
                "source": r.source,
                "doc": (r.cls.__doc__ or "").strip().splitlines()[0] if r.cls.__doc__ else "",
                **({"accepts": r.cls.accepts, "train": r.cls.train} if kind == "denoiser" else {}),
                **({"accepts": r.cls.accepts} if kind == "reference" else {}),
            }
            for r in sorted(entries.values(), key=lambda r: r.name)
        ]
        for kind, entries in found.items()
    }
    held_back = [
        {"name": h.name, "distribution": h.distribution, "version": h.version, "value": h.value}
        for h in plugins.held_back
    ]
    if as_json:
        click.echo(json.dumps(json_safe({**listing, "held_back": held_back}), indent=2, default=str, allow_nan=False))
        return
    for kind, entries in listing.items():
        click.secho(f"{kind}:", bold=True)
        for entry in entries:
            params = ", ".join(f"{k}={v!r}" for k, v in entry["params"].items()) or "no params"
            click.echo(f"  {entry['name']:<16} {params}")
            if "accepts" in entry:
                click.echo(f"  {'':<16} takes {entry['accepts']}")
            click.echo(f"  {'':<16} from {entry['source']}")
    if held_back:
        click.secho(f"held back by {plugins.ALLOW_ENV_VAR}:", bold=True)
        for held in held_back:
            click.echo(f"  {held['name']:<16} {held['distribution']} {held['version']} ({held['value']})")


def json_safe(value):
    """``value`` with every float JSON cannot hold (inf, -inf, nan) as the string Python writes for it."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


@main.command()
@grid_options
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default results/<timestamp>).")
@click.option(
    "--resume",
    type=click.Path(path_type=Path, file_okay=False),
    help="Finish an interrupted run in this folder: only its missing cells run, with the same settings.",
)
@click.option(
    "--no-cache", is_flag=True, help="Train (and fit references) afresh; save no weights nor reference answers."
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Your own trained weights (a state dict for the selected denoiser and params): skips training.",
)
@click.option("--executor", type=click.Choice(["local", "dask"]), default="local", help="Where cells run.")
@click.option(
    "--workers", type=click.IntRange(1, limits.MAX_WORKERS), help="Worker processes of the local dask cluster."
)
@click.option("--scheduler", metavar="ADDRESS", help="An existing dask scheduler, e.g. tcp://10.0.0.1:8786.")
@click.option("--no-plots", is_flag=True, help="Write the table only.")
@click.option("--no-report", is_flag=True, help="Do not write report.html into the run folder.")
@click.pass_context
def run(ctx, out, resume, no_cache, checkpoint, executor, workers, scheduler, no_plots, no_report, **opts) -> None:
    """Run a benchmark grid (default: the built-in quick suite) and write table and plots."""
    from diffbench import runner
    from diffbench.executor import ExecutorError

    check_executor_options(executor, workers, scheduler)
    out, base = resumed_run(out, resume, opts["suite_name"])
    suite, devices, cells = build_grid(opts, base)
    if checkpoint is not None:
        check_checkpoint(checkpoint, cells)
    running = choose_executor(ctx, executor, workers, scheduler, opts["threads"])
    out = out or Path("results") / datetime.now().strftime("%Y%m%d-%H%M%S")
    check_output_folder(out, resuming=resume is not None)
    check_folders(RunFolder(out), cache_folder(opts, no_cache))
    try:
        frame = runner.run(
            suite,
            cells,
            out,
            running,
            cache_folder(opts, no_cache),
            progress=show_progress(opts),
            log=log,
            checkpoint=checkpoint,
            resume=resume is not None,
        )
    except (ResumeError, ExecutorError) as exc:
        raise InputError(str(exc)) from None
    except TableWriteError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        log(f"interrupted: every finished cell is saved in {out}; finish the run with: diffbench run --resume {out}")
        sys.exit(130)
    try:
        finish_run(frame, out, plots=not no_plots, report=not no_report)
    except KeyboardInterrupt:  # the results are whole: only the plots, report or summary were cut short
        log(
            f"interrupted: every result is saved in {out / results.TABLE}; "
            f"draw the plots and report again with: diffbench plot {out}; diffbench report {out}"
        )
        sys.exit(130)


def check_executor_options(executor: str, workers: int | None, scheduler: str | None) -> None:
    """InputError unless --workers and --scheduler come with --executor dask, and not both."""
    if executor == "local" and (workers or scheduler):
        raise InputError("--workers and --scheduler need --executor dask")
    if workers and scheduler:
        raise InputError("give --workers (a local cluster) or --scheduler (an existing one), not both")


def resumed_run(out: Path | None, resume: Path | None, suite_name: str | None) -> tuple[Path | None, Suite | None]:
    """The run's folder and the suite to start from: with --resume DIR, DIR and the suite it was started with.

    A suite given with --suite is used as given: it must match the run's (the run folder checks, on resuming).
    """
    if resume is None:
        return out, None
    if out is not None and out != resume:
        raise InputError("--resume DIR writes into DIR; drop --out")
    return resume, (None if suite_name else resumed_suite(resume))


def check_checkpoint(checkpoint: Path, cells: list[Cell]) -> None:
    """InputError unless --checkpoint can serve the grid: one denoiser diffbench builds, a readable state dict.

    Whether the weights fit the module is checked once it is built; here only what needs no model.
    """
    if len({repr(c.denoiser) for c in cells}) != 1:
        raise InputError("--checkpoint holds one model: select exactly one denoiser (-m NAME[params])")
    if pretrained.arrives_trained(cells[0].denoiser):
        raise InputError(
            f"--checkpoint loads weights into a model diffbench builds, but {cells[0].denoiser!r} arrives trained "
            "with its own weights: drop --checkpoint (or select a denoiser diffbench builds)"
        )
    try:  # missing or unreadable: one line before anything runs (whether it fits is checked once built)
        broken = non_finite_weights(read_state_dict(checkpoint), set())  # NaN anywhere; inf once built
    except CheckpointError as exc:
        raise InputError(str(exc)) from None
    if broken:
        raise InputError(f"checkpoint '{checkpoint}' holds NaN in {', '.join(broken[:3])}: these weights are broken")


def choose_executor(
    ctx: click.Context, executor: str, workers: int | None, scheduler: str | None, threads: int | None
) -> Executor:
    """The executor the cells run on: this process, or a dask cluster (local with --workers, or --scheduler's)."""
    from diffbench.executor import LocalExecutor

    if executor != "dask":
        return LocalExecutor()
    from diffbench import dask_executor

    missing = dask_executor.missing_dependency()
    if missing:
        raise InputError(missing)
    plugin_specs = ctx.parent.params.get("plugin_specs", ())
    return dask_executor.DaskExecutor(workers, scheduler, threads, plugin_specs, log)


def check_output_folder(out: Path, resuming: bool) -> None:
    """InputError when --out is a file, or (unless resuming) a folder that already holds a run."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out '{out}' is a file, not a folder; give a folder for the run's results")
    if not resuming and RunFolder(out).holds_run():
        raise InputError(f"'{out}' already holds a run; choose another --out, or finish it with --resume {out}")


def finish_run(frame: pd.DataFrame, out: Path, plots: bool, report: bool) -> None:
    """After the grid: the plots and report, the summary table, and exit 1 when no cell ran or any cell failed."""
    if frame.empty:
        raise click.ClickException("no cell ran: every dataset x denoiser pair was skipped (see above)")
    errors_line = bank.write_accounting(frame, out)
    if plots:
        from diffbench import plots as plotting

        for path in plotting.plot_run(out):
            log(f"plot: {path}")
    claims_md = claims.write_run_claims(out)  # where the suite asks for them (claims = true, as li2023)
    if claims_md:
        log(f"claims: {claims_md}")
    if report:
        write_run_report(out)
    click.echo(results.summary(frame))
    if errors_line:
        click.echo(f"\n{errors_line}")
    click.echo(f"\nresults: {out / results.TABLE} (and {results.CSV})")
    failed = frame[frame["status"] != "ok"].drop_duplicates("cell_id")
    if not failed.empty:
        for _, row in failed.iterrows():
            if row.get("kind") == "reference":
                log(f"failed: reference {row['estimator_label']} on {row['dataset_label']}: {row['error']}")
                continue
            log(f"failed: {row['estimator_label']} at {row['trials']} trials on {row['device']}: {row['error']}")
        raise click.ClickException(
            f"{len(failed)} of {frame['cell_id'].nunique()} cells failed (see the 'error' column); "
            f"after a fix, run them again with: diffbench run --resume {out}"
        )


def write_run_report(folder: Path) -> None:
    """The run's report.html; a report that cannot be made is said in one line (the results are saved)."""
    from diffbench import report

    try:
        log(f"report: {report.write_report([folder], folder / report.REPORT, draw=False)}")
    except Exception as exc:
        log(f"report: not written ({type(exc).__name__}: {exc}); try: diffbench report {folder}")


@main.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The HTML file (default: report.html in the run folder; with several folders, in the working directory).",
)
def report_command(run_dirs: tuple[Path, ...], out: Path | None) -> None:
    """Write one self-contained HTML page (no network needed) of a run, or of several runs compared."""
    from diffbench import report

    out = out or (run_dirs[0] / report.REPORT if len(run_dirs) == 1 else Path(report.REPORT))
    try:
        path = report.write_report(list(run_dirs), out)
    except (report.ReportError, CompareError) as exc:
        raise InputError(str(exc)) from None
    click.echo(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")


@main.command()
@grid_options
def train(**opts) -> None:
    """Train (or confirm cached) every model a grid needs, without classifying."""
    from diffbench import runner
    from diffbench.executor import LocalExecutor

    suite, _, cells = build_grid(opts)
    check_folders(None, cache_folder(opts))
    failed = runner.train_only(suite, cells, LocalExecutor(), cache_folder(opts), progress=show_progress(opts), log=log)
    if failed:
        raise click.ClickException(f"{failed} model(s) failed to train (see above)")


@main.command()
def env() -> None:
    """Print the provenance block that every result row records."""
    for key, value in provenance.provenance().items():
        click.echo(f"{key:<20} {value}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
def plot(run_dir: Path) -> None:
    """Redraw the plots of a finished run from its saved tables."""
    from diffbench import plots

    try:
        made = plots.plot_run(run_dir)
    except (FileNotFoundError, results.TableError) as exc:
        raise InputError(str(exc)) from None
    except OSError as exc:  # the folder is read-only, the disk full...
        raise InputError(f"cannot write the plots into '{run_dir}' ({exc.strerror or exc})") from None
    for path in made:
        click.echo(f"plot: {path}")
    if not made:
        raise click.ClickException(f"'{run_dir}' has no finished cell to plot")


class FinitePercent(click.ParamType):
    """A finite number >= 0: NaN would switch the regression gate off (every comparison false), inf never fires."""

    name = "percent"

    def convert(self, value, param, ctx) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number < 0:
            self.fail(f"{value!r} must be a finite number >= 0 (a percentage)", param, ctx)
        return number


FINITE_PCT = FinitePercent()


@main.command("compare")
@click.argument("run_a", type=click.Path(path_type=Path, file_okay=False))
@click.argument("run_b", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Also save the table as CSV.")
@click.option(
    "--fail-on-regression",
    "regression_pct",
    type=FINITE_PCT,
    metavar="PCT",
    help="Exit 1 if any cell got worse beyond noise by more than PCT: accuracy lower by more than PCT "
    "percentage points and significant at 95%, or samples/s (latency) worse by more than PCT percent "
    "with the difference beyond both runs' IQRs added.",
)
@click.option(
    "--absolute-speed",
    is_flag=True,
    help="Judge raw samples/s and latency. By default B is first put at A's machine speed, through the bare "
    "network timed in both runs (same host and device), so a machine that got faster or slower between the runs "
    "does not read as a change of the estimator.",
)
def compare_command(
    run_a: Path, run_b: Path, out: Path | None, regression_pct: float | None, absolute_speed: bool
) -> None:
    """Compare two runs cell by cell: accuracy and speed, B against A, and whether each change is beyond noise.

    Accuracy: McNemar's exact test at 95% where both runs stored predictions of the same test points, else the
    two-proportion z-test (the output says which). Speed: beyond noise when |B - A| exceeds the sum of both IQRs,
    with B put at A's machine speed (unless --absolute-speed).
    """
    from diffbench import paired

    try:
        comparison, tests_used = paired.compare_folders(run_a, run_b, absolute_speed)
    except (FileNotFoundError, CompareError, results.TableError) as exc:
        raise InputError(str(exc)) from None
    click.echo(f"A = {run_a}, B = {run_b}")
    click.echo(format_comparison(comparison))
    click.echo(tests_used)
    if out is not None:
        try:
            replace_atomically(out, lambda tmp: comparison.table.to_csv(tmp, index=False))
        except OSError as exc:
            raise InputError(
                f"--out '{out}' cannot be written ({exc.strerror or exc}); give a file you can write"
            ) from None
        click.echo(f"table: {out}")
    if regression_pct is not None:
        regressed = find_regressions(comparison, regression_pct)
        if regressed:
            listed = "; ".join(regressed[:3]) + (f"; ... ({len(regressed) - 3} more)" if len(regressed) > 3 else "")
            raise click.ClickException(
                f"{len(regressed)} cell(s) regressed by more than {regression_pct:g}% beyond noise: {listed}"
            )


main.add_command(bank_group)  # portable error banks: diffbench.cli_bank
main.add_command(rescore_command(finish_run))
