"""Properties of the selector parser and the suite loader, over generated input (hypothesis)."""

import itertools
import json
import math
import tempfile
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from diffbench import selectors
from diffbench.limits import MAX_TRIALS
from diffbench.selectors import SelectorError
from diffbench.suite import Suite, SuiteError, load_suite, suite_from_dict
from diffbench.training import TrainSettings

# No example database: it would leave a .hypothesis folder in the working tree.
FAST = settings(max_examples=100, deadline=None, database=None)

NAMES = st.from_regex(r"[A-Za-z0-9_.\-]{1,12}", fullmatch=True)
SPACE = st.sampled_from(["", " ", "  "])


def typed(value):
    """A value with its types spelled out, so that True never equals 1 nor 1.0 equals 1."""
    if isinstance(value, list):
        return ["list", [typed(v) for v in value]]
    return [type(value).__name__, value]


# --- selectors: generated values as written in a selector, with the value the parser must give back


def bare_word(text: str) -> bool:
    return selectors.parse_value(text) == text


SCALARS = st.one_of(
    st.integers(-(10**12), 10**12).map(lambda i: (str(i), i)),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: (repr(f), f)),
    st.booleans().flatmap(lambda b: st.sampled_from([str(b).lower(), str(b), str(b).upper()]).map(lambda s: (s, b))),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,10}", fullmatch=True).filter(bare_word).map(lambda s: (s, s)),
    st.text(max_size=10).filter(lambda s: "'" not in s).map(lambda s: (f"'{s}'", s)),
    st.text(max_size=10).filter(lambda s: '"' not in s).map(lambda s: (f'"{s}"', s)),
)
LISTS = st.lists(SCALARS, min_size=1, max_size=4).map(
    lambda items: ("[" + ",".join(text for text, _ in items) + "]", [value for _, value in items])
)


@st.composite
def written_selectors(draw):
    """(selector text, name, {key: value or list of values}) for a well-formed selector."""
    name = draw(NAMES)
    keys = draw(st.lists(NAMES, max_size=4, unique=True))
    params = {key: draw(st.one_of(SCALARS, LISTS)) for key in keys}
    if not params:
        return name, name, {}
    sep = draw(SPACE)
    body = f",{sep}".join(f"{key}{sep}={sep}{text}" for key, (text, _) in params.items())
    return f"{name}[{sep}{body}{sep}]", name, {key: value for key, (_, value) in params.items()}


@FAST
@given(written_selectors())
def test_a_written_selector_expands_to_the_product_of_its_lists(case):
    text, name, params = case
    points = selectors.expand(text)
    choices = [value if isinstance(value, list) else [value] for value in params.values()]
    assert len(points) == math.prod(len(c) for c in choices)
    expected = [(name, dict(zip(params, combo, strict=True))) for combo in itertools.product(*choices)]
    assert typed([[n, list(p.items())] for n, p in points]) == typed([[n, list(p.items())] for n, p in expected])


@FAST
@given(written_selectors())
def test_parse_keeps_each_value_as_written(case):
    text, name, params = case
    assert typed(list(selectors.parse(text)[1].values())) == typed(list(params.values()))
    assert selectors.parse(text)[0] == name


SELECTOR_ALPHABET = "ab1-.=[],'\" _e"


@FAST
@given(st.one_of(st.text(max_size=40), st.text(alphabet=SELECTOR_ALPHABET, max_size=30)))
def test_any_text_is_a_selector_or_a_selector_error(text):
    for list_params in ((), ("a", "b")):
        try:
            points = selectors.expand(text, list_params)
        except SelectorError as exc:
            assert "\n" not in str(exc).strip("\n") or "\n" in text, "one line, unless the input had several"
        else:
            assert points and all(isinstance(name, str) and isinstance(p, dict) for name, p in points)


@FAST
@given(st.lists(st.integers(1, MAX_TRIALS), min_size=1, max_size=8), SPACE)
def test_positive_int_lists_round_trip(values, sep):
    assert selectors.parse_int_list(f"{sep},{sep}".join(map(str, values))) == values


# Regression (bug found by this file): '²'.isdigit() is true but int('²') raised ValueError, not SelectorError.
@FAST
@given(st.one_of(st.text(max_size=30), st.text(alphabet="0123456789, -+.²٣", max_size=20)))
@example("1,²")
def test_any_text_is_an_int_list_or_a_selector_error(text):
    try:
        values = selectors.parse_int_list(text)
    except SelectorError:
        return
    assert values and all(type(v) is int and v >= 1 for v in values)


@FAST
@given(st.lists(st.integers(-(10**6), 10**6), min_size=1, max_size=6).filter(lambda v: min(v) < 1))
def test_an_int_list_with_a_non_positive_entry_is_rejected(values):
    with pytest.raises(SelectorError, match="positive integers"):
        selectors.parse_int_list(",".join(map(str, values)))


# --- suites: anything TOML can hold, and well-formed suites


