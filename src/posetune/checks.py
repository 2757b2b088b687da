"""Option values checked at the door: one-line errors that say what was expected, what was found, and the flag.

Every command's options are one dataclass, an :class:`Options`, whose fields carry their check::

    @dataclass
    class EvaluateOptions(Options):
        split: str = option("test", Choice("train", "val", "test"))
        batch_size: int = option(64, Int(1, 4096))

``posetune evaluate RUN DATA --batch-size 0`` (or ``posetune.evaluate(RUN, DATA, batch_size=0)``) stops with
``--batch-size must be an integer from 1 to 4096, not 0`` before any file is read or written. The CLI and the Python API build the same dataclass, so
both get the same checks; values read from a YAML config go through them too, named by key and file.

Where the dataclasses live: the layer contract (pyproject.toml, ``[tool.importlinter]``) lets a
module import only from the layers below it, and `evaluate`, `predict`, `export`, `serve` and
`data check/synth` sit below the training layer. So this module, the checks and the base class, sits
at the bottom (above ``errors`` only), and each command declares its options next to its code:
``evaluation.EvaluateOptions``, ``predict.loading.PredictOptions``, ``exporting.ExportOptions``,
``serve.options.ServeOptions``, ``data.check.CheckOptions``, ``data.synth.dataset.SynthOptions``.
The options that need the strategy and backbone registries (train, lr-find, compare) live in
``posetune.options``, above strategies and backbones, which re-exports the others: one import finds all.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from posetune.errors import InvalidOption, UsageError

T = TypeVar("T", bound="Options")

# Bounds shared by several commands, chosen so that no accepted value exhausts memory.
IMAGE_SIZE = (32, 1024)  # px; a decoded 1024^2 RGB image is 3 MB (100000 px would be 30 GB)
BATCH_SIZE = (1, 4096)
SEED = (0, 2**32 - 1)  # numpy's seed range
LABEL_LEVELS = (6, 20, 82)  # Yoga-82's three label hierarchies


class Check:
    """One field's check: ``check(value, label)`` returns the value (normalised) or raises InvalidOption."""

    expected = "a value"

    def __call__(self, value: Any, label: str) -> Any:
        raise NotImplementedError

    def fail(self, value: Any, label: str) -> InvalidOption:
        return InvalidOption(f"{label} must be {self.expected}, not {shown(value)}")


def shown(value: Any) -> str:
    """How an offending value is quoted: strings in quotes (so `'two'` reads as text), numbers as they are."""
    if isinstance(value, (str, Path)):
        return repr(str(value))
    if isinstance(value, (bool, numbers.Number)) or value is None:
        return str(value)
    return f"a {type(value).__name__} ({str(value)[:40]})"


def _number(x) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _range(kind: str, low, high, low_open: bool = False, high_open: bool = False) -> str:
    if low is not None and high is not None and not (low_open or high_open):
        return f"{kind} from {_number(low)} to {_number(high)}"
    lo = f"> {_number(low)}" if low_open else f">= {_number(low)}" if low is not None else ""
    hi = f"< {_number(high)}" if high_open else f"<= {_number(high)}" if high is not None else ""
    return " ".join([kind, " and ".join(x for x in (lo, hi) if x)]).strip()


class Int(Check):
    """An integer (not a bool, not 3.0) in ``low..high``."""

    def __init__(self, low: int | None = None, high: int | None = None):
        self.low, self.high = low, high
        self.expected = _range("an integer", low, high)

    def __call__(self, value, label):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise self.fail(value, label)
        value = int(value)
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise self.fail(value, label)
        return value


class Float(Check):
    """A finite number in a range. A string that reads as a number is accepted: YAML reads ``1e-3`` as text."""

    def __init__(self, low: float | None = None, high: float | None = None, low_open: bool = False,
                 high_open: bool = False):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open
        self.expected = _range("a number", low, high, low_open, high_open)

    def __call__(self, value, label):
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise self.fail(value, label) from None
        if isinstance(number, bool) or not isinstance(number, numbers.Real) or not math.isfinite(number):
            raise self.fail(value, label)
        number = float(number)
        lo, hi = self.low, self.high
        if lo is not None and (number <= lo if self.low_open else number < lo):
            raise self.fail(value, label)
        if hi is not None and (number >= hi if self.high_open else number > hi):
            raise self.fail(value, label)
        return number


class Choice(Check):
    """One of a fixed set of values."""

    def __init__(self, *choices):
        self.choices = choices
        self.expected = f"one of {', '.join(map(str, choices))}"

    def __call__(self, value, label):
        if isinstance(value, bool) or value not in self.choices:
            raise self.fail(value, label)
        return value


class Pattern(Check):
    """A string matching ``regex`` in full (e.g. a device name: cuda:N)."""

    def __init__(self, regex: str, expected: str):
        self.regex, self.expected = re.compile(regex), expected

    def __call__(self, value, label):
        if not isinstance(value, str) or not self.regex.fullmatch(value):
            raise self.fail(value, label)
        return value


class Duration(Check):
    """A wall-clock span written with its unit (``90s``, ``10m``, ``1.5h``), returned in seconds.

    >>> Duration()("10m", "--time-budget")
    600.0
    """

    UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
    expected = "a duration with its unit, e.g. 90s, 10m or 1h"

    def __init__(self, high_s: float = 7 * 24 * 3600.0):
        self.high_s = high_s

    def __call__(self, value, label):
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh])\s*", value) if isinstance(value, str) else None
        if not match:
            raise self.fail(value, label)
        seconds = float(match[1]) * self.UNITS[match[2]]
        if not 0 < seconds <= self.high_s:
            raise InvalidOption(f"{label} must be above 0 and at most {self.high_s / 3600:g}h, not {shown(value)}")
        return seconds


