"""The results table's columns: every one declared once (name, type, meaning, unit), and the one function that
assembles a row from its parts.

A row is written in parts (the cell's identity, its model, its batching, what was measured, its outcome, the
end-to-end rate of a latent model, provenance, when it ran); ``row`` merges them in that order and refuses a
column nobody declared. The table's derived columns (``results.tidy``) are declared here too. Plugin params are
an open family (``p_dataset_*``, ...). README.md's table "Reading the results" lists exactly these columns
(tests/test_columns.py checks it), and the report takes ``KEY_COLUMNS`` and ``HELP`` from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    """One column of the results table; a ``name`` ending in ``*`` declares a family (every name with that prefix)."""

    name: str
    dtype: str  # "str", "int", "float" or "bool" (as the parquet file holds it)
    meaning: str
    unit: str = ""
    help: str = ""  # the report's tooltip, where the column has one


def _c(name: str, dtype: str, meaning: str, unit: str = "", help: str = "") -> Column:
    return Column(name, dtype, meaning, unit, help)


IDENTITY = (
    _c("cell_id", "str", "hash of the cell's key columns (dataset_label ... compile)"),
    _c("kind", "str", "estimator (a diffusion classifier's cell) or reference (a reference classifier's row)"),
    _c("dataset", "str", "dataset plugin name"),
    _c("denoiser", "str", "denoiser plugin name"),
    _c("estimator", "str", "estimator plugin name (a reference row: the reference's name)"),
    _c("dataset_label", "str", "dataset name with its non-default params, as in a selector"),
    _c("denoiser_label", "str", "denoiser name with its non-default params"),
    _c("estimator_label", "str", "estimator (or reference) name with its non-default params"),
    _c("trials", "int", "the estimator's trials budget"),
    _c("device", "str", "cpu or cuda"),
    _c("seed", "int", "the run's seed (data, training, the seeded pass)"),
    _c("dtype", "str", "precision the denoiser ran in (autocast below float32)"),
    _c("compile", "bool", "whether the denoiser ran under torch.compile"),
    _c("variance_baseline", "bool", "the estimator is the plain Monte Carlo baseline (full-mc)"),
    _c("schedule", "str", "noise schedule (the suite's, 'flow' for a flow-trained model, or a pretrained model's own)"),
    _c("noise_process", "str", "the model's noise process: vp, flow (rectified flow) or edm"),
    _c("objective", "str", "training objective: epsilon, v_prediction or flow (pretrained: its prediction type)"),
    _c("num_timesteps", "int", "T, the schedule's length", "steps"),
    _c("train_steps", "int", "training steps (0 for a pretrained model)", "steps"),
    _c("train_batch_size", "int", "training batch size", "samples"),
    _c("train_lr", "float", "training learning rate"),
)
FAMILIES = (
    _c("p_dataset_*", "any", "each dataset param"),
    _c("p_denoiser_*", "any", "each denoiser param"),
    _c("p_estimator_*", "any", "each estimator param"),
    _c("p_reference_*", "any", "each reference classifier param"),
)
MODEL = (
    _c("device_name", "str", "the GPU's or CPU's name"),
    _c("bayes_accuracy", "float", "the Bayes-optimal classifier's test accuracy, where the dataset knows it"),
    _c("cache_hit", "bool", "the trained weights came from the cache"),
    _c("train_s", "float", "training time (0 when the cache hit)", "s"),
    _c("train_started_at", "float", "when its model's training started (trained in this run)", "unix s"),
    _c("train_finished_at", "float", "when its model's training finished", "unix s"),
    _c("setup_s", "float", "data and model set-up time", "s"),
    _c("test_subset", "str", "the fixed test subset's rule"),
    _c("test_digest", "str", "hash of the test pixels and labels classified"),
    _c("heldout_n", "int", "labelled samples fit and calibration used", "samples"),
    _c("heldout_from", "str", "where the held-out samples came from, or why there were none"),
)
PRETRAINED = (
    _c("prediction_type", "str", "a pretrained module predicts: epsilon, v_prediction, sample, flow or edm_denoiser"),
    _c("learned_variance", "bool", "a pretrained module returns a learned variance beside its prediction"),
    _c("model_source", "str", "where a pretrained model came from"),
    _c("model_revision", "str", "the pretrained model's revision"),
    _c("model_check", "str", "'ok', or why the model's parameterisation or class conditioning looks wrong"),
    _c("model_note", "str", "what the plugin said about the model before it ran (a sample size it was not trained on)"),
    _c("latent", "bool", "a latent model: images were encoded once before classifying"),
    _c("encode_s", "float", "time encoding the images to latents", "s"),
    _c("encode_s_per_image", "float", "encode time per image", "s"),
)
BATCHING = (
    _c("batch_size", "int", "most rows per denoiser call", "rows"),
    _c("batch_size_tuned", "bool", "the batch size was tuned by a sweep"),
    _c("batch_size_cached", "bool", "the tuned batch size came from the cache"),
)
QUALITY = (
    _c("scenario", "str", "offline (the test set at once) or single (one sample at a time)"),
    _c("n_test", "int", "test samples classified", "samples"),
    _c("samples_per_call", "int", "most samples handed to one errors() call in the untimed passes", "samples"),
    _c(
        "accuracy",
        "float",
        "test accuracy of argmin error",
        help="share of test samples classified correctly (seeded pass)",
    ),
    _c("accuracy_ci_low", "float", "95% Wilson interval of accuracy, low end"),
    _c("accuracy_ci_high", "float", "95% Wilson interval of accuracy, high end"),
    _c(
        "nfe_per_sample",
        "float",
        "denoiser rows per sample",
        "NFE",
        help="denoiser evaluations per test sample, read from the model's counter",
    ),
    _c("nfe_per_sample_iqr", "float", "spread of NFE per sample over the cell's passes", "NFE"),
    _c("temperature", "float", "softmax temperature fitted on the held-out data (NaN: quality = accuracy)"),
    _c("nll", "float", "test negative log-likelihood of the calibrated probabilities", "nats"),
    _c("ece", "float", "expected calibration error (15 bins)"),
    _c("brier", "float", "Brier score"),
    _c(
        "gap_variance",
        "float",
        "variance of the true-vs-rival error gap over independent repeats, times NFE",
        help="variance of the true-vs-rival error gap across repeats, times NFE",
    ),
    _c(
        "flip_rate",
        "float",
        "share of samples whose answer differs between two independent repeats (NaN: quality = accuracy)",
        help="share of samples whose predicted class changes between two independent repeats",
    ),
    _c("fit_nfe_per_sample", "float", "denoiser rows per held-out sample spent in fit", "NFE"),
    _c("errors_source", "str", "bank: the quality passes' errors came from the error bank; live: computed by the cell"),
    _c("quality_s", "float", "seconds of the cell's fit and quality passes (not timed scenarios)", "s"),
    _c("errors_bank", "str", "the error bank's content key (bank mode; its shards: <cache>/banks/<key>)"),
    _c("live_nfe", "int", "denoiser rows the quality passes asked for (fit, accuracy, calibration, repeats)", "NFE"),
    _c("t_grid", "int", "the error bank's timestep grid (--t-grid; 0: every timestep of T)", "steps"),
    _c("computed_nfe", "int", "rows the denoiser really ran for this cell (the rest came from the bank)", "NFE"),
)
SPEED = (
    _c(
        "samples_per_s",
        "float",
        "median classification throughput",
        "samples/s",
        help="median samples classified per second over timed repeats",
    ),
    _c("samples_per_s_iqr", "float", "IQR of samples_per_s over the repeats", "samples/s"),
    _c("samples_per_s_ci_low", "float", "90% interval of the median samples/s, low end", "samples/s"),
    _c("samples_per_s_ci_high", "float", "90% interval of the median samples/s, high end", "samples/s"),
    _c("evals_per_s", "float", "denoiser rows per second inside the estimator (median)", "rows/s"),
    _c("bare_rows_per_s", "float", "the bare module's forward rows per second", "rows/s"),
    _c(
        "efficiency",
        "float",
        "evals_per_s / bare_rows_per_s per repeat, median",
        help="evals/s over the bare network's forward rows/s on the same device (1 = no overhead)",
    ),
    _c("efficiency_iqr", "float", "IQR of efficiency"),
    _c("efficiency_ci_low", "float", "90% interval of the median efficiency, low end"),
    _c("efficiency_ci_high", "float", "90% interval of the median efficiency, high end"),
    _c("inner_passes", "int", "passes per timed region", "passes"),
    _c("repeats", "int", "timed repeats (calls, for single) the stopping rule took"),
    _c("noisy", "bool", "the intervals never settled"),
    _c("rel_iqr", "float", "samples/s IQR over its median"),
    _c("warmup_s", "float", "warm-up time", "s"),
    _c("timing_note", "str", "why the timing did not settle, if it did not"),
    _c("timed_samples", "int", "(offline) test samples in each timed pass", "samples"),
    _c("latency_p50_ms", "float", "(single) median per-sample latency", "ms"),
    _c("latency_p90_ms", "float", "(single) 90th percentile latency", "ms"),
    _c("latency_iqr_ms", "float", "(single) IQR of latency", "ms"),
    _c("latency_ci_low_ms", "float", "(single) 90% interval of p50, low end", "ms"),
    _c("latency_ci_high_ms", "float", "(single) 90% interval of p50, high end", "ms"),
    _c("bare_latency_p50_ms", "float", "(single) the bare network's p50 on the same rows", "ms"),
    _c("single_mode", "str", "(single) how each call ran: cuda-graph, or eager with the reason"),
    _c("peak_memory_mb", "float", "peak CUDA memory allocated, or peak resident memory on CPU", "MiB"),
)
OUTCOME = (
    _c("status", "str", "ok or failed"),
    _c("error", "str", "why the cell failed ('' when ok)"),
    _c("end_to_end_samples_per_s", "float", "samples_per_s with each image's encode time added", "samples/s"),
)
PROVENANCE = (
    _c("diffbench_version", "str", "diffbench's version"),
    _c("torch_version", "str", "torch's version"),
    _c("cuda_version", "str", "the CUDA torch was built with ('' without)"),
    _c("python_version", "str", "Python's version"),
    _c("threads", "int", "torch intra-op threads"),
    _c("interop_threads", "int", "torch inter-op threads"),
    _c("env_omp_num_threads", "str", "OMP_NUM_THREADS"),
    _c("env_mkl_num_threads", "str", "MKL_NUM_THREADS"),
    _c("cpu_name", "str", "the CPU's name"),
    _c("cuda_devices", "str", "every visible GPU's name"),
    _c("hostname", "str", "the machine's name"),
    _c("host", "str", "the machine the cell ran on"),
    _c("git_commit", "str", "diffbench's git commit (-dirty with uncommitted changes)"),
    _c("command", "str", "the command that started the run"),
)
WHEN = (
    _c("wall_s", "float", "cell wall time", "s"),
    _c("started_at", "float", "when the cell started", "unix s"),
    _c("finished_at", "float", "when the cell finished", "unix s"),
    _c("cpu_allocator_tuned", "bool", "glibc's allocator was tuned in the measuring process"),
)
DERIVED = (  # computed over the whole table by results.tidy
    _c("concurrent", "bool", "another cell or a training ran on the same host meanwhile"),
    _c(
        "variance_reduction",
        "float",
        "the baseline's gap_variance over this cell's",
        help="full-mc's gap_variance over this cell's at equal trials",
    ),
    _c(
        "flip_rate_vs_full_mc",
        "float",
        "flip_rate over full-mc's at the same NFE per sample",
        help="flip rate over full-mc's at the same NFE per sample (below 1: steadier)",
    ),
)
COLUMNS: tuple[Column, ...] = (
    IDENTITY + MODEL + PRETRAINED + BATCHING + QUALITY + SPEED + OUTCOME + PROVENANCE + WHEN + DERIVED
)
BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
PREFIXES = tuple(f.name.rstrip("*") for f in FAMILIES)

#: The columns the report shows by default, in order ("run" is the report's own: the run folder's name).
KEY_COLUMNS = (
    "run",
    "kind",
    "dataset_label",
    "denoiser_label",
    "estimator_label",
    "trials",
    "device",
    "scenario",
    "dtype",
    "compile",
    "status",
    "accuracy",
    "accuracy_ci_low",
    "accuracy_ci_high",
    "nfe_per_sample",
    "samples_per_s",
    "efficiency",
    "latency_p50_ms",
    "latency_p90_ms",
    "flip_rate",
    "flip_rate_vs_full_mc",
    "gap_variance",
    "variance_reduction",
    "ece",
    "nll",
    "peak_memory_mb",
    "wall_s",
    "error",
)
#: The report's tooltip per column, where it has one.
HELP: dict[str, str] = {c.name: c.help for c in COLUMNS if c.help}


class UndeclaredColumn(KeyError):
    """A row part names a column this module does not declare: declare it (and list it in README.md)."""


def declared(name: str) -> bool:
    """Whether ``name`` is a declared column or in a declared family."""
    return name in BY_NAME or name.startswith(PREFIXES)


def param_columns(prefix: str, params: dict[str, Any]) -> dict[str, Any]:
    """A plugin's params as its ``p_<prefix>_*`` family (lists and tables as text)."""
    return {f"p_{prefix}_{k}": (str(v) if isinstance(v, (list, tuple, dict)) else v) for k, v in params.items()}


def row(*parts: Mapping[str, Any]) -> dict[str, Any]:
    """One results row: ``parts`` merged in order (a later part's value wins, in the place the column first took).

    Raises ``UndeclaredColumn`` on a column that is not declared.
    """
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    unknown = [name for name in merged if not declared(name)]
    if unknown:
        raise UndeclaredColumn(f"undeclared results column(s) {unknown}: declare them in diffbench/columns.py")
    return merged


def derived(name: str) -> str:
    """``name`` of a column ``results.tidy`` computes, checked to be declared as derived."""
    if name not in {c.name for c in DERIVED}:
        raise UndeclaredColumn(f"'{name}' is not a declared derived column of diffbench/columns.py")
    return name
