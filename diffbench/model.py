"""ConditionalModel: what an estimator sees of a trained class-conditional denoiser."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from diffbench.contract import check_module_output, non_finite_output
from diffbench.noise_process import NoiseProcess, as_process
from diffbench.parameterisation import ToEpsilon, needs_conversion
from diffbench.schedule import NoiseSchedule

DEFAULT_MAX_BATCH = 8192
GATHERED_PREDICTIONS = 2**21  # eps_error keeps up to this many predicted elements (8 MiB) for one loss at the end
MV_MEAN_MAX_SIZE = 4  # rows this small average faster (and for 2 and 4, bit-identically) as a matrix-vector product

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def squared_error(eps_hat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Elementwise ``(eps_hat - target)^2``: ``eps_error``'s default loss."""
    return torch.sub(eps_hat, target).square_()


def _row_mean(rows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``rows.mean(1)`` of a ``[n, size]`` tensor; short float rows as a matrix-vector product, 5x faster."""
    size = rows.shape[1]
    if size <= MV_MEAN_MAX_SIZE and rows.dtype in (torch.float32, torch.float64):
        return torch.mv(rows, _mean_weights(size, rows.device, rows.dtype), out=out)
    return torch.mean(rows, 1, out=out)


@functools.lru_cache(maxsize=16)
def _mean_weights(size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[size]`` of 1 / size (never written to), kept between calls."""
    with torch.inference_mode(False):
        return torch.full((size,), 1 / size, device=device, dtype=dtype)


class ConditionalModel:
    """Wraps a trained module; owns the noise process, chunks batches and counts every row as one NFE.

    ``schedule`` is a ``NoiseProcess`` (``diffbench.noise_process``) or a ``NoiseSchedule`` (wrapped as its
    variance-preserving process); ``process`` holds it as a process, ``schedule`` as it was given. The
    module is fed the process's ``model_timesteps[t]`` (t itself on a VP process) and its output is
    converted to epsilon under ``prediction_type`` (``diffbench.parameterisation``).

    ``eps(x_t, t, c)`` accepts any number of rows N and calls the module on chunks of
    at most ``max_batch`` rows, so an estimator can hand over all its samples x trials x
    classes at once without exhausting memory. The runner reads cost from ``nfe``.
    ``eps_error`` does the same and reduces the predictions to per-row errors against a target
    (chunk by chunk where they would be big, so they are never gathered into one big tensor). ``q_sample``
    diffuses clean data to any timestep on the model's schedule.

    Every module call's output is checked for shape and dtype (``check_module_output``, no
    pass over the values). While ``check_values`` is true, each output's finiteness is also
    folded into a flag kept on the device (no synchronisation per call); ``check_finite()``
    reads and clears it. That costs a reduction per call (5-10% on a tiny 2-D MLP), so the
    runner checks values during a cell's fit and accuracy passes and turns it off for the
    repeats and timed passes, which run the same model on the same kind of input.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        schedule: NoiseSchedule | NoiseProcess,
        num_classes: int,
        data_shape: tuple[int, ...],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_batch: int = DEFAULT_MAX_BATCH,
        prediction_type: str = "epsilon",
        learned_variance: bool = False,
        name: str = "the denoiser",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be positive, got {max_batch}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.module = module.to(self.device, dtype).eval()
        self.schedule = schedule
        self.process = process = as_process(schedule)
        self.num_classes = num_classes
        self.num_timesteps = process.num_timesteps
        self.data_shape = tuple(data_shape)
        self.betas = process.betas.to(self.device, dtype)  # VP: its own; other processes: the equivalent VP's
        self.alphas_cumprod = process.alphas_cumprod.to(self.device, dtype)
        # what the module is fed for index t: t itself (VP), else the process's table (sigma * 1000, c_noise)
        time_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self._timesteps = None if process.kind == "vp" else process.model_timesteps.to(self.device, time_dtype)
        self.max_batch = max_batch
        self.nfe = 0  # rows asked for since the last reset_nfe(): the NFE an estimator needs live
        self.nfe_before_reset = 0  # what reset_nfe() took away, so that nfe_total() never goes back
        self.evaluated = 0  # rows the module really ran (below nfe where the error bank answered)
        self.replay = None  # a diffbench.draws.Replay: the design draws of the estimator call now running (bank mode)
        self.bank = None  # a diffbench.bank.BankScorer: where class_errors looks errors up (bank mode)
        self._sqrt_tables: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        # A pretrained module may predict v or x0 (or add a variance half): `_forward` converts it to epsilon.
        self.prediction_type = prediction_type
        self._to_eps = None
        if needs_conversion(prediction_type, learned_variance):
            self._to_eps = ToEpsilon(prediction_type, learned_variance, process, self.device, dtype)
        self.name = name  # how errors name the module: "denoiser 'mlp[width=16]'"
        self.check_values = True  # fold every output's finiteness into _finite
        self._finite: torch.Tensor | None = None  # all outputs since the last check_finite() were finite

    def _forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """One module call as epsilon (v or x0 converted, a variance half dropped), checked against the contract.

        The output must have x_t's shape and a floating dtype (``check_module_output``); while
        ``check_values`` is true its finiteness is folded into a flag kept on the device.
        """
        t_in = t if self._timesteps is None else self._timesteps.index_select(0, t)
        x_in = x_t if self._to_eps is None else self._to_eps.inputs(x_t, t)
        out = self.module(x_in, t_in, c)
        if self._to_eps is not None and isinstance(out, torch.Tensor):
            out = self._to_eps(out, x_t, t)
        out = check_module_output(out, x_t, self.name)
        if self.check_values:
            finite = torch.isfinite(out).all()
            self._finite = finite if self._finite is None else self._finite.logical_and_(finite)
        return out

    def check_finite(self, during: str = "") -> None:
        """Raise PluginOutputError if any module output since the last check held NaN or inf; clear the flag."""
        finite, self._finite = self._finite, None
        if finite is not None and not bool(finite):
            raise non_finite_output(self.name, during)

    def sqrt_tables(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The process's ``a [T]`` and ``s [T]`` on the model's device in ``dtype`` (default: the model's).

        On a VP process, ``sqrt(abar)`` and ``sqrt(1 - abar)`` of the model's ``alphas_cumprod``: made once per
        dtype and kept (never write into them); remade if ``alphas_cumprod`` is replaced. Elementwise, so
        gathering from them equals taking the roots of gathered values, bit for bit.
        """
        dtype = self.dtype if dtype is None else dtype
        abar = self.alphas_cumprod
        cached = self._sqrt_tables.get(dtype)
        if cached is None or cached[0] is not abar:
            if self.process.kind == "vp":
                scaled = abar.to(dtype)
                cached = (abar, scaled.sqrt(), scaled.neg().add_(1).sqrt_())
            else:
                cached = (abar, self.process.a.to(self.device, dtype), self.process.s.to(self.device, dtype))
            self._sqrt_tables[dtype] = cached
        return cached[1], cached[2]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Forward diffusion on the model's process: ``x_t = a_t x0 + s_t eps`` in eps.dtype.

        On a VP process a_t = sqrt(abar_t) and s_t = sqrt(1 - abar_t).
        ``t`` (long) matches the leading dims of ``eps`` (``[B, R]`` for ``eps [B, R, *shape]``);
        ``x0`` broadcasts against ``eps`` (``x[:, None]`` for trials). Bit for bit
        ``diffbench.schedule.q_sample(model.alphas_cumprod, x0, t, eps)``, in fewer passes: the
        square roots come from ``sqrt_tables``, gathered with one flat index. Costs no NFE.
        """
        signal_table, noise_table = self.sqrt_tables(eps.dtype)
        flat = t.reshape(-1)
        view = (*t.shape, *([1] * (eps.dim() - t.dim())))
        signal = signal_table.index_select(0, flat).view(view)
        noise = noise_table.index_select(0, flat).view(view)
        return torch.mul(signal, x0).add_(noise * eps)  # not addcmul_: its fused multiply-add rounds differently

    def _check_rows(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> int:
        n = x_t.shape[0]
        if t.shape != (n,) or c.shape != (n,):
            raise ValueError(f"model.eps needs t and c of shape [{n}], got t {tuple(t.shape)} and c {tuple(c.shape)}")
        if tuple(x_t.shape[1:]) != self.data_shape:
            raise ValueError(
                f"model.eps needs x_t of shape [N, {', '.join(map(str, self.data_shape))}], got {list(x_t.shape)}"
            )
        return n

    @torch.inference_mode()
    def eps(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Predicted noise for rows ``x_t [N,*shape]`` at timesteps ``t [N]`` for classes ``c [N]``."""
        n = self._check_rows(x_t, t, c)
        self.nfe += n
        self.evaluated += n
        if n <= self.max_batch:
            return self._forward(x_t, t, c)
        out = None
        for start in range(0, n, self.max_batch):
            stop = start + self.max_batch
            chunk = self._forward(x_t[start:stop], t[start:stop], c[start:stop])
            if out is None:
                out = torch.empty((n, *chunk.shape[1:]), device=chunk.device, dtype=chunk.dtype)
            out[start:stop] = chunk
        return out

    def eps_error(
        self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, target: torch.Tensor, loss: Loss | None = None
    ) -> torch.Tensor:
        """Per-row errors ``[N]``: the mean over each row's elements of ``loss(eps(x_t, t, c), target)``.

        The same module calls and NFE as ``eps`` on the same rows. Up to GATHERED_PREDICTIONS
        predicted elements, the chunks' predictions are joined and the loss and row means run
        once over all of them: a few small operations after every chunk cost more than the
        network's own tail on small rows (run right after it, each is several times slower than
        alone), and dropping them raised the quick suite's offline efficiency by about 4 points.
        Beyond that, each chunk is reduced against ``target [N,*shape]`` as soon as it is made,
        so no ``[N,*shape]`` output is allocated. Both ways give the same bits.
        ``loss(eps_hat, target)`` returns the elementwise loss (default: squared error); it may
        return a tensor it owns modified in place, but must not write into its arguments.
        """
        n = self._check_rows(x_t, t, c)
        if target.shape != x_t.shape:
            raise ValueError(
                f"model.eps_error needs a target shaped like x_t {list(x_t.shape)}, got {list(target.shape)}"
            )
        loss = squared_error if loss is None else loss
        self.nfe += n
        self.evaluated += n
        size = math.prod(self.data_shape)
        if n <= self.max_batch:
            with torch.inference_mode():
                elementwise = loss(self._forward(x_t, t, c), target)
            return _row_mean(elementwise.reshape(n, size))  # made outside inference mode: an ordinary tensor
        if n * size <= GATHERED_PREDICTIONS:  # small rows: the chunks' predictions, then one loss over them all
            inputs = zip(*(rows.split(self.max_batch) for rows in (x_t, t, c)), strict=True)
            with torch.inference_mode():
                predicted = torch.cat([self._forward(x_i, t_i, c_i) for x_i, t_i, c_i in inputs])
                elementwise = loss(predicted, target)
            return _row_mean(elementwise.reshape(n, size))
        out: torch.Tensor | None = None
        outs: tuple[torch.Tensor, ...] = ()
        chunks = zip(*(rows.split(self.max_batch) for rows in (x_t, t, c, target)), strict=True)
        with torch.inference_mode():
            for i, (x_i, t_i, c_i, target_i) in enumerate(chunks):
                elementwise = loss(self._forward(x_i, t_i, c_i), target_i).reshape(x_i.shape[0], size)
                if out is None:
                    with torch.inference_mode(False):  # callers get an ordinary tensor
                        out = torch.empty(n, device=elementwise.device, dtype=elementwise.dtype)
                        outs = out.split(self.max_batch)
                _row_mean(elementwise, out=outs[i])
        return out

    def eps_losses(
        self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, target: torch.Tensor, losses: tuple[Loss, ...]
    ) -> torch.Tensor:
        """Per-row errors ``[N, L]`` under each of ``losses`` from one prediction per row (``eps_error``'s rows).

        The same module calls and NFE as ``eps``; each chunk of predictions is reduced as soon as it is made.
        """
        n = self._check_rows(x_t, t, c)
        self.nfe += n
        self.evaluated += n
        size = math.prod(self.data_shape)
        out = torch.empty((n, len(losses)), device=self.device, dtype=self.dtype)
        for start in range(0, n, self.max_batch):
            stop = min(n, start + self.max_batch)
            with torch.inference_mode():
                predicted = self._forward(x_t[start:stop], t[start:stop], c[start:stop])
                for i, loss in enumerate(losses):
                    out[start:stop, i] = _row_mean(loss(predicted, target[start:stop]).reshape(stop - start, size))
        return out

    def reset_nfe(self) -> int:
        """Return the NFE count so far and set it back to zero."""
        count, self.nfe = self.nfe, 0
        self.nfe_before_reset += count
        return count

    def nfe_total(self) -> int:
        """Every row asked for since the model was made (``reset_nfe`` does not take it back)."""
        return self.nfe_before_reset + self.nfe


@torch.inference_mode()
def sample(
    model: ConditionalModel, labels: torch.Tensor, generator: torch.Generator, steps: int | None = None
) -> torch.Tensor:
    """Draw one sample per label by DDPM ancestral sampling (sigma_t^2 = beta_t).

    ``steps`` evenly spaced timesteps s_0 = 0 < ... < s_last = T - 1 of the model's T (all T by
    default), respaced as in Nichol & Dhariwal (2021): the chain over them has
    beta'_i = 1 - abar(s_i) / abar(s_(i-1)), so each step is exact for its own jump and 100 steps
    draw nearly what 1000 do, at a tenth of the network calls.
    """
    T = model.num_timesteps
    steps = T if steps is None else max(1, min(steps, T))
    timesteps = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().unique()
    abar = model.alphas_cumprod.double().cpu()[timesteps]
    betas = 1 - abar / torch.cat([abar.new_ones(1), abar[:-1]])
    process = getattr(model, "process", None)
    scale = None  # other processes: the chain runs on the equivalent VP process, x_t = sqrt(a^2 + s^2) x_vp
    if process is not None and process.kind != "vp":
        scale = (process.a.square() + process.s.square()).sqrt()[timesteps]
        betas = betas.clamp(max=0.999)  # a flow's last level has abar = 0: no step from pure noise divides by 0
    labels = labels.to(model.device)
    n = labels.shape[0]
    x = torch.randn(n, *model.data_shape, generator=generator, device=model.device, dtype=model.dtype)
    for i in reversed(range(len(timesteps))):
        t = torch.full((n,), int(timesteps[i]), device=model.device, dtype=torch.long)
        eps = model.eps(x if scale is None else x * scale[i].item(), t, labels)
        beta, a = betas[i].item(), abar[i].item()
        mean = (x - beta / math.sqrt(1 - a) * eps) / math.sqrt(1 - beta)
        if i > 0:
            noise = torch.randn(x.shape, generator=generator, device=model.device, dtype=model.dtype)
            mean = mean + math.sqrt(beta) * noise
        x = mean
    return x
