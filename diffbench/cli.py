"""The `diffbench` command line: run, list, plot."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import click
import torch

from diffbench import limits, plugins, pretrained, provenance, results
from diffbench.atomic import replace_atomically
from diffbench.batch_size import parse_batch_size
from diffbench.checkpoints import CheckpointError, default_cache_dir, non_finite_weights, read_state_dict
from diffbench.compare import CompareError, find_regressions, format_comparison
from diffbench.contract import DataError, ParamError
from diffbench.rundir import FolderError, ResumeError, RunFolder, TableWriteError, check_writable_folder
from diffbench.schedule import SCHEDULES
from diffbench.selectors import SelectorError, parse_int_list
from diffbench.suite import (
    DEVICES,
    Suite,
    SuiteError,
    check_grid,
    check_suite,
    expand,
    load_suite,
    resolve_devices,
    suite_from_dict,
)

INPUT_ERRORS = (plugins.PluginError, ParamError, SelectorError, SuiteError, CheckpointError, ResumeError, DataError)


class InputError(click.ClickException):
    """Bad input: one line on stderr, exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        one_line = " ".join(self.format_message().split())
        click.echo(f"diffbench: error: {one_line}", err=True)


def log(message: str) -> None:
    click.echo(message, err=True)


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
    """List every dataset, denoiser and estimator plugin with its params and source."""
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


