"""The error bank: denoising errors computed once per run and model, and read by every cell that draws them.

In ``--errors bank`` mode every error an estimator asks of ``diffbench.montecarlo.class_errors`` is looked up
here first, by the exact content of what it is: the clean sample's bits, the timestep and the noise's
bits (a 64-bit hash of the three, ``draw_key``), and the class. Only the missing (draw, class) pairs reach
the network; the rest are read back. A hit is therefore the error of the same computation, never an
approximation, whatever estimator, budget or variant drew it. Each entry holds every loss of
``montecarlo.LOSSES`` from the same prediction, so a cell with another loss costs nothing new. Weights
(``weighting``, importance weights) are applied after the lookup, as in live mode.

The design of draws (``diffbench.draws``) makes cells draw the same (t, eps) for the same sample wherever
their estimators allow it; this module only remembers. One ``ErrorBank`` per model and numerics (weights,
schedule, prediction type, device, dtype, compile: ``bank_key``) lives in each process; with a cache
folder its new entries are written as shards (``.npz``, no pickle) after every cell, and read back by a
later run or another worker, so a killed run keeps what it computed.

Cost: ``model.nfe`` still counts every row an estimator asked for (the NFE it needs live), while
``model.evaluated`` counts the rows the network really ran; the cell's ``live_nfe`` and ``computed_nfe``
columns are their totals over the quality passes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from diffbench.atomic import replace_atomically
from diffbench.draws import GOLDEN, mix64, row_hash
from diffbench.model import ConditionalModel
from diffbench.montecarlo import LOSSES, pointwise_loss

MODES = ("bank", "live")
SHARDS_BEFORE_MERGE = 64  # a bank folder with more shards has its small ones merged when first opened
SHARD_BYTES = 32 * 2**20  # the values of one shard: about what a bank with a folder holds in memory


def draw_key(sample_hashes: torch.Tensor, t: torch.Tensor, noise_hashes: torch.Tensor) -> torch.Tensor:
    """int64 key of each (sample, timestep, noise) draw; all three int64 tensors of one shape."""
    return mix64(mix64(sample_hashes + (t.long() + 1) * GOLDEN) ^ noise_hashes)


class ErrorBank:
    """Per-loss errors ``[K, L]`` of each draw, by draw key: NaN where a class was never evaluated.

    Without a folder everything is in memory. With one, memory stays within about one shard whatever
    the bank holds: the rows in memory (``index``, ``values``: those written since the last shard and
    those read back) are written as a shard of ``folder`` once they reach ``shard_rows`` new rows and
    dropped once they reach ``shard_rows`` in all; what is on disk is known by its keys alone
    (``disk_keys``, 16 bytes a draw), and a key found there has its row read back from its shard (the
    last shard read is kept).
    """

    def __init__(self, num_classes: int, folder: Path | None = None, shard_bytes: int = SHARD_BYTES) -> None:
        self.num_classes, self.folder = num_classes, folder
        self.shard_rows = max(1024, shard_bytes // (num_classes * len(LOSSES) * 8))
        self.written = 0
        self.seen: set[str] = set()  # the shards read (or written) by this process
        self.shards: list[Path] = []  # every shard known, in the order they win (a later one over an earlier)
        self.disk_keys = np.empty(0, dtype=np.int64)  # every key on disk, sorted ...
        self.disk_where = np.empty(0, dtype=np.int64)  # ... with (shard number << 32) | row in that shard
        self.cached: tuple[int, np.ndarray] | None = None  # the last shard whose values were read
        self._evict()
        if folder is not None and folder.is_dir():
            self.load()

    def _evict(self) -> None:
        """Drop every row from memory (after ``flush``: nothing unwritten is lost).

        With a folder the rows' room is one shard, allocated once and untouched (so not resident) until rows
        fill it: no doubling, no copy as it fills. Without one it starts small and doubles.
        """
        self.index = pd.Index(np.empty(0, dtype=np.int64))
        rows = 1024 if self.folder is None else self.shard_rows + 1024
        self.values = torch.empty((rows, self.num_classes, len(LOSSES)), dtype=torch.float64)
        self.dirty = torch.zeros(rows, dtype=torch.bool)  # rows changed since the last shard

    def __len__(self) -> int:
        """How many draws the bank holds (in memory or on disk)."""
        hot = self.index.to_numpy()
        return len(self.disk_keys) + int((~np.isin(hot, self.disk_keys)).sum())

    def rows(self, keys: torch.Tensor) -> torch.Tensor:
        """Row of each key (int64 ``[M]`` on the CPU) in ``values``: read back from disk where it is there,
        else a new row of NaN. Rows stay valid until the next call."""
        flat = keys.cpu().numpy()
        if self.folder is not None and len(self.index) >= self.shard_rows:
            self.flush()
            self._evict()
        found = self.index.get_indexer(flat)
        new = found < 0
        if new.any():
            fresh = pd.unique(flat[new])
            start = len(self.index)
            self._grow(start + len(fresh))
            self.values[start : start + len(fresh)] = math.nan  # touched (made resident) only as rows are used
            self.index = self.index.append(pd.Index(fresh))
            self._read_back(fresh, start)
            found[new] = start + pd.Index(fresh).get_indexer(flat[new])
        return torch.from_numpy(found)

    def _grow(self, size: int) -> None:
        capacity = self.values.shape[0]
        if size > capacity:
            doubled = 2 * capacity if self.folder is None else min(2 * capacity, self.shard_rows)
            bigger = torch.empty((max(size, doubled), *self.values.shape[1:]), dtype=self.values.dtype)
            bigger[:capacity] = self.values
            self.values = bigger
            dirty = torch.zeros(bigger.shape[0], dtype=torch.bool)
            dirty[:capacity] = self.dirty
            self.dirty = dirty

    def _read_back(self, fresh: np.ndarray, start: int) -> None:
        """Fill the rows ``start ...`` of the keys ``fresh`` found on disk with their values there."""
        if not len(self.disk_keys):
            return
        at = np.searchsorted(self.disk_keys, fresh).clip(max=len(self.disk_keys) - 1)
        hit = np.flatnonzero(self.disk_keys[at] == fresh)
        where = self.disk_where[at[hit]]
        shard, row = where >> 32, where & 0xFFFFFFFF
        for number in np.unique(shard):
            values = self._shard_values(int(number))
            if values is None:  # a shard removed or torn since it was listed: those errors are computed again
                continue
            mine = shard == number
            target = torch.from_numpy(start + hit[mine])
            self.values[target] = torch.from_numpy(values[row[mine]]).to(self.values.dtype)

    def _shard_values(self, number: int) -> np.ndarray | None:
        if self.cached is None or self.cached[0] != number:
            self.cached = None  # the last shard is dropped before the next is read
            try:
                with np.load(self.shards[number], allow_pickle=False) as data:
                    self.cached = (number, data["values"])
            except Exception:
                return None
        return self.cached[1]

    def store(self, rows: torch.Tensor, classes: torch.Tensor, losses: torch.Tensor) -> None:
        """Write ``losses [n, L]`` for the (row, class) pairs ``rows [n]``, ``classes [n]``; with a folder a
        shard is written whenever ``shard_rows`` rows are new."""
        self.values[rows, classes] = losses.detach().to("cpu", self.values.dtype)
        self.dirty[rows] = True
        if self.folder is not None and int(self.dirty.sum()) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        """Write the rows changed since the last shard into a new shard of ``folder`` (no-op without one)."""
        if self.folder is None or not bool(self.dirty.any()):
            return
        rows = self.dirty[: len(self.index)].nonzero().squeeze(1)
        if len(rows) == len(self.index):  # every row in memory is new (the usual case): a view, not a copy
            keys, values = self.index.to_numpy(), self.values[: len(rows)].numpy()
        else:
            keys, values = self.index.to_numpy()[rows.numpy()], self.values[rows].numpy()
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"shard-{os.getpid()}-{self.written:05d}-{hashlib.sha1(keys.tobytes()).hexdigest()[:8]}.npz"
        replace_atomically(self.folder / name, lambda tmp: _save(tmp, keys, values))
        self.seen.add(name)
        self.written += 1
        self.dirty[:] = False
        self._know(self.folder / name, keys)

    def _know(self, shard: Path, keys: np.ndarray) -> None:
        """Add a shard's keys to what is known on disk (its rows win over earlier shards')."""
        number = len(self.shards)
        self.shards.append(shard)
        keys = keys.astype(np.int64, copy=False)
        where = (np.int64(number) << 32) | np.arange(len(keys), dtype=np.int64)
        last = len(keys) - 1 - np.unique(keys[::-1], return_index=True)[1]  # each key's last row, sorted by key
        keys, where = keys[last], where[last]
        # merged into the sorted index without sorting it again: a key already known moves to this shard,
        # the others are inserted in place (one new copy of the index, not a sort's several)
        at = np.searchsorted(self.disk_keys, keys)
        known = at < len(self.disk_keys)
        known[known] = self.disk_keys[at[known]] == keys[known]
        self.disk_where[at[known]] = where[known]
        fresh = ~known
        self.disk_keys = np.insert(self.disk_keys, at[fresh], keys[fresh])
        self.disk_where = np.insert(self.disk_where, at[fresh], where[fresh])

    def load(self) -> None:
        """Learn the keys of every shard of ``folder`` not read yet (later shards win over earlier ones);
        first merge many small shards into fewer. Called again, it learns what other processes (a run's
        bank tasks) wrote since."""
        if not self.shards:
            self._compact()
        shards = sorted(_mtimes(self.folder).items(), key=lambda item: item[1])
        for shard, _ in shards:
            if shard.name in self.seen:
                continue
            self.seen.add(shard.name)
            keys = _shard_keys(shard, self.num_classes)
            if keys is not None:  # a torn or foreign file: its errors are simply computed again
                self._know(shard, keys)

    def _compact(self) -> None:
        """Merge the small shards of a folder holding more than SHARDS_BEFORE_MERGE into shards of about
        ``shard_rows`` rows, one at a time (memory: one shard)."""
        small = [s for s, _ in sorted(_mtimes(self.folder).items(), key=lambda item: item[1])]
        if len(small) <= SHARDS_BEFORE_MERGE:
            return
        group: list[tuple[Path, np.ndarray, np.ndarray]] = []
        for shard in [*small, None]:
            if shard is not None:
                try:
                    with np.load(shard, allow_pickle=False) as data:
                        keys, values = data["keys"], data["values"]
                except Exception:
                    continue
                if (
                    values.ndim != 3
                    or values.shape[1:] != (self.num_classes, len(LOSSES))
                    or len(keys) >= (self.shard_rows // 2)
                ):
                    continue
                group.append((shard, keys, values))
            if group and (shard is None or sum(len(k) for _, k, _ in group) >= self.shard_rows):
                keys = np.concatenate([k for _, k, _ in group])
                values = np.concatenate([v for _, _, v in group])
                last = len(keys) - 1 - np.unique(keys[::-1], return_index=True)[1]
                name = f"shard-{os.getpid()}-merged-{hashlib.sha1(keys.tobytes()).hexdigest()[:8]}.npz"
                replace_atomically(self.folder / name, lambda tmp: _save(tmp, keys[last], values[last]))  # noqa: B023
                for merged, _, _ in group:
                    merged.unlink(missing_ok=True)
                group = []

    def entries(self) -> tuple[np.ndarray, np.ndarray]:
        """Every key the bank holds and its values ``[n, K, L]`` (all of it in memory: what an export writes)."""
        self.flush()
        if self.folder is None:
            return self.index.to_numpy().astype(np.int64), self.values[: len(self.index)].numpy()
        values = np.full((len(self.disk_keys), self.num_classes, len(LOSSES)), math.nan)
        shard, row = self.disk_where >> 32, self.disk_where & 0xFFFFFFFF
        for number in np.unique(shard):
            read = self._shard_values(int(number))
            if read is not None:
                mine = np.flatnonzero(shard == number)
                values[mine] = read[row[mine]]
        self.cached = None
        return self.disk_keys.copy(), values


_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _shard_keys(shard: Path, num_classes: int) -> np.ndarray | None:
    """A shard's keys, checked against its values' header (not read), or None for a torn or foreign file."""
    try:
        with zipfile.ZipFile(shard) as archive:
            with archive.open("keys.npy") as f:
                keys = np.lib.format.read_array(f, allow_pickle=False)
            with archive.open("values.npy") as f:
                header = _HEADERS[np.lib.format.read_magic(f)]
                shape, _, _ = header(f)
    except Exception:
        return None
    if keys.ndim != 1 or len(shape) != 3 or shape != (len(keys), num_classes, len(LOSSES)):
        return None
    return keys.astype(np.int64)


def _mtimes(folder: Path) -> dict[Path, float]:
    """The shards of a bank folder with their modification times (a shard merged away meanwhile is left out)."""
    found = {}
    for shard in folder.glob("shard-*.npz") if folder.is_dir() else []:
        try:
            found[shard] = shard.stat().st_mtime
        except FileNotFoundError:
            continue
    return found


WRITE_PIECE_BYTES = 1 << 20  # a shard goes to disk in pieces of this size, straight from its arrays


def _save(path: str, keys: np.ndarray, values: np.ndarray) -> None:
    """``np.savez``'s file (an uncompressed zip of ``keys.npy`` and ``values.npy``) without its staging copies:
    numpy writes an array into a zip through 16 MiB buffers and a ``tobytes`` copy of each (32 MiB beside a
    32 MiB shard); here the arrays' own memory goes out in 1 MiB pieces."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in (("keys", keys), ("values", values)):
            array = np.ascontiguousarray(array)
            with archive.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
                raw = array.reshape(-1).view(np.uint8)
                for start in range(0, raw.size, WRITE_PIECE_BYTES):
                    f.write(raw[start : start + WRITE_PIECE_BYTES])


