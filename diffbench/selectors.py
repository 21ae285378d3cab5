"""benchopt-style selectors: ``truncated[t_min=100,t_max=[300,600]]`` -> one spec per grid point."""

from __future__ import annotations

import itertools
import re
from collections.abc import Collection
from typing import Any

from diffbench.limits import MAX_TRIALS

EXAMPLE = "truncated[t_min=100,t_max=[300,600]]"
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


class SelectorError(ValueError):
    """A selector string could not be parsed."""


class _Parser:
    """Reads one selector left to right; spaces around names, ``=``, ``,``, ``[`` and ``]`` mean nothing.

    A value keeps the spaces inside it as written (``root=data/if space`` is ``data/if space``),
    only the ones around it are dropped; a quoted value keeps every character between its quotes.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> SelectorError:
        return SelectorError(
            f"malformed selector '{one_line(self.text)}': {what} at position {self.pos}; "
            f"write name or name[key=value,key=[v1,v2]], e.g. {EXAMPLE}"
        )

    def peek(self) -> str:
        self.skip_spaces()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def expect(self, char: str) -> None:
        if self.peek() != char:
            found = f"'{one_line(self.peek())}'" if self.peek() else "the end"
            raise self.fail(f"expected '{char}' but found {found}")
        self.pos += 1

    def name(self) -> str:
        self.skip_spaces()
        match = _NAME.match(self.text, self.pos)
        if not match:
            raise self.fail("expected a name")
        self.pos = match.end()
        return match.group()

    def scalar(self) -> Any:
        if self.peek() in ("'", '"'):
            quote = self.peek()
            end = self.text.find(quote, self.pos + 1)
            if end < 0:
                raise self.fail("unterminated quoted value")
            value, self.pos = self.text[self.pos + 1 : end], end + 1
            return value
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ",]=[":
            self.pos += 1
        raw = self.text[start : self.pos].strip()
        if not raw:
            raise self.fail("expected a value")
        return parse_value(raw)

    def value(self, depth: int = 0) -> Any:
        if self.peek() != "[":
            return self.scalar()
        if depth == 2:
            raise self.fail("lists nest at most two deep")
        self.pos += 1
        items = [self.value(depth + 1)]
        while self.peek() == ",":
            self.pos += 1
            items.append(self.value(depth + 1))
        self.expect("]")
        return items

    def selector(self) -> tuple[str, dict[str, Any]]:
        name = self.name()
        params: dict[str, Any] = {}
        if self.peek() == "[":
            self.pos += 1
            while True:
                key = self.name()
                if key in params:
                    raise self.fail(f"param '{key}' given twice")
                self.expect("=")
                params[key] = self.value()
                if self.peek() != ",":
                    break
                self.pos += 1
            self.expect("]")
        if self.peek():
            raise self.fail(f"unexpected '{one_line(self.text[self.pos :])}'")
        return name, params


def parse_value(raw: str) -> Any:
    """Turn a bare selector value into bool, int, float or str."""
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def parse(text: str) -> tuple[str, dict[str, Any]]:
    """Parse one selector into its plugin name and params (list values still unexpanded)."""
    return _Parser(text).selector()


def one_line(text: str) -> str:
    """``text`` with line breaks and other unprintable characters escaped, so a message that quotes it is one line."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def expand(text: str, list_params: Collection[str] = ()) -> list[tuple[str, dict[str, Any]]]:
    """Parse a selector and expand its list values into the grid of (name, params).

    A param named in ``list_params`` takes a list as its value (its default is a list):
    ``mults=[1,2,2]`` is then one value and ``mults=[[1,2],[1,2,2]]`` a grid of two.
    """
    name, params = parse(text)
    keys = list(params)
    choices = []
    for key, value in params.items():
        if key in list_params:
            grid = isinstance(value, list) and value and all(isinstance(v, list) for v in value)
            choices.append(value if grid else [value if isinstance(value, list) else [value]])
        elif isinstance(value, list) and any(isinstance(v, list) for v in value):
            raise SelectorError(
                f"malformed selector '{one_line(text)}': param '{key}' takes no list, so [[...]] means nothing; "
                f"write {key}=[v1,v2] for a grid"
            )
        else:
            choices.append(value if isinstance(value, list) else [value])
    return [(name, dict(zip(keys, combo, strict=True))) for combo in itertools.product(*choices)]


def parse_int_list(text: str, what: str = "trials", most: int = MAX_TRIALS) -> list[int]:
    """Parse ``1,2,4,8`` into ints from 1 to ``most``."""
    values = []
    for part in str(text).split(","):
        part = part.strip()
        # int() refuses some isdigit() text ('²'); a number too long to be one is refused before int() reads it
        if not (part.isascii() and part.isdigit()) or len(part) > 30 or not 1 <= int(part) <= most:
            raise SelectorError(
                f"{what} must be positive integers (at most {most}) separated by commas, e.g. 1,2,4,8; "
                f"got '{text[:60]}'"
            )
        values.append(int(part))
    return values
