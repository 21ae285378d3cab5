"""Plugin params: the ``Choice`` type, and how each override is checked and coerced against its default.

``Cls(**overrides)`` (see ``diffbench.contract.Plugin``) takes only the keys of ``Cls.params``, each of
the type of its default (a ``Choice`` default takes only its choices); anything else is a ParamError.
"""

from __future__ import annotations

from typing import Any

from diffbench.hints import did_you_mean

#: The largest integer a results table (parquet int64) and ``torch.Generator.manual_seed`` both take.
INT64_MAX = 2**63 - 1


class ParamError(ValueError):
    """A plugin was given a parameter it does not have, or a value of the wrong type."""


class Choice(str):
    """A string param that takes one of a fixed set of values; the first is the default.

    ``params = {"loss": diffbench.Choice("l2", "l1", "huber")}``: the default is ``"l2"``, and
    ``Cls(loss="l3")`` is a ParamError that lists the choices. It is a ``str`` equal to its default,
    so ``cls.params["loss"] == "l2"``, JSON, labels and the results table see a plain string, and an
    instance's ``self.params`` holds the plain chosen string.
    """

    choices: tuple[str, ...]

    def __new__(cls, default: str, *others: str) -> Choice:
        choices = (default, *others)
        if not all(isinstance(choice, str) for choice in choices):
            raise TypeError(f"Choice takes strings, got {choices!r}")
        if len(set(choices)) != len(choices):
            raise ValueError(f"Choice lists a value twice: {choices!r}")
        self = super().__new__(cls, default)
        self.choices = choices
        return self

    def __getnewargs__(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.choices

    def __repr__(self) -> str:
        return f"Choice({', '.join(repr(choice) for choice in self.choices)})"

    def pick(self, kind: str, plugin: str, key: str, value: Any) -> str:
        """Return ``value`` as a plain str if it is one of the choices, else raise ParamError."""
        if isinstance(value, str) and value in self.choices:
            return str(value)
        hint = did_you_mean(value, self.choices) if isinstance(value, str) else ""
        raise ParamError(
            f"{kind} '{plugin}' param '{key}' must be one of {', '.join(self.choices)}, got {value!r}{hint}"
        )


def short_repr(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters for one-line errors (a 400-digit number, say)."""
    if isinstance(value, int) and value.bit_length() > 128:  # repr of a huge int is slow, or refused past 4300 digits
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def type_name(value: Any) -> str:
    return type(value).__name__


def coerce(kind: str, plugin: str, key: str, default: Any, value: Any) -> Any:
    """Return ``value`` converted to the type of ``default`` or raise ParamError."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if default is None:
        return value
    if isinstance(default, Choice):
        return default.pick(kind, plugin, key, value)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if is_number and whole:
            if abs(int(value)) <= INT64_MAX:
                return int(value)
            raise ParamError(
                f"{kind} '{plugin}' param '{key}' must be an integer of at most {INT64_MAX} in size, "
                f"got {short_repr(value)}"
            )
    elif isinstance(default, float):
        if is_number:
            return float(value)
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return type(default)(value)
    elif isinstance(value, type(default)):
        return value
    expected = "true or false" if isinstance(default, bool) else type_name(default)
    raise ParamError(f"{kind} '{plugin}' param '{key}' must be {expected}, got {value!r}")


def plain_default(default: Any) -> Any:
    """A default as an instance keeps it: a Choice becomes its plain str."""
    return str(default) if isinstance(default, Choice) else default


def merge_params(kind: str, plugin: str, defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` (a Choice as its plain str) updated by ``overrides``, each checked and coerced; else ParamError."""
    merged = {key: plain_default(default) for key, default in defaults.items()}
    for key, value in overrides.items():
        if key not in defaults:
            known = ", ".join(defaults) or "none"
            raise ParamError(
                f"{kind} '{plugin}' has no param '{key}'{did_you_mean(key, defaults)} (known params: {known})"
            )
        merged[key] = coerce(kind, plugin, key, defaults[key], value)
    return merged