class BankScorer:
    """What ``class_errors`` calls in bank mode (``model.bank``): errors looked up, the missing ones computed.

    Counts the rows asked for (``requested``) and the rows evaluated (``computed``).
    """

    def __init__(self, bank: ErrorBank, key: str = "", t_grid: int = 0) -> None:
        self.bank, self.key = bank, key
        self.t_grid = t_grid  # the design's timestep grid (diffbench.draws.Design)
        self.losses = tuple(pointwise_loss(name) for name in LOSSES)
        self.requested = 0
        self.computed = 0

    def class_errors(
        self,
        model: ConditionalModel,
        x: torch.Tensor,
        t: torch.Tensor,
        eps: torch.Tensor,
        loss: str,
        classes: torch.Tensor | None,
    ) -> torch.Tensor:
        """Unweighted errors ``[B, R, K]`` as ``class_errors`` defines them (NaN outside ``classes``)."""
        B, R, K = x.shape[0], t.shape[1], model.num_classes
        shape, device = model.data_shape, x.device
        replay = getattr(model, "replay", None)
        hashes = replay.hashes if replay is not None and replay.rows == B else row_hash(x)
        independent = t.dim() == 3
        per_sample = R * K if independent else R
        sample = torch.arange(B, device=device).repeat_interleave(per_sample)
        t_m, eps_m = t.reshape(-1), eps.reshape(-1, *shape)
        keys = draw_key(hashes[sample], t_m, row_hash(eps_m))
        if independent:
            own = torch.arange(K, device=device).repeat(B * R)
            need = torch.nn.functional.one_hot(own, K).bool()
        elif classes is not None:
            need = classes.repeat_interleave(R, 0)
        else:
            need = torch.ones(B * R, K, dtype=torch.bool, device=device)
        values = self._filled(model, x, sample, t_m, eps_m, keys, need)[..., LOSSES.index(loss)]
        if independent:
            return values[torch.arange(values.shape[0], device=device), own].view(B, R, K)
        return values.masked_fill(~need, math.nan).view(B, R, K)

    def _filled(self, model, x, sample, t_m, eps_m, keys, need) -> torch.Tensor:
        """``[M, K, L]`` errors of the draws on the model's device: from the bank, the missing ones computed."""
        rows = self.bank.rows(keys)
        values = self.bank.values[rows].to(model.device)
        missing = need & values[..., 0].isnan()
        m, k = missing.nonzero(as_tuple=True)
        if m.numel():
            draws, at = m.unique(return_inverse=True)
            x_t = model.q_sample(x.index_select(0, sample[draws]), t_m[draws], eps_m.index_select(0, draws))
            fresh = model.eps_losses(x_t.index_select(0, at), t_m[m], k, eps_m.index_select(0, m), self.losses)
            self.bank.store(rows[m.cpu()], k.cpu(), fresh)
            values[m, k] = fresh.to(values.dtype)
        asked = int(need.sum())
        model.nfe += asked - m.numel()  # the model counted the evaluated rows; an estimator's NFE is every row asked
        self.requested += asked
        self.computed += m.numel()
        return values.to(model.dtype)


