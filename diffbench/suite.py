"""Suites (saved grids, TOML) and their expansion into cells."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from diffbench import limits, plugins, selectors
from diffbench.acceleration import DTYPES
from diffbench.batch_size import parse_batch_size
from diffbench.cell import Cell
from diffbench.contract import ParamError, Plugin
from diffbench.hints import did_you_mean
from diffbench.schedule import SCHEDULES
from diffbench.training import TrainSettings

DEVICES = ("auto", "cpu", "cuda")
SCENARIOS = ("offline", "single")


ERROR_MODES = ("bank", "live")
#: The quality passes of every cell: "full" (the seeded test pass, the calibration pass and the noise repeats)
#: or "accuracy" (the seeded test pass only; no temperature, calibration, flip rate nor gap variance).
QUALITY_MODES = ("full", "accuracy")


class SuiteError(ValueError):
    """A suite file or a run's options are malformed."""


@dataclass(frozen=True)
class Suite:
    datasets: list[str] = field(default_factory=lambda: ["spirals"])
    denoisers: list[str] = field(default_factory=lambda: ["mlp"])
    estimators: list[str] = field(default_factory=lambda: ["full-mc", "shared-noise", "truncated"])
    trials: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    devices: list[str] = field(default_factory=lambda: ["auto"])
    seed: int = 0
    repeats: int = 5
    schedule: str = "linear"
    timesteps: int = 1000
    #: Most rows per denoiser call, or "auto": tuned per device by a short sweep (cached).
    batch_size: int | str = "auto"
    #: Precisions to run each cell in (autocast below float32) and whether to torch.compile.
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    compile: list[bool] = field(default_factory=lambda: [False])
    #: offline (the whole test set at once: samples/s) and single (one sample at a time: latency).
    scenarios: list[str] = field(default_factory=lambda: ["offline", "single"])
    #: Seconds of timed repeats per cell and scenario before the stopping rule gives up on a small spread.
    max_time_s: float = 10.0
    #: Where the quality passes' errors come from: "bank" (computed once per model and draw, shared by
    #: every cell: diffbench.bank; the default, measured faster on the quick and the full suite) or "live"
    #: (every cell evaluates its own draws).
    errors: str = "bank"
    #: The error bank's timestep grid: 0 draws from all T; N puts every draw on Li et al.'s evenly spaced
    #: grid of N timesteps (bank mode only: diffbench.draws.Design).
    t_grid: int = 0
    #: Which quality passes each cell runs (QUALITY_MODES): "accuracy" skips the calibration pass and the noise
    #: repeats, most of a cell's denoiser rows, where only accuracies are asked for (the li2023 suite).
    quality: str = "full"
    #: Training overrides: TrainSettings keys for every denoiser, or a table per denoiser name.
    train: dict[str, Any] = field(default_factory=dict)
    #: Reference classifier selectors: one reference row per dataset and reference (diffbench.reference_cell).
    references: list[str] = field(default_factory=list)
    #: Check Li et al.'s claims on the run's table: claims.md in the run folder and a section of the report
    #: (diffbench.claims; the built-in suite li2023 sets it).
    claims: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Every field; ``references``, ``claims`` and ``quality`` only when set, so older run folders resume with
        the same settings."""
        optional = {"references": self.references, "claims": self.claims, "quality": self.quality != "full"}
        return {f.name: getattr(self, f.name) for f in fields(self) if optional.get(f.name, True)}

    def train_settings(self, denoiser: Plugin, dataset: Plugin | None = None) -> TrainSettings:
        """Defaults < the denoiser's ``train`` < the dataset's ``train`` < the suite's [train] < [train.<denoiser>]
        < the selector's ``objective`` (``unet[objective=flow]``: one network trained to two objectives)."""
        overrides = {k: v for k, v in self.train.items() if not isinstance(v, dict)}
        own = {**getattr(denoiser, "train", {}), **getattr(dataset, "train", {})}
        merged = {**own, **overrides, **self.train.get(denoiser.name, {})}
        if getattr(denoiser, "objective", ""):
            merged["objective"] = denoiser.objective
        return TrainSettings(**merged)


def builtin_suites() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("diffbench.suites").iterdir() if p.name.endswith(".toml"))


