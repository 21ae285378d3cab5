"""Property-based fuzz (hypothesis) of issue 14's contracts: numeric CLI options and a denoiser's outputs.

- any value of a numeric option either is refused (exit 2, one error line, nothing run) or reaches the
  runner inside the range its consumers take (int64 seeds, a finite time cap...);
- any output of a denoiser module is either accepted (a floating tensor shaped like x_t) or refused with
  PluginOutputError; a NaN or inf in it is always caught by ``check_finite``; nothing else escapes.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffbench import limits
from diffbench.contract import PluginOutputError
from tests.helpers import make_model, write_suite

NUMERIC_OPTIONS = ["--seed", "--trials", "--repeats", "--max-time", "--threads", "--batch-size"]

values = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0", "1", "-1", "2**63", "1e20", "1_000", " 7 ", "1,2", "auto", "", "nan", "inf", "0x10", "٣"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=10),
)


class Accepted(Exception):
    """The CLI handed the grid to the runner: the option was accepted."""


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(NUMERIC_OPTIONS), value=values)
def test_a_numeric_option_is_refused_in_one_line_or_accepted_in_range(cli, tmp_path, monkeypatch, option, value):
    from diffbench import runner

    def accept(suite, cells, *args, **kwargs):
        raise Accepted(suite, cells)

    monkeypatch.setattr(runner, "run", accept)
    suite = write_suite(tmp_path / "s.toml")
    try:
        result = cli("run", "--suite", suite, f"{option}={value}", "--out", tmp_path / "run", "--cache", tmp_path / "c")
    except Accepted as accepted:
        suite, cells = accepted.args
        assert 0 <= suite.seed <= limits.MAX_SEED
        assert all(1 <= t <= limits.MAX_TRIALS for t in suite.trials)
        assert 1 <= suite.repeats <= limits.MAX_REPEATS
        assert math.isfinite(suite.max_time_s) and 0 < suite.max_time_s <= limits.MAX_TIME_S
        assert suite.batch_size == "auto" or 1 <= suite.batch_size < 2**31
        assert 1 <= torch.get_num_threads() <= limits.MAX_THREADS
        return
    finally:
        torch.set_num_threads(1)
    assert result.exit_code == 2, (option, value, result.output)
    errors = [line for line in result.stderr.splitlines() if "rror" in line]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert not (tmp_path / "run" / "run.json").exists()


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool, torch.complex64]


class Fixed(torch.nn.Module):
    """A module that returns one fixed tensor (whatever it is asked)."""

    def __init__(self, out) -> None:
        super().__init__()
        self.out = out

    def forward(self, x, t, c):
        return self.out


@st.composite
def outputs(draw):
    """Some output a module might return for x_t of shape [4, 2]: right or wrong shape and dtype, maybe NaN or inf."""
    shape = draw(
        st.one_of(st.sampled_from([(4, 2), (2, 2)]), st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple))
    )
    dtype = draw(st.sampled_from(DTYPES))
    out = torch.ones(shape, dtype=dtype)
    poison = draw(st.sampled_from([None, math.nan, math.inf, -math.inf]))
    if poison is not None and out.numel() and (out.is_floating_point() or out.is_complex()):
        out.view(-1)[draw(st.integers(0, out.numel() - 1))] = poison
    if draw(st.booleans()):
        return out.tolist() if out.dim() else out.item()  # not a tensor at all
    return out


@settings(max_examples=50, deadline=None)
@given(out=outputs(), chunk=st.sampled_from([2, 100]), call=st.sampled_from(["eps", "eps_error"]))
def test_any_module_output_is_accepted_or_refused_by_the_contract(out, chunk, call):
    model = make_model(Fixed(out), num_classes=2, max_batch=chunk, name="denoiser 'fixed'")
    x, t, c = torch.randn(4, 2), torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    each_call = (min(chunk, 4), 2)  # the rows of x_t the module sees per call
    fits = isinstance(out, torch.Tensor) and out.is_floating_point() and out.shape == each_call
    try:
        got = model.eps(x, t, c) if call == "eps" else model.eps_error(x, t, c, torch.zeros(4, 2))
    except PluginOutputError as exc:
        assert not fits and "denoiser 'fixed' forward()" in str(exc)
        return
    assert fits, "only a floating tensor shaped like each chunk of x_t gets through"
    assert got.shape == ((4, 2) if call == "eps" else (4,))
    if torch.isfinite(out).all():
        model.check_finite()
    else:
        with pytest.raises(PluginOutputError, match="returned NaN or inf"):
            model.check_finite()