class Bool(Check):
    expected = "true or false"

    def __call__(self, value, label):
        if not isinstance(value, bool):
            raise self.fail(value, label)
        return value


class Text(Check):
    """A non-empty string (a path is turned into one)."""

    def __init__(self, expected: str = "a non-empty string"):
        self.expected = expected

    def __call__(self, value, label):
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(value, label)
        return value


class InputPath(Text):
    """A file or folder that must exist (a stat, so that a typo fails before the slow imports)."""

    def __init__(self, expected: str, name: str):
        super().__init__(expected)
        self.name = name

    def __call__(self, value, label):
        value = super().__call__(value, label)
        if not Path(value).exists():
            raise InvalidOption(f"{self.name} not found: {value} (give {self.expected})")
        return value


# DATA of every command: discovered by posetune.data.layouts
DATA = InputPath("a folder of class folders, split folders, or a CSV", "DATA")


class OutputPath(Text):
    """A path to write: a folder (``folder=True``) or a file. Only a stat: a file where a folder must go (or
    a folder where the file must go) fails now rather than after the work."""

    def __init__(self, folder: bool):
        super().__init__("a folder path" if folder else "a file path")
        self.folder = folder

    def __call__(self, value, label):
        value = super().__call__(value, label)
        path = Path(value)
        if not self.folder and path.is_dir():
            raise InvalidOption(f"{label} must be {self.expected}, not {value!r}: that is a folder")
        for p in (path, *path.parents) if self.folder else path.parents:
            if p.exists():
                if not p.is_dir():
                    raise InvalidOption(f"{label} must be {self.expected}, not {value!r}: {p} is a file")
                break
        return value


class Names(Check):
    """A non-empty list of names: ``"a,b"`` or ``["a", "b"]``; repeats are dropped, or an error with ``unique``."""

    def __init__(self, example: str, unique: bool = False):
        self.example, self.unique = example, unique
        self.expected = f"a comma-separated list like {example}"

    def __call__(self, value, label):
        if isinstance(value, str):
            items = value.split(",")
        elif isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
            items = [x for v in value for x in v.split(",")]
        else:
            raise self.fail(value, label)
        names = [x.strip() for x in items if x.strip()]
        if not names:
            raise self.fail(value, label)
        if self.unique and len(set(names)) != len(names):
            repeated = sorted({n for n in names if names.count(n) > 1})
            raise InvalidOption(f"{label} names {', '.join(repeated)} more than once; give each once")
        return list(dict.fromkeys(names))


class Paths(Check):
    """One or more file or folder paths (a single path is a list of one)."""

    expected = "a list of files or folders"

    def __call__(self, value, label):
        if isinstance(value, (str, os.PathLike)):
            value = [value]
        if not isinstance(value, Sequence) or not value:
            raise self.fail(value, label)
        return [Text("a file or folder path")(v, label) for v in value]


def option(default: Any = None, check: Check | None = None, flag: str | None = None, hint: str = "",
           factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with its check; ``flag`` names it in errors (default ``--field-name``).

    A field whose default is None also accepts None (meaning: the command picks, and says what it picked)."""
    metadata = {"check": check, "flag": flag, "hint": hint}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


class Options:
    """Base of every command's options dataclass: the field checks of :func:`option`, then :meth:`check_together`."""

    def validate(self: T) -> T:
        """Check every value before any file is read or written; returns self with values normalised."""
        return self._validate({})

    def check_together(self, label: Callable[[str], str]) -> None:
        """Checks across fields or against a registry (strategy names, backbones), after the field checks.
        ``label(field)`` is how to name a field in a message: its flag, or its key and config file."""

    def _validate(self: T, labels: dict[str, str]) -> T:
        fields = {f.name: f for f in dataclasses.fields(self)}
        for f in fields.values():
            check = f.metadata.get("check")
            value = getattr(self, f.name)
            if check is None or (value is None and f.default is None):
                continue
            try:
                setattr(self, f.name, check(value, labels.get(f.name, flag_of(f))))
            except InvalidOption as exc:
                hint = f.metadata.get("hint")
                raise InvalidOption(f"{exc}; {hint}" if hint else str(exc)) from None
        self.check_together(lambda name: labels.get(name, flag_of(fields[name])))
        return self

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def build(cls: type[T], command: str = "", /, **values) -> T:
        """From Python API keywords: an unknown keyword is an error naming the valid ones."""
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            where = f" of {command}" if command else ""
            raise InvalidOption(f"unknown option(s) {', '.join(unknown)}{where}; valid: {', '.join(cls.names())}")
        return cls(**values).validate()

    @classmethod
    def from_sources(cls: type[T], config: str | Path | None = None, **overrides) -> T:
        """A YAML config first, then the overrides (flags, keywords; None = not given) on top.

        A bad value from the config is named by its key and the file (``epochs in c.yaml must be ...``)."""
        values: dict = {}
        labels: dict[str, str] = {}
        if config:
            values = read_config(config)
            unknown = sorted(set(values) - set(cls.names()))
            if unknown:
                raise InvalidOption(f"unknown key(s) {', '.join(unknown)} in {config}; valid keys: "
                                    f"{', '.join(cls.names())}")
            labels = {k: f"{k} in {config}" for k in values}
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(given) - set(cls.names()))
        if unknown:
            raise InvalidOption(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(cls.names())}")
        for k in given:
            labels.pop(k, None)
        return cls(**{**values, **given})._validate(labels)


def read_config(path: str | Path) -> dict:
    """A YAML mapping of option: value (keys may use - or _)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise UsageError(f"{path} must hold a mapping of option: value, like `epochs: 10`")
    return {k.replace("-", "_"): v for k, v in values.items()}