SUITE_KEYS = [f.name for f in fields(Suite)]
TRAIN_KEYS = [f.name for f in fields(TrainSettings)]
TOML_SCALARS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.booleans(),
    st.text(max_size=8),
    st.datetimes(),
    st.dates(),
    st.sampled_from(["auto", "cpu", "cuda", "linear", "cosine", "float32", "offline", "mlp", "spirals"]),
)
TOML_KEYS = st.one_of(st.sampled_from(SUITE_KEYS + TRAIN_KEYS + ["mlp"]), st.text(max_size=6))
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TOML_KEYS, inner, max_size=4)),
    max_leaves=12,
)


@FAST
@given(st.dictionaries(TOML_KEYS, TOML_VALUES, max_size=6))
def test_any_toml_data_is_a_suite_or_a_suite_error(data):
    try:
        suite = suite_from_dict(data)
    except SuiteError as exc:
        assert str(exc).startswith("suite: ")
    else:
        assert isinstance(suite, Suite) and set(data) <= set(SUITE_KEYS)


@FAST
@given(st.dictionaries(st.sampled_from(SUITE_KEYS), TOML_VALUES, max_size=len(SUITE_KEYS)))
@example({})  # generated data is rarely a valid suite: these make sure both outcomes are checked
@example({"trials": 4, "devices": "cpu", "seed": 3, "max_time_s": 1, "train": {"steps": 10}})
@example({"trials": [0]})
def test_any_values_for_known_keys_are_a_suite_or_a_suite_error(data):
    try:
        suite = suite_from_dict(data)
    except SuiteError as exc:
        assert str(exc).startswith("suite: "), "a bad value is one error saying where"
    else:
        assert isinstance(suite, Suite)
        assert suite_from_dict(suite.to_dict()) == suite, "an accepted suite reads back as itself (run.json, --resume)"


# Regression (bug found by this file): dtypes = [[1]] raised TypeError (unhashable) instead of SuiteError.
@FAST
@given(
    st.sampled_from([f.name for f in fields(Suite) if isinstance(getattr(Suite(), f.name), list)]),
    st.lists(TOML_VALUES, min_size=1, max_size=4),
)
@example("dtypes", [[1]])
def test_any_entries_in_a_list_key_are_a_suite_or_a_suite_error(key, entries):
    try:
        assert isinstance(suite_from_dict({key: entries}), Suite)
    except SuiteError as exc:
        assert f"'{key}'" in str(exc) or key.rstrip("s") in str(exc)


@FAST
@given(st.lists(st.integers(-(10**6), 10**6), min_size=1, max_size=6).filter(lambda v: min(v) < 1))
def test_trials_with_a_non_positive_entry_are_rejected(trials):
    with pytest.raises(SuiteError, match="trials must be positive integers"):
        suite_from_dict({"trials": trials})


SELECTOR_TEXT = st.from_regex(r"[a-z][a-z\-]{0,8}(\[[a-z_]{1,5}=[0-9]{1,3}\])?", fullmatch=True)
VALID_SUITES = st.fixed_dictionaries(
    {},
    optional={
        "datasets": st.lists(SELECTOR_TEXT, min_size=1, max_size=3),
        "denoisers": st.lists(SELECTOR_TEXT, min_size=1, max_size=3),
        "estimators": st.lists(SELECTOR_TEXT, min_size=1, max_size=3),
        "trials": st.lists(st.integers(1, 1024), min_size=1, max_size=6),
        "devices": st.lists(st.sampled_from(["auto", "cpu", "cuda"]), min_size=1, max_size=3),
        "seed": st.integers(0, 2**31),
        "repeats": st.integers(1, 50),
        "schedule": st.sampled_from(["linear", "cosine"]),
        "timesteps": st.integers(2, 5000),
        "train": st.fixed_dictionaries(
            {},
            optional={
                "steps": st.integers(1, 10**6),
                "batch_size": st.integers(1, 4096),
                "lr": st.floats(1e-6, 1.0),
            },
        ),
    },
)


def toml_text(data: dict) -> str:
    """TOML for a flat suite dict with an optional [train] table (strings here need no escapes)."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in data.items() if key != "train"]
    lines += ["[train]"] + [f"{key} = {json.dumps(value)}" for key, value in data.get("train", {}).items()]
    return "\n".join(lines) + "\n"


@FAST
@given(VALID_SUITES)
def test_a_valid_suite_keeps_its_values_and_round_trips(data):
    suite = suite_from_dict(data)
    for key, value in data.items():
        assert getattr(suite, key) == value
    assert suite_from_dict(suite.to_dict()) == suite
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "generated.toml"
        path.write_text(toml_text(data))
        assert load_suite(str(path)) == suite


# Regression (bug found by this file): a file that is not UTF-8 raised UnicodeDecodeError, not SuiteError.
@FAST
@given(st.one_of(st.text(max_size=60), st.binary(max_size=40), st.text(alphabet='[]=,."\n trials0-1ab', max_size=40)))
@example(b"trials = [1]\n\x80")
def test_any_suite_file_is_a_suite_or_a_suite_error(content):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "any.toml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        try:
            assert isinstance(load_suite(str(path)), Suite)
        except SuiteError as exc:
            assert str(path) in str(exc)