def load_suite(name_or_path: str) -> Suite:
    """Load a built-in suite by name or a suite TOML file."""
    path = Path(name_or_path)
    builtin = name_or_path in builtin_suites() and not path.is_file()  # a folder named 'full' is no suite
    if not builtin and (path.suffix == ".toml" or path.exists()):
        if path.is_dir():
            raise SuiteError(f"--suite '{name_or_path}' is a folder; give a suite .toml file or a built-in suite name")
        if not path.is_file():
            raise SuiteError(f"suite file '{name_or_path}' does not exist")
        try:
            text, where = path.read_text(encoding="utf-8"), f"suite file '{name_or_path}'"
        except UnicodeDecodeError as exc:
            raise SuiteError(f"suite file '{name_or_path}' is not UTF-8 text ({exc}); save it as UTF-8") from None
        except OSError as exc:
            raise SuiteError(f"suite file '{name_or_path}' cannot be read ({exc.strerror or exc})") from None
    elif builtin:
        text = resources.files("diffbench.suites").joinpath(f"{name_or_path}.toml").read_text()
        where = f"built-in suite '{name_or_path}'"
    else:
        raise SuiteError(f"unknown suite '{name_or_path}'; give a .toml file or one of: {', '.join(builtin_suites())}")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{where} is not valid TOML: {exc}") from None
    return suite_from_dict(data, where)


def suite_from_dict(data: dict[str, Any], where: str = "suite") -> Suite:
    known = {f.name: f for f in fields(Suite)}
    values: dict[str, Any] = {}
    defaults = Suite()
    for key, value in data.items():
        if key not in known:
            raise SuiteError(f"{where}: unknown key '{key}'{did_you_mean(key, known)} (known keys: {', '.join(known)})")
        default = getattr(defaults, key)
        if key == "train":
            value = check_train_table(value, where)
        elif key == "batch_size":
            try:
                value = parse_batch_size(value, where)
            except ValueError as exc:
                raise SuiteError(str(exc)) from None
        elif key == "max_time_s":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise SuiteError(f"{where}: 'max_time_s' must be a number of seconds, got {value!r}")
            value = float(value)
        elif isinstance(default, list):
            if isinstance(value, (str, int)):
                value = [value]
            if not isinstance(value, list) or not value:
                raise SuiteError(f"{where}: '{key}' must be a non-empty list")
        elif key == "claims":
            if not isinstance(value, bool):
                raise SuiteError(f"{where}: 'claims' must be true or false, got {value!r}")
        elif not isinstance(value, type(default)) or isinstance(value, bool):
            raise SuiteError(f"{where}: '{key}' must be {type(default).__name__}, got {value!r}")
        values[key] = value
    suite = replace(defaults, **values)
    check_suite(suite, where)
    return suite


def check_train_table(table: Any, where: str) -> dict[str, Any]:
    """Validate a [train] table: TrainSettings keys, or sub-tables of them per denoiser name."""
    if not isinstance(table, dict):
        raise SuiteError(f"{where}: [train] must be a table of steps, batch_size, lr")
    known = {f.name for f in fields(TrainSettings)}
    for key, value in table.items():
        sub = value if isinstance(value, dict) else {key: value}
        bad = sorted(set(sub) - known)
        if bad:
            raise SuiteError(
                f"{where}: unknown [train] key(s) {bad}{did_you_mean(bad[0], known)} "
                f"(known: {', '.join(sorted(known))}, or a [train.<denoiser>] table of them)"
            )
        try:
            TrainSettings(**sub)
        except (TypeError, ValueError) as exc:
            raise SuiteError(f"{where}: bad [train] settings: {exc}") from None
    return table


