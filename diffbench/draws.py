"""The design of draws: every sample's timesteps and noise as a pure function of (seed, sample, stream, slot).

In ``--errors bank`` mode (``diffbench.bank``) an estimator's random draws do not come from the cell's
``torch.Generator`` but from a design that every cell of a run shares. For each sample, identified by a
hash of its exact values, and each *stream* (one per quality pass: ``test``, ``calibration``, ``fit``,
``repeat-1`` ...), slot ``j = 0, 1, ...`` holds a uniform ``U_j`` in [0, 1) and a standard normal noise
``eps_j`` shaped like the sample, computed by a counter-based generator (splitmix64) from
(seed, sample hash, stream, j): the same on every executor and in every process.

The helpers of ``diffbench.montecarlo`` take their draws from the design while a ``Replay`` is set on the
model (one per estimator call, for the call's batch of samples):

- uniform timesteps over ``[low, high)``: the next slots whose ``t_j = floor(U_j T)`` falls in the window
  (rejection: exactly uniform on the window; every window draws from the same slots);
- timesteps from a distribution ``p`` over [0, T): the next slots kept by thinning, ``V_j < p(t_j) / max p``
  with a second uniform ``V_j`` (exactly distributed as ``p``, and on the same slots as the uniform draws);
- stratified uniforms: for stratum ``r`` of ``R``, the next slot whose ``U_j`` lies in it;
- plain uniforms: the next slots' ``U_j``;
- noise: for draws whose timestep is known, the noise of (t, e), e counting the call's earlier draws at
  the same t (so every cell that visits timestep t of a sample gets the same noise there, and no two
  draws of a call share one); for draws of plain uniforms, the noise of their slots; else the next
  slots' noise.

With ``t_grid = N`` (``Design``) timesteps lie on Li et al.'s evenly spaced grid of N, and the bank holds at
most N x E x K errors per sample and stream, E the most draws any call makes at one grid point.

Each request starts after every slot an earlier request of the call examined, so no draw of a pass is
used twice and every draw keeps its distribution: within a call, draws at distinct (t, e) are
independent. Cells with the same trials prefix, windows that overlap and estimators built from the same
helpers thus draw the same (t, eps) for the same sample, and the error bank computes those errors once.
A call whose row count is not the batch's (a subset of the samples) draws from its generator as in live
mode.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


GOLDEN = _signed(0x9E3779B97F4A7C15)  # splitmix64's increment
_M1, _M2 = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)
_UNIFORM_TAG, _NOISE_TAG = _signed(0x5D6E1F0A3B2C4D5E), _signed(0x1A2B3C4D5E6F7081)
_TIMESTEP_NOISE_TAG = _signed(0x6C1F2E3D4A5B6978)  # noise keyed by (t, occurrence) instead of by slot
_THINNING_TAG = _signed(0x2F4E6D8C0B1A3957)  # a slot's second uniform V_j, for thinning (non-uniform timesteps)
OCCURRENCE_BITS = 32  # a (t, e) noise's counter is t * 2^32 + e
MAX_SCAN = 1 << 24  # slots a rejection request may examine per sample before it gives up
BLOCK_ELEMENTS = 1 << 18  # most int64 elements one noise block builds at a time (2 MiB; faster than larger)


def _lsr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's output function on int64 tensors (wrapping arithmetic): a bijection that scrambles every bit."""
    z = (z ^ _lsr(z, 30)) * _M1
    z = (z ^ _lsr(z, 27)) * _M2
    return z ^ _lsr(z, 31)


def to_unit(z: torch.Tensor) -> torch.Tensor:
    """Uniform float64 in [0, 1) from the top 53 bits of int64 ``z``."""
    return _lsr(z, 11).double() * 2.0**-53


