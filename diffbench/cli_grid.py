"""The command line's grid: the options that choose one (shared by `run` and `train`) and the suite, devices
and cells they build; and the one-line input error (exit 2) every command raises on bad input.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import click
import torch

from diffbench import limits, plugins, pretrained
from diffbench.batch_size import parse_batch_size
from diffbench.checkpoints import CheckpointError, default_cache_dir
from diffbench.contract import DataError, ParamError
from diffbench.parameterisation import OBJECTIVES
from diffbench.rundir import FolderError, ResumeError, RunFolder, check_writable_folder
from diffbench.schedule import SCHEDULES
from diffbench.selectors import SelectorError, parse_int_list
from diffbench.suite import (
    DEVICES,
    ERROR_MODES,
    QUALITY_MODES,
    Suite,
    SuiteError,
    check_grid,
    check_suite,
    expand,
    instantiate,
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


def grid_options(command):
    """The options that choose a grid, shared by `run` and `train` (in this order in --help)."""
    for option in reversed([*selector_options(), *measurement_options(), *source_options()]):
        command = option(command)
    return command


def selector_options() -> list:
    """What the grid holds: datasets, denoisers, estimators, trials, device and seed."""
    return [
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
        click.option(
            "-r",
            "--reference",
            "references",
            multiple=True,
            metavar="SELECTOR",
            help="Reference classifier selector (repeatable), e.g. -r logistic -r knn[k=5]: one row per dataset.",
        ),
        click.option("--trials", metavar="LIST", help="Trials per class, comma-separated, e.g. 1,2,4,8."),
        click.option("--device", type=click.Choice(DEVICES), help="cpu, cuda, or auto (every device present)."),
        click.option(
            "--seed", type=click.IntRange(0, limits.MAX_SEED), help="Seed for data, training and estimator noise."
        ),
    ]


def measurement_options() -> list:
    """How each cell runs and is timed: threads, repeats, schedule, batch size, precisions, compile, scenarios."""
    return [
        click.option(
            "--threads", type=click.IntRange(1, limits.MAX_THREADS), help="torch CPU threads for this run (recorded)."
        ),
        click.option(
            "--repeats", type=click.IntRange(1, limits.MAX_REPEATS), help="Timed repeats per cell (median and IQR)."
        ),
        click.option("--schedule", type=click.Choice(SCHEDULES), help="Noise schedule."),
        click.option(
            "--objective",
            type=click.Choice(OBJECTIVES),
            help="Training objective: epsilon (default), v_prediction, or flow (a rectified flow, velocity).",
        ),
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
            "--errors",
            "errors",
            type=click.Choice(ERROR_MODES),
            help="bank: each denoising error computed once per model and shared by every cell; live: per cell.",
        ),
        click.option(
            "--t-grid",
            "t_grid",
            type=click.IntRange(min=0),
            help="With --errors bank: draw every timestep from Li et al.'s evenly spaced grid of N (0: all T).",
        ),
        click.option(
            "--quality",
            "quality",
            type=click.Choice(QUALITY_MODES),
            help="full (default): accuracy, calibration and flip rate; accuracy: the seeded test pass only.",
        ),
        click.option(
            "--max-time",
            "max_time_s",
            type=click.FloatRange(0, limits.MAX_TIME_S, min_open=True),
            help="Cap in seconds on the timed repeats of each scenario of a cell.",
        ),
    ]


def source_options() -> list:
    """Where the grid and the weights come from, and whether progress is shown: suite, cache, progress bars."""
    return [
        click.option(
            "--suite",
            "suite_name",
            metavar="NAME|FILE.toml",
            help="A built-in suite (quick, full, li2023, gpu-reference) or a suite file; default quick.",
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
            "references": list(opts.get("references") or []),
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
            "errors": opts.get("errors"),
            "t_grid": opts.get("t_grid"),
            "quality": opts.get("quality"),
        }
        suite = replace(suite, **{k: v for k, v in overrides.items() if v not in (None, [])})
        if opts.get("objective"):
            suite = with_objective(suite, opts["objective"])
        check_suite(suite, "the command line")
        devices = resolve_devices(suite.devices, log=log)
        cells = expand(suite, devices)
        for pair in {(repr(c.denoiser), repr(c.dataset)): c for c in cells}.values():
            suite.train_settings(pair.denoiser, pair.dataset)
        for dataset in {repr(c.dataset): c.dataset for c in cells}.values():
            dataset.check()  # missing or incomplete files: one line before anything trains
        pretrained.check_pairs(cells)  # a pretrained model that cannot serve its dataset: before anything runs
        check_grid(suite, cells)
        for selector in suite.references:  # unknown names and bad params: one line before anything trains
            instantiate("reference", selector)
    except INPUT_ERRORS as exc:
        raise InputError(str(exc)) from None
    except (TypeError, ValueError) as exc:  # a denoiser's own `train` defaults are malformed
        raise InputError(str(exc)) from None
    if not cells:
        raise InputError("the grid is empty: no device is available for the devices asked for")
    return suite, devices, cells


def with_objective(suite: Suite, objective: str) -> Suite:
    """The suite with every model trained to ``objective`` (``--objective``: over [train] and [train.<name>])."""
    table = {k: ({**v, "objective": objective} if isinstance(v, dict) else v) for k, v in suite.train.items()}
    return replace(suite, train={**table, "objective": objective})


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


def resumed_suite(folder: Path) -> Suite:
    """The suite a run folder was started with (what --resume runs again)."""
    try:
        settings = RunFolder(folder).settings()
    except ResumeError as exc:
        raise InputError(str(exc)) from None
    if settings is None:
        raise InputError(f"'{folder}' holds no run.json: it is not a diffbench run folder to resume")
    try:
        recorded = settings["suite"]
        if isinstance(recorded, dict) and "errors" not in recorded:  # a folder from before the error bank ran live
            recorded = {**recorded, "errors": "live"}
        return suite_from_dict(recorded, f"'{folder}/run.json'")
    except (KeyError, TypeError, SuiteError) as exc:
        raise InputError(f"'{folder}/run.json' is not a diffbench run's settings ({exc})") from None