_OPEN: dict[tuple[str, Path | None], ErrorBank] = {}  # this process's banks, by key and folder


def open_bank(key: str, num_classes: int, cache_dir: Path | None) -> ErrorBank:
    """The process's bank for ``key`` in ``cache_dir`` (read from ``cache_dir/banks/key``: all of it the first
    time, then the shards written since).

    One bank with a folder is open at a time: opening another writes the open one's new rows to its folder
    and lets it go, so a run over many models holds one model's shard in memory, not one per model (a bank
    without a folder lives only in memory and is kept)."""
    folder = None if cache_dir is None else Path(cache_dir) / "banks" / key
    bank = _OPEN.get((key, folder))
    if bank is None:
        if folder is not None:
            for other_key, other in list(_OPEN.items()):
                if other.folder is not None:
                    other.flush()
                    del _OPEN[other_key]
        bank = _OPEN[key, folder] = ErrorBank(num_classes, folder)
    elif folder is not None:  # what other processes (the model's bank tasks) wrote since
        bank.load()
    return bank


def weights_digest(module: torch.nn.Module) -> str:
    """A hash of a module's parameters and buffers (names, shapes, dtypes and bits)."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(f"{name}|{list(tensor.shape)}|{tensor.dtype}".encode())
        h.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def bank_key(weights: str, model: ConditionalModel, numerics: str) -> str:
    """The bank's content key: the weights, the noise process, the prediction type, the classes, the numerics.

    A VP process is keyed by its alphas_cumprod alone (the keys of banks made before other processes
    existed); any other by its kind, sigma_data, a, s and model timesteps too.
    """
    h = hashlib.sha256()
    h.update(weights.encode())
    h.update(model.alphas_cumprod.detach().to("cpu", torch.float64).numpy().tobytes())
    process = getattr(model, "process", None)
    if process is not None and process.kind != "vp":
        h.update(process.digest_bytes())
    h.update(f"{model.prediction_type}|{model.num_classes}|{list(model.data_shape)}|{numerics}".encode())
    h.update(f"torch={torch.__version__}|losses={','.join(LOSSES)}".encode())
    return h.hexdigest()[:20]


ACCOUNT_FILE = "errors.json"
ACCOUNT_KEY = ("dataset_label", "denoiser_label", "seed", "device", "dtype", "compile")


def accounting(frame: pd.DataFrame, filled: pd.DataFrame | None = None) -> list[dict]:
    """Per model and numerics: the errors mode, its bank, and the quality passes' rows asked for and really run.

    ``live_nfe`` is what the same cells evaluate with ``--errors live``; ``computed_nfe`` what this run
    evaluated: the cells' own rows plus, where bank tasks ran (``diffbench.bank_tasks``), the rows those
    computed for them (``filled``: ``cell_id``, ``computed_nfe``), also given alone as ``bank_task_nfe``.
    One row per cell is counted (a cell's scenarios share its quality passes).
    """
    if frame.empty or "live_nfe" not in frame:
        return []
    cells = frame[frame["status"] == "ok"].drop_duplicates("cell_id")
    cells = cells[cells["live_nfe"].notna()]
    tasks = pd.Series(0, index=cells["cell_id"], dtype="int64")
    if filled is not None and not filled.empty:
        tasks = filled.groupby("cell_id")["computed_nfe"].sum().reindex(cells["cell_id"], fill_value=0)
    cells = cells.assign(bank_task_nfe=tasks.to_numpy())
    out = []
    for key, part in cells.groupby([k for k in ACCOUNT_KEY if k in cells], sort=False, dropna=False):
        live, by_tasks = int(part["live_nfe"].sum()), int(part["bank_task_nfe"].sum())
        computed = int(part["computed_nfe"].sum()) + by_tasks
        sources = sorted(set(part["errors_source"].dropna()))
        banks = sorted(set(part.get("errors_bank", pd.Series(dtype=str)).dropna()) - {""})
        entry = dict(zip([k for k in ACCOUNT_KEY if k in cells], key, strict=True))
        entry.update(errors_source=sources, banks=banks, cells=len(part), live_nfe=live, computed_nfe=computed)
        if by_tasks:
            entry["bank_task_nfe"] = by_tasks
        entry["computed_share"] = computed / live if live else None
        out.append({k: (v.item() if hasattr(v, "item") else v) for k, v in entry.items()})
    return out


TASK_PART = "bank"  # the part kind (``RunFolder.save_part``) of a bank task's rows (``diffbench.bank_tasks``)
BANK_PARTS = f"parts/*.{TASK_PART}.parquet"


def filled_rows(folder: Path) -> pd.DataFrame | None:
    """The rows the run's bank tasks computed, per cell (None where none ran)."""
    parts = sorted(Path(folder).glob(BANK_PARTS))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else None


def write_accounting(frame: pd.DataFrame, folder: Path) -> str | None:
    """Write ``errors.json`` into the run folder; the summary line to print (None without quality rows)."""
    models = accounting(frame, filled_rows(folder))
    if not models:
        return None
    replace_atomically(Path(folder) / ACCOUNT_FILE, lambda tmp: Path(tmp).write_text(json.dumps(models, indent=2)))
    live = sum(m["live_nfe"] for m in models)
    computed = sum(m["computed_nfe"] for m in models)
    share = f" ({computed / live:.0%})" if live else ""
    return f"errors: {computed:,} denoiser rows computed for {live:,} asked by the quality passes{share}"