def text_key(text: str) -> int:
    """A signed 64-bit key of a string (a stream's name, a seed)."""
    return _signed(int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little"))


_WORD = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


def row_hash(rows: torch.Tensor) -> torch.Tensor:
    """int64 ``[N]``: a hash of each row's exact bits (rows ``[N, ...]``), on the rows' device.

    Each element's bits times a fixed odd multiplier per position, summed with wrapping arithmetic
    (exact and order-free), then mixed: equal rows give equal hashes on any batch, and distinct rows
    collide with chance about 2^-64.
    """
    n = rows.shape[0]
    flat = rows.detach().reshape(n, math.prod(rows.shape[1:]))  # n = 0 (no held-out data) too
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    words = flat.contiguous().view(_WORD[flat.element_size()])
    size = words.shape[1]
    position = mix64(torch.arange(size, device=words.device, dtype=torch.int64) * GOLDEN + 7) | 1
    total = torch.zeros(n, dtype=torch.int64, device=words.device)
    step = max(1, BLOCK_ELEMENTS // max(1, size))  # int64 temporaries of a block of rows, not of all of them
    for start in range(0, n if size else 0, step):
        total[start : start + step] = (words[start : start + step].to(torch.int64) * position).sum(1)
    return mix64(total + _signed(size * GOLDEN))


def stream_keys(sample_hashes: torch.Tensor, seed: int, stream: str) -> torch.Tensor:
    """int64 ``[B]``: the key of each sample's stream of draws."""
    return mix64(mix64(sample_hashes ^ text_key(f"seed={seed}")) ^ text_key(f"stream={stream}"))


def uniforms(keys: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``U`` float64 ``[B, S]`` of the streams ``keys [B]`` at ``slots [B, S]``."""
    base = mix64(keys ^ _UNIFORM_TAG).unsqueeze(1)
    return to_unit(mix64(base + slots * GOLDEN))


def normals(keys: torch.Tensor, slots: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Noise ``[B, S, *shape]`` in ``dtype`` of the streams ``keys [B]`` at ``slots [B, S]`` (Box-Muller, float64).

    Built ``BLOCK_ELEMENTS`` at a time (whole draws of ``shape``), so the float64 and int64 temporaries stay a
    few times 2 MiB whatever ``B x S``.
    """
    size = math.prod(shape)
    B, S = slots.shape
    out = torch.empty((B * S, size), dtype=dtype, device=slots.device)
    element = torch.arange(size, device=slots.device, dtype=torch.int64) * _signed(2 * GOLDEN)
    base = mix64(mix64(keys ^ _NOISE_TAG).unsqueeze(1) + slots * GOLDEN).reshape(-1)  # [B * S]
    step = max(1, BLOCK_ELEMENTS // max(1, size))
    for start in range(0, B * S, step):
        counters = base[start : start + step].unsqueeze(1) + element  # [draws, size]
        radius = torch.sqrt(-2.0 * torch.log1p(-to_unit(mix64(counters))))
        angle = (2 * math.pi) * to_unit(mix64(counters + GOLDEN))
        out[start : start + step] = radius * torch.cos(angle)
    return out.view(B, S, *shape)


@dataclass(frozen=True)
class Design:
    """What a run's draws are a function of: the seed, and the timestep grid (``t_grid``; 0: all T).

    With ``t_grid = N`` every timestep drawn through ``draw_timesteps`` lies on Li et al.'s evenly spaced
    grid of N timesteps (uniform over the grid points of the requested window): the bank then holds at
    most N x (occurrences) x K errors per sample and stream, whatever the grid of cells asks.
    """

    seed: int
    t_grid: int = 0


def occurrences(t: torch.Tensor, before: torch.Tensor | None = None) -> torch.Tensor:
    """``e [B, S]``: how many times each ``t[b, j]`` occurred earlier in its row (``before`` first, then ``t``)."""
    full = t if before is None else torch.cat([before, t], dim=1)
    order = torch.sort(full, dim=1, stable=True)
    position = torch.arange(full.shape[1], device=t.device).expand_as(full)
    starts = torch.ones_like(full, dtype=torch.bool)
    starts[:, 1:] = order.values[:, 1:] != order.values[:, :-1]
    run_start = torch.where(starts, position, torch.zeros_like(position)).cummax(1).values
    rank = torch.empty_like(full)
    rank.scatter_(1, order.indices, position - run_start)
    return rank[:, full.shape[1] - t.shape[1] :]


class Replay:
    """One estimator call's design draws: its batch's samples, the stream, where each sample's next draw starts.

    Set on the model (``model.replay``) around ``estimator.errors`` (or ``fit``) by the quality passes in
    bank mode; the helpers of ``diffbench.montecarlo`` ask it for draws when their row count is the batch's.
    A draw whose timestep is known (``draw_timesteps``, or ``draw_noise(timesteps=...)``) gets the noise of
    (t, e), e the number of earlier draws of the call at the same t, so any two cells that visit the same
    timestep of a sample share its noise; other draws get the noise of their slot.
    """

    def __init__(
        self,
        x: torch.Tensor,
        seed: int | Design,
        stream: str,
        sample_hashes: torch.Tensor | None = None,
    ) -> None:
        self.design = seed if isinstance(seed, Design) else Design(seed)
        self.rows = x.shape[0]
        self.hashes = row_hash(x) if sample_hashes is None else sample_hashes
        self.keys = stream_keys(self.hashes, self.design.seed, stream)
        self.device = x.device
        self.cursor = torch.zeros(self.rows, dtype=torch.long, device=x.device)  # first slot not yet examined
        self.pending: list[tuple[torch.Tensor, torch.Tensor | None]] = []  # (slots, their t) since the last noise
        self.noised_t = torch.zeros((self.rows, 0), dtype=torch.long, device=x.device)  # t of every t-keyed noise

    def covers(self, rows: int) -> bool:
        """Whether a request for ``rows`` rows is for this call's batch (one row per sample, in order)."""
        return rows == self.rows

    def _after(self, slots: torch.Tensor) -> torch.Tensor:
        self.cursor = slots.max(1).values + 1 if slots.shape[1] else self.cursor
        self.pending.append((slots, None))
        return slots

    def drew_timesteps(self, t: torch.Tensor) -> None:
        """Record the timesteps ``t [B, S]`` made from the slots just drawn (their noise is then keyed by t)."""
        slots, _ = self.pending[-1]
        self.pending[-1] = (slots, t)

    def next_slots(self, count: int) -> torch.Tensor:
        """The next ``count`` slots of every sample ``[B, count]``."""
        slots = self.cursor.unsqueeze(1) + torch.arange(count, device=self.device)
        return self._after(slots)

    def _scan(self, wanted: int, pick: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        """Examine each unfinished sample's next slots in growing blocks: ``pick(rows, slots, U)`` records
        what it takes and returns which of ``rows`` are done."""
        start, block = self.cursor.clone(), max(64, 4 * wanted)
        rows = torch.arange(self.rows, device=self.device)
        while wanted and rows.numel():
            if int((start[rows] - self.cursor[rows]).max()) > MAX_SCAN:
                raise ValueError(f"no draw of the design fell in the requested range after {MAX_SCAN} slots")
            slots = start[rows].unsqueeze(1) + torch.arange(block, device=self.device)
            done = pick(rows, slots, uniforms(self.keys[rows], slots))
            start[rows] += block
            rows = rows[~done]
            block = min(block * 2, 1 << 16)

    def slots_where(self, count: int, accept: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``[B, count]``: each sample's next ``count`` slots whose uniform passes ``accept(U)``.

        ``accept`` returns a bool per slot, or a probability of keeping it (floating point): slot j is then
        kept when its second uniform ``V_j`` (independent of ``U_j``) is below it. Thinning a uniform
        timestep by ``p(t) / max p`` keeps slots whose timesteps are exactly distributed as ``p``.
        """
        found = torch.full((self.rows, count), -1, dtype=torch.long, device=self.device)
        have = torch.zeros(self.rows, dtype=torch.long, device=self.device)

        def pick(rows: torch.Tensor, slots: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            ok = accept(u)
            if ok.is_floating_point():
                ok = uniforms(self.keys[rows] ^ _THINNING_TAG, slots) < ok
            rank = ok.long().cumsum(1) - 1 + have[rows].unsqueeze(1)
            take = ok & (rank < count)
            r, s = take.nonzero(as_tuple=True)
            found[rows[r], rank[r, s]] = slots[r, s]
            have[rows] += take.sum(1)
            return have[rows] >= count

        self._scan(count, pick)
        return self._after(found)

    def strata_slots(self, strata: int) -> torch.Tensor:
        """``[B, strata]``: for stratum r, the next slot whose uniform is in [r / strata, (r + 1) / strata)."""
        far = torch.iinfo(torch.long).max
        found = torch.full((self.rows, strata), far, dtype=torch.long, device=self.device)

        def pick(rows: torch.Tensor, slots: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            stratum = (u * strata).floor().long().clamp_(max=strata - 1)
            first = torch.full((rows.numel(), strata), far, dtype=torch.long, device=self.device)
            first.scatter_reduce_(1, stratum, slots, reduce="amin")
            found[rows] = torch.minimum(found[rows], first)
            return (found[rows] != far).all(1)

        self._scan(strata, pick)
        return self._after(found)

    def uniform_at(self, slots: torch.Tensor) -> torch.Tensor:
        """``U`` float64 at ``slots [B, S]``."""
        return uniforms(self.keys, slots)

    def noise(
        self,
        dims: tuple[int, ...],
        shape: tuple[int, ...],
        dtype: torch.dtype,
        timesteps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Noise ``[*dims, *shape]``: of (t, e) for known timesteps, else at the slots just drawn when they
        match ``dims``, else at the next slots. ``timesteps`` (shaped ``dims``) names the draws' t."""
        count = math.prod(dims[1:])
        pending, self.pending = self.pending, []
        if timesteps is None and pending and sum(s.shape[1] for s, _ in pending) == count:
            if all(t is not None for _, t in pending):
                timesteps = torch.cat([t for _, t in pending], dim=1)
            else:
                slots = torch.cat([s for s, _ in pending], dim=1)
                return normals(self.keys, slots, shape, dtype).view(*dims, *shape)
        if timesteps is None:
            slots = self.next_slots(count)
            self.pending = []
            return normals(self.keys, slots, shape, dtype).view(*dims, *shape)
        t = timesteps.reshape(self.rows, count).long()
        e = occurrences(t, self.noised_t)
        self.noised_t = torch.cat([self.noised_t, t], dim=1)
        counters = t * (1 << OCCURRENCE_BITS) + e
        return normals(self.keys ^ _TIMESTEP_NOISE_TAG, counters, shape, dtype).view(*dims, *shape)