def grid_options(command):
    """The options that choose a grid, shared by `run` and `train`."""
    options = [
        click.option(
            "-d", "--dataset", "datasets", multiple=True, metavar="SELECTOR", help="Dataset selector (repeatable)."
        ),
        click.option(
            "-m", "--denoiser", "denoisers", multiple=True, metavar="SELECTOR", help="Denoiser selector (repeatable)."
        ),
        click.option(
            "-e",
            "--estimator",
            "estimators",
            multiple=True,
            metavar="SELECTOR",
            help='Estimator selector (repeatable), e.g. -e "truncated[t_min=100,t_max=[300,600]]".',
        ),
        click.option("--trials", metavar="LIST", help="Trials per class, comma-separated, e.g. 1,2,4,8."),
        click.option("--device", type=click.Choice(DEVICES), help="cpu, cuda, or auto (every device present)."),
        click.option(
            "--seed", type=click.IntRange(0, limits.MAX_SEED), help="Seed for data, training and estimator noise."
        ),
        click.option(
            "--threads", type=click.IntRange(1, limits.MAX_THREADS), help="torch CPU threads for this run (recorded)."
        ),
        click.option(
            "--repeats", type=click.IntRange(1, limits.MAX_REPEATS), help="Timed repeats per cell (median and IQR)."
        ),
        click.option("--schedule", type=click.Choice(SCHEDULES), help="Noise schedule."),
        click.option(
            "--batch-size",
            metavar="N|auto",
            help="Most rows per denoiser call; auto (default) tunes it per device by a short sweep, cached.",
        ),
        click.option(
            "--dtype", "dtypes", metavar="LIST", help="Precisions, comma-separated: float32,bfloat16,float16."
        ),
        click.option("--compile", "compiled", is_flag=True, default=None, help="Run the denoiser under torch.compile."),
        click.option("--scenario", "scenarios", metavar="LIST", help="offline, single or offline,single (default)."),
        click.option(
            "--max-time",
            "max_time_s",
            type=click.FloatRange(0, limits.MAX_TIME_S, min_open=True),
            help="Timing seconds per cell cap.",
        ),
        click.option(
            "--suite",
            "suite_name",
            metavar="NAME|FILE.toml",
            help="A built-in suite (quick, full, gpu-reference) or a suite file; default quick.",
        ),
        click.option(
            "--cache",
            "cache_dir",
            type=click.Path(path_type=Path),
            help="Checkpoint cache folder (default $DIFFBENCH_CACHE or ~/.cache/diffbench).",
        ),
        click.option(
            "--progress/--no-progress",
            default=None,
            help="Show progress bars over training and cells (default: on a terminal).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def split_list(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def build_grid(opts: dict, base: Suite | None = None) -> tuple[Suite, list[str], list]:
    """Suite (built-in, file or ``base``, overridden by the command line), devices and cells.

    Raises InputError on bad input.
    """
    if opts.get("threads"):
        torch.set_num_threads(opts["threads"])
    try:
        suite = base if base is not None else load_suite(opts["suite_name"] or "quick")
        if base is None and not opts["suite_name"] and opts["datasets"]:
            # the default quick suite's [train] tables are tuned for its own data (spirals): on data chosen
            # with -d, each denoiser trains with its own defaults (checkerboard loses 6 points otherwise)
            suite = replace(suite, train={})
        overrides = {
            "datasets": list(opts["datasets"]),
            "denoisers": list(opts["denoisers"]),
            "estimators": list(opts["estimators"]),
            "trials": parse_int_list(opts["trials"]) if opts["trials"] else None,
            "devices": [opts["device"]] if opts["device"] else None,
            "seed": opts["seed"],
            "repeats": opts["repeats"],
            "schedule": opts["schedule"],
            "batch_size": parse_batch_size(opts["batch_size"], "--batch-size") if opts["batch_size"] else None,
            "dtypes": split_list(opts["dtypes"]),
            "compile": [True] if opts["compiled"] else None,
            "scenarios": split_list(opts["scenarios"]),
            "max_time_s": opts["max_time_s"],
        }
        suite = replace(suite, **{k: v for k, v in overrides.items() if v not in (None, [])})
        check_suite(suite, "the command line")
        devices = resolve_devices(suite.devices, log=log)
        cells = expand(suite, devices)
        for denoiser in {repr(c.denoiser): c.denoiser for c in cells}.values():
            suite.train_settings(denoiser)
        for dataset in {repr(c.dataset): c.dataset for c in cells}.values():
            dataset.check()  # missing or incomplete files: one line before anything trains
        pretrained.check_pairs(cells)  # a pretrained model that cannot serve its dataset: before anything runs
        check_grid(suite, cells)
    except INPUT_ERRORS as exc:
        raise InputError(str(exc)) from None
    except (TypeError, ValueError) as exc:  # a denoiser's own `train` defaults are malformed
        raise InputError(str(exc)) from None
    if not cells:
        raise InputError("the grid is empty: no device is available for the devices asked for")
    return suite, devices, cells


def check_folders(out: RunFolder | None, cache: Path | None) -> None:
    """InputError (one line, exit 2) unless the run folder and the cache can be written: before anything trains."""
    try:
        if out is not None:
            out.check_writable()
        if cache is not None:
            check_writable_folder(cache, "--cache")
    except FolderError as exc:
        raise InputError(str(exc)) from None


def cache_folder(opts: dict, no_cache: bool = False) -> Path | None:
    return None if no_cache else (opts["cache_dir"] or default_cache_dir())


def show_progress(opts: dict) -> bool:
    return sys.stderr.isatty() if opts["progress"] is None else opts["progress"]


@main.command()
@grid_options
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default results/<timestamp>).")
@click.option(
    "--resume",
    type=click.Path(path_type=Path, file_okay=False),
    help="Finish an interrupted run in this folder: only its missing cells run, with the same settings.",
)
@click.option("--no-cache", is_flag=True, help="Train afresh and do not save the weights.")
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
    from diffbench.executor import ExecutorError, LocalExecutor

    if executor == "local" and (workers or scheduler):
        raise InputError("--workers and --scheduler need --executor dask")
    if workers and scheduler:
        raise InputError("give --workers (a local cluster) or --scheduler (an existing one), not both")
    if resume is not None:
        if out is not None and out != resume:
            raise InputError("--resume DIR writes into DIR; drop --out")
        out = resume
        base = None if opts["suite_name"] else resumed_suite(resume)  # a given suite must match the run's
    else:
        base = None
    suite, devices, cells = build_grid(opts, base)
    if checkpoint is not None:
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
            raise InputError(
                f"checkpoint '{checkpoint}' holds NaN in {', '.join(broken[:3])}: these weights are broken"
            )
    if executor == "dask":
        from diffbench import dask_executor

        missing = dask_executor.missing_dependency()
        if missing:
            raise InputError(missing)
        plugin_specs = ctx.parent.params.get("plugin_specs", ())
        running = dask_executor.DaskExecutor(workers, scheduler, opts["threads"], plugin_specs, log)
    else:
        running = LocalExecutor()
    out = out or Path("results") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out '{out}' is a file, not a folder; give a folder for the run's results")
    if resume is None and RunFolder(out).holds_run():
        raise InputError(f"'{out}' already holds a run; choose another --out, or finish it with --resume {out}")
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
    if frame.empty:
        raise click.ClickException("no cell ran: every dataset x denoiser pair was skipped (see above)")
    if not no_plots:
        from diffbench import plots

        for path in plots.plot_run(out):
            log(f"plot: {path}")
    if not no_report:
        write_run_report(out)
    click.echo(results.summary(frame))
    click.echo(f"\nresults: {out / results.TABLE} (and {results.CSV})")
    failed = frame[frame["status"] != "ok"].drop_duplicates("cell_id")
    if not failed.empty:
        for _, row in failed.iterrows():
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


def resumed_suite(folder: Path) -> Suite:
    """The suite a run folder was started with (what --resume runs again)."""
    try:
        settings = RunFolder(folder).settings()
    except ResumeError as exc:
        raise InputError(str(exc)) from None
    if settings is None:
        raise InputError(f"'{folder}' holds no run.json: it is not a diffbench run folder to resume")
    try:
        return suite_from_dict(settings["suite"], f"'{folder}/run.json'")
    except (KeyError, TypeError, SuiteError) as exc:
        raise InputError(f"'{folder}/run.json' is not a diffbench run's settings ({exc})") from None


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


@main.command("compare")
@click.argument("run_a", type=click.Path(path_type=Path, file_okay=False))
@click.argument("run_b", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Also save the table as CSV.")
@click.option(
    "--fail-on-regression",
    "regression_pct",
    type=click.FloatRange(min=0),
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
