"""Property-based fuzz (hypothesis) of the selector parser (issue 24).

- any text, hostile fragments included (spaces, quotes, ``$``, markup, unicode, line breaks, nesting,
  empty values), either parses to a well-formed (name, params) or raises SelectorError in one line;
  nothing else escapes;
- a selector built from known params parses back to exactly them: a quoted value character for
  character, an unquoted one with the spaces inside it kept and only those around it dropped.
"""

from __future__ import annotations

import math
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from diffbench.selectors import SelectorError, expand, parse, parse_value

NAME = re.compile(r"[A-Za-z0-9_.\-]+")
FRAGMENTS = [
    *"[],='\" \t\n$\\{}",
    "$\\foo{$",
    "<!--<script>",
    "</script>",
    "&amp;",
    "é",
    "名前",
    "🙂",
    "\u2028",
    "\u3000",
    "\x00",
    "x",
    "t_max",
    "1e3",
    "-0",
    "nan",
    "true",
    "[[",
    "]]",
    "''",
    "a=",
    "=[",
]
spaces = st.sampled_from(["", " ", "  ", "\t", "\u3000"])
names = st.from_regex(r"[A-Za-z0-9_.\-]{1,8}", fullmatch=True)
hostile = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=3)), max_size=14).map("".join)
selector_like = st.one_of(
    hostile,
    st.builds(lambda name, body: f"{name}[{body}]", names, hostile),
    st.builds(lambda name, key, body: f"{name}[{key}={body}]", names, names, hostile),
)


def well_formed(value, depth: int = 0) -> bool:
    if isinstance(value, list):
        return depth < 2 and len(value) > 0 and all(well_formed(item, depth + 1) for item in value)
    return isinstance(value, (bool, int, float, str))


def check_one_line(error: SelectorError) -> None:
    message = str(error)
    assert message.startswith("malformed selector '"), message
    assert len(message.splitlines()) == 1 and message.isprintable(), repr(message)


@settings(max_examples=400, deadline=None)
@given(text=selector_like)
def test_any_text_parses_well_formed_or_is_one_selector_error(text):
    try:
        name, params = parse(text)
    except SelectorError as error:
        check_one_line(error)
        return
    assert NAME.fullmatch(name), name
    assert all(NAME.fullmatch(key) for key in params), params
    assert all(well_formed(value) for value in params.values()), params


@settings(max_examples=200, deadline=None)
@given(text=selector_like, list_params=st.lists(names, max_size=2))
def test_any_text_expands_to_well_formed_specs_or_is_one_selector_error(text, list_params):
    try:
        specs = expand(text, list_params)
    except SelectorError as error:
        check_one_line(error)
        return
    assert specs and all(NAME.fullmatch(name) for name, _ in specs)
    for _, params in specs:
        for key, value in params.items():
            assert well_formed(value) and (key in list_params or not isinstance(value, list)), (key, value)


quoted = st.tuples(st.sampled_from("'\""), st.text(max_size=12)).filter(lambda qv: qv[0] not in qv[1])
plain = (
    st.text(st.characters(blacklist_characters="[],='\"", blacklist_categories=("Cs",)), min_size=1, max_size=12)
    .map(str.strip)
    .filter(bool)
)
written_value = st.one_of(
    quoted.map(lambda qv: ("quoted", qv[1], f"{qv[0]}{qv[1]}{qv[0]}")), plain.map(lambda v: ("plain", v, v))
)


def same(parsed, expected) -> bool:
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(parsed, float) and math.isnan(parsed)
    return type(parsed) is type(expected) and parsed == expected


@settings(max_examples=300, deadline=None)
@given(
    name=names,
    params=st.dictionaries(names, written_value, max_size=4),
    pads=st.lists(spaces, min_size=4, max_size=4),
)
def test_a_built_selector_parses_back_to_its_values_as_written(name, params, pads):
    a, b, c, d = pads
    body = ",".join(f"{a}{key}{b}={c}{written}{d}" for key, (_, _, written) in params.items())
    text = f"{a}{name}{b}[{body}]{c}" if params else f"{a}{name}{d}"
    assert parse(text)[0] == name
    for key, (kind, value, _) in params.items():
        parsed = parse(text)[1][key]
        if kind == "quoted":
            assert parsed == value, "a quoted value comes back exactly as written"
        else:
            assert same(parsed, parse_value(value)), (parsed, value)
            assert not isinstance(parsed, str) or parsed == value, "an unquoted string keeps its inner spaces"


@settings(max_examples=200, deadline=None)
@given(items=st.lists(plain, min_size=1, max_size=4), pad=spaces)
def test_a_list_of_plain_values_keeps_each_item_as_written(items, pad):
    parsed = parse(f"x[v=[{','.join(pad + item + pad for item in items)}]]")[1]["v"]
    assert len(parsed) == len(items)
    for got, item in zip(parsed, items, strict=True):
        assert same(got, parse_value(item)) and (not isinstance(got, str) or got == item)