def check_suite(suite: Suite, where: str = "suite") -> None:
    """Check values that need no plugin: trials, devices, schedule, counts."""
    if not all(limits.in_range(t, 1, limits.MAX_TRIALS) for t in suite.trials):
        raise SuiteError(
            f"{where}: trials must be positive integers (at most {limits.MAX_TRIALS}), got {suite.trials}"[:300]
        )
    for device in suite.devices:
        if device not in DEVICES:
            raise SuiteError(f"{where}: unknown device '{device}'; choose from {', '.join(DEVICES)}")
    if suite.schedule not in SCHEDULES:
        raise SuiteError(f"{where}: unknown schedule '{suite.schedule}'; choose from {', '.join(SCHEDULES)}")
    for key, low, high in (
        ("seed", 0, limits.MAX_SEED),
        ("repeats", 1, limits.MAX_REPEATS),
        ("timesteps", 2, limits.MAX_TIMESTEPS),
    ):
        if not limits.in_range(getattr(suite, key), low, high):
            raise SuiteError(f"{where}: {limits.range_error(repr(key), low, high, getattr(suite, key))}")
    try:
        parse_batch_size(suite.batch_size, where)
    except ValueError as exc:
        raise SuiteError(str(exc)) from None
    if not 0 < suite.max_time_s <= limits.MAX_TIME_S:
        raise SuiteError(
            f"{where}: max_time_s must be more than 0 and at most {limits.MAX_TIME_S:g} seconds, got {suite.max_time_s}"
        )
    for dtype in suite.dtypes:
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise SuiteError(f"{where}: unknown dtype '{dtype}'; choose from {', '.join(DTYPES)}")
    if not all(isinstance(c, bool) for c in suite.compile):
        raise SuiteError(f"{where}: 'compile' must be true, false or a list of them, got {suite.compile!r}")
    if suite.errors not in ERROR_MODES:
        raise SuiteError(f"{where}: unknown errors mode {suite.errors!r}; choose from {', '.join(ERROR_MODES)}")
    if suite.quality not in QUALITY_MODES:
        raise SuiteError(f"{where}: unknown quality {suite.quality!r}; choose from {', '.join(QUALITY_MODES)}")
    if isinstance(suite.t_grid, bool) or not isinstance(suite.t_grid, int) or suite.t_grid < 0:
        raise SuiteError(f"{where}: t_grid must be a whole number of timesteps (0: all T), got {suite.t_grid!r}")
    if suite.t_grid and suite.errors != "bank":
        raise SuiteError(f'{where}: t_grid = {suite.t_grid} is part of the error bank\'s design; set errors = "bank"')
    for scenario in suite.scenarios:
        if scenario not in SCENARIOS:
            raise SuiteError(f"{where}: unknown scenario '{scenario}'; choose from {', '.join(SCENARIOS)}")
    for kind in ("datasets", "denoisers", "estimators", "references", "dtypes", "scenarios"):
        if not all(isinstance(s, str) for s in getattr(suite, kind)):
            raise SuiteError(f"{where}: '{kind}' must be a list of selector strings")


def resolve_devices(requested: list[str], log=print) -> list[str]:
    """Expand ``auto`` to every device present; drop CUDA (said once) when it is missing."""
    has_cuda = torch.cuda.is_available()
    out: list[str] = []
    for device in requested:
        wanted = ["cpu", "cuda"] if device == "auto" else [device]
        for d in wanted:
            if d == "cuda" and not has_cuda:
                if "cuda-missing" not in out:
                    log("CUDA is not available on this machine: skipping the cuda device")
                    out.append("cuda-missing")
                continue
            if d not in out:
                out.append(d)
    return [d for d in out if d != "cuda-missing"]


def instantiate(kind: str, selector: str) -> list[Plugin]:
    """Every plugin instance a selector expands to; raises on unknown names or params."""
    instances = []
    cls = plugins.get(kind, selectors.parse(selector)[0]).cls
    list_params = [key for key, default in cls.params.items() if isinstance(default, (list, tuple))]
    for _, params in selectors.expand(selector, list_params):
        instances.append(cls(**params))
    return instances


def expand(suite: Suite, devices: list[str]) -> list[Cell]:
    """The grid: every dataset x denoiser x estimator x trials x device of a suite."""
    datasets = [p for s in suite.datasets for p in instantiate("dataset", s)]
    denoisers = [p for s in suite.denoisers for p in instantiate("denoiser", s)]
    estimators = [p for s in suite.estimators for p in instantiate("estimator", s)]
    return [
        Cell(ds, dn, est, trials, device, suite.seed, dtype, compiled)
        for ds in datasets
        for dn in denoisers
        for device in devices
        for dtype in suite.dtypes
        for compiled in suite.compile
        for est in estimators
        for trials in suite.trials
    ]


def check_grid(suite: Suite, cells: list[Cell]) -> None:
    """What can be checked once plugins are known, before anything trains (SuiteError or ParamError).

    Every estimator's params against the schedule (``Estimator.check_schedule``), and every
    ``[train.<name>]`` table names a registered denoiser.
    """
    for estimator in {repr(c.estimator): c.estimator for c in cells}.values():
        try:
            estimator.check_schedule(suite.timesteps)
        except ParamError:
            raise
        except Exception as exc:
            raise ParamError(
                f"estimator '{estimator!r}' check_schedule({suite.timesteps}) raised {type(exc).__name__}: {exc}"
            ) from None
    known = plugins.registry()["denoiser"]
    for name, value in suite.train.items():
        if isinstance(value, dict) and name not in known:
            raise SuiteError(
                f"[train.{name}] names no denoiser{did_you_mean(name, known)} (known: {', '.join(sorted(known))}); "
                "give a denoiser's name, or load its plugin with --plugin"
            )
