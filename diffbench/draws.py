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
- stratified uniforms: for stratum ``r`` of ``R``, the next slot whose ``U_j`` lies in it;
- plain uniforms: the next slots' ``U_j``;
- noise: the noise of the slots whose timesteps (or uniforms) were just drawn, when its shape matches
  them (so a trial's t and eps come from one slot), else the next slots' noise.

Each request starts after every slot an earlier request of the call examined, so no draw of a pass is
used twice and every draw keeps its distribution. Cells with the same trials prefix, windows that
overlap and estimators built from the same helpers thus draw the same (t, eps) for the same sample, and
the error bank computes those errors once. A call whose row count is not the batch's (a subset of the
samples) draws from its generator as in live mode.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import torch

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


GOLDEN = _signed(0x9E3779B97F4A7C15)  # splitmix64's increment
_M1, _M2 = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)
_UNIFORM_TAG, _NOISE_TAG = _signed(0x5D6E1F0A3B2C4D5E), _signed(0x1A2B3C4D5E6F7081)
MAX_SCAN = 1 << 24  # slots a rejection request may examine per sample before it gives up
BLOCK_ELEMENTS = 1 << 23  # most int64 elements one noise block builds at a time (64 MiB)


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
    flat = rows.detach().reshape(n, -1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    words = flat.contiguous().view(_WORD[flat.element_size()]).to(torch.int64)
    size = words.shape[1]
    position = mix64(torch.arange(size, device=words.device, dtype=torch.int64) * GOLDEN + 7) | 1
    total = (words * position).sum(1) if size else torch.zeros(n, dtype=torch.int64, device=words.device)
    return mix64(total + _signed(size * GOLDEN))


def stream_keys(sample_hashes: torch.Tensor, seed: int, stream: str) -> torch.Tensor:
    """int64 ``[B]``: the key of each sample's stream of draws."""
    return mix64(mix64(sample_hashes ^ text_key(f"seed={seed}")) ^ text_key(f"stream={stream}"))


def uniforms(keys: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``U`` float64 ``[B, S]`` of the streams ``keys [B]`` at ``slots [B, S]``."""
    base = mix64(keys ^ _UNIFORM_TAG).unsqueeze(1)
    return to_unit(mix64(base + slots * GOLDEN))


def normals(keys: torch.Tensor, slots: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Noise ``[B, S, *shape]`` in ``dtype`` of the streams ``keys [B]`` at ``slots [B, S]`` (Box-Muller, float64)."""
    size = math.prod(shape)
    B, S = slots.shape
    out = torch.empty((B, S, size), dtype=dtype, device=slots.device)
    element = torch.arange(size, device=slots.device, dtype=torch.int64) * _signed(2 * GOLDEN)
    base = mix64(mix64(keys ^ _NOISE_TAG).unsqueeze(1) + slots * GOLDEN)  # [B, S]
    step = max(1, BLOCK_ELEMENTS // max(1, S * size))
    for start in range(0, B, step):
        counters = base[start : start + step].unsqueeze(2) + element  # [b, S, size]
        radius = torch.sqrt(-2.0 * torch.log1p(-to_unit(mix64(counters))))
        angle = (2 * math.pi) * to_unit(mix64(counters + GOLDEN))
        out[start : start + step] = radius * torch.cos(angle)
    return out.view(B, S, *shape)


class Replay:
    """One estimator call's design draws: its batch's samples, the stream, where each sample's next draw starts.

    Set on the model (``model.replay``) around ``estimator.errors`` (or ``fit``) by the quality passes in
    bank mode; the helpers of ``diffbench.montecarlo`` ask it for draws when their row count is the batch's.
    """

    def __init__(self, x: torch.Tensor, seed: int, stream: str, sample_hashes: torch.Tensor | None = None) -> None:
        self.rows = x.shape[0]
        self.hashes = row_hash(x) if sample_hashes is None else sample_hashes
        self.keys = stream_keys(self.hashes, seed, stream)
        self.device = x.device
        self.cursor = torch.zeros(self.rows, dtype=torch.long, device=x.device)  # first slot not yet examined
        self.pending: list[torch.Tensor] = []  # slots of the timesteps/uniforms drawn since the last noise

    def covers(self, rows: int) -> bool:
        """Whether a request for ``rows`` rows is for this call's batch (one row per sample, in order)."""
        return rows == self.rows

    def _after(self, slots: torch.Tensor) -> torch.Tensor:
        self.cursor = slots.max(1).values + 1 if slots.shape[1] else self.cursor
        self.pending.append(slots)
        return slots

    def next_slots(self, count: int) -> torch.Tensor:
        """The next ``count`` slots of every sample ``[B, count]``."""
        slots = self.cursor.unsqueeze(1) + torch.arange(count, device=self.device)
        return self._after(slots)

    def slots_where(self, count: int, accept: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``[B, count]``: each sample's next ``count`` slots whose uniform passes ``accept(U) -> bool``."""
        found = torch.full((self.rows, count), -1, dtype=torch.long, device=self.device)
        have = torch.zeros(self.rows, dtype=torch.long, device=self.device)
        start, block = self.cursor.clone(), max(64, 4 * count)
        while count and bool((have < count).any()):
            rows = (have < count).nonzero().squeeze(1)
            if int((start[rows] - self.cursor[rows]).max()) > MAX_SCAN:
                raise ValueError(f"no draw of the design fell in the requested range after {MAX_SCAN} slots")
            slots = start[rows].unsqueeze(1) + torch.arange(block, device=self.device)
            ok = accept(uniforms(self.keys[rows], slots))
            rank = ok.long().cumsum(1) - 1 + have[rows].unsqueeze(1)
            take = ok & (rank < count)
            r, s = take.nonzero(as_tuple=True)
            found[rows[r], rank[r, s]] = slots[r, s]
            have[rows] += take.sum(1)
            start[rows] += block
            block = min(block * 2, 1 << 16)
        return self._after(found)

    def strata_slots(self, strata: int) -> torch.Tensor:
        """``[B, strata]``: for stratum r, the next slot whose uniform is in [r / strata, (r + 1) / strata)."""
        far = torch.iinfo(torch.long).max
        found = torch.full((self.rows, strata), far, dtype=torch.long, device=self.device)
        start, block = self.cursor.clone(), max(64, 4 * strata)
        while strata and bool((found == far).any()):
            rows = (found == far).any(1).nonzero().squeeze(1)
            if int((start[rows] - self.cursor[rows]).max()) > MAX_SCAN:
                raise ValueError(f"the design did not fill {strata} strata within {MAX_SCAN} slots")
            slots = start[rows].unsqueeze(1) + torch.arange(block, device=self.device)
            stratum = (uniforms(self.keys[rows], slots) * strata).floor().long().clamp_(max=strata - 1)
            first = torch.full((rows.numel(), strata), far, dtype=torch.long, device=self.device)
            first.scatter_reduce_(1, stratum, slots, reduce="amin")
            found[rows] = torch.minimum(found[rows], first)
            start[rows] += block
            block = min(block * 2, 1 << 16)
        return self._after(found)

    def uniform_at(self, slots: torch.Tensor) -> torch.Tensor:
        """``U`` float64 at ``slots [B, S]``."""
        return uniforms(self.keys, slots)

    def noise(self, dims: tuple[int, ...], shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Noise ``[*dims, *shape]``: at the slots just drawn when they match ``dims``, else at the next slots."""
        count = math.prod(dims[1:])
        pending = torch.cat(self.pending, dim=1) if self.pending else None
        self.pending = []
        slots = pending if pending is not None and pending.shape[1] == count else None
        if slots is None:
            slots = self.next_slots(count)
            self.pending = []
        return normals(self.keys, slots, shape, dtype).view(*dims, *shape)
