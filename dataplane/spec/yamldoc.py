"""Strict reading of YAML documents, with errors that name the file, line, field and expectation.

PyYAML keeps no positions and silently accepts duplicate keys; this loader records the line of
every key and rejects duplicates. `Doc` walks a mapping field by field and, when done, rejects any
field it was not asked for (with a did-you-mean), so a typo is an error, not a silent default.
"""
from __future__ import annotations

import contextlib
import difflib
from ipaddress import IPv4Address, IPv4Network

import yaml

from ..errors import ScenarioError, ScenarioErrors

MISSING = object()


class LineDict(dict):
    """A mapping that remembers the line of each key (and of itself)."""
    line = None

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.lines = {}


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader, node):
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    for knode, vnode in node.value:
        key = loader.construct_object(knode, deep=True)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {out.lines[key]})", knode.start_mark)
        out[key] = loader.construct_object(vnode, deep=True)
        out.lines[key] = knode.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_all(path) -> list:
    """Every YAML document in a file, or a ScenarioError saying where the YAML is malformed."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise ScenarioError(path, None, "no such file") from None
    except OSError as exc:
        raise ScenarioError(path, None, f"cannot read: {exc.strerror}") from None
    try:
        return [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScenarioError(where, None, f"malformed YAML: {problem}") from None


def _kind(value) -> str:
    return {dict: "a mapping", LineDict: "a mapping", list: "a list", str: "a string",
            int: "a number", bool: "true or false", float: "a number",
            type(None): "nothing"}.get(type(value), type(value).__name__)


class Problems:
    """Every error of one file, so that one pass reports them all. A parse step runs under
    `recover()`: its first error is recorded and the next step goes on."""

    def __init__(self):
        self.errors: list[ScenarioError] = []

    @contextlib.contextmanager
    def recover(self):
        try:
            yield
        except ScenarioErrors as exc:
            self.errors.extend(exc.errors)
        except ScenarioError as exc:
            self.errors.append(exc)

    def check(self) -> None:
        """Raise every error recorded so far, in file order."""
        if self.errors:
            raise ScenarioErrors(sorted(self.errors, key=_position))


def _position(error: ScenarioError):
    file, _, line = error.file.partition(":")
    return file, int(line.split(":")[0]) if line.split(":")[0].isdigit() else 0


class Doc:
    """A cursor on one mapping of a YAML file: `take` fields, then `done()`. Docs made from it
    (sub, items) share its Problems, if it has one; without, the first error is raised."""

    def __init__(self, file, value, path: str = "", line: int | None = None, problems: Problems | None = None):
        self.file, self.path = str(file), path
        self.problems = problems
        self.line = getattr(value, "line", None) or line
        if not isinstance(value, dict):
            self.value = {}
            self.fail(None, f"expected a mapping, got {_kind(value)}")
        self.value, self.taken = value, set()
        self.misspelt: set = set()

    # -- errors ----------------------------------------------------------------------------------

    def line_of(self, key=None) -> int | None:
        line = getattr(self.value, "lines", {}).get(key) if key is not None else None
        return line or self.line

    def where(self, key=None) -> str:
        line = self.line_of(key)
        return f"{self.file}:{line}" if line else self.file

    def field(self, key=None) -> str:
        if key is None:
            return self.path or "(top level)"
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else str(key)

    def fail(self, key, message):
        raise ScenarioError(self.where(key), self.field(key), message)

    def recover(self):
        """A step whose first error is recorded (with Problems) and skipped, not raised."""
        return self.problems.recover() if self.problems is not None else contextlib.nullcontext()

    # -- reading ---------------------------------------------------------------------------------

    def has(self, key) -> bool:
        return key in self.value

    def take(self, key, types=None, default=MISSING, expect: str | None = None):
        """The value of `key`, checked to be of `types` (`expect` words the expectation)."""
        self.taken.add(key)
        if key not in self.value:
            if default is MISSING:
                self._missing(key, expect)
            return default
        value = self.value[key]
        if types is not None:
            ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in _tuple(types))
            if not ok:
                self.fail(key, f"expected {expect or _names(types)}, got {_kind(value)} {value!r}")
        return value

    def _missing(self, key, expect):
        """A required field is absent: if an unknown field looks like it, that is the error."""
        unknown = [str(k) for k in self.value if k not in self.taken]
        typo = difflib.get_close_matches(str(key), unknown, n=1)
        if typo:
            self.misspelt.add(typo[0])      # reported here, not again by done()
            self.fail(typo[0], f"unknown field {typo[0]!r}; did you mean {key!r}? ({key!r} is required)")
        self.fail(None, f"missing required field {key!r}" + (f" ({expect})" if expect else ""))

    def take_str(self, key, default=MISSING, choices=None, expect=None) -> str:
        value = self.take(key, str, default, expect or (f"one of {', '.join(choices)}" if choices else None))
        if choices and value is not default and value not in choices:
            self.fail(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def take_int(self, key, default=MISSING, lo=None, hi=None, expect=None) -> int:
        value = self.take(key, int, default, expect)
        if value is not default and ((lo is not None and value < lo) or (hi is not None and value > hi)):
            self.fail(key, f"expected {expect or f'a number from {lo} to {hi}'}, got {value}")
        return value

    def take_bool(self, key, default=MISSING) -> bool:
        return self.take(key, bool, default, "true or false")

    def take_ip(self, key, default=MISSING) -> IPv4Address:
        value = self.take(key, str, default, "an IPv4 address such as 10.0.1.5")
        if value is default:
            return value
        try:
            return IPv4Address(value)
        except ValueError:
            self.fail(key, f"expected an IPv4 address such as 10.0.1.5, got {value!r}")

    def take_cidr(self, key, default=MISSING) -> IPv4Network:
        value = self.take(key, str, default, "an IPv4 CIDR such as 10.0.0.0/16")
        if value is default:
            return value
        return self.parse_cidr(key, value)

    def parse_cidr(self, key, value) -> IPv4Network:
        try:
            return IPv4Network(value)
        except ValueError as exc:
            self.fail(key, f"expected an IPv4 CIDR such as 10.0.0.0/16, got {value!r} ({exc})")

    def take_list(self, key, default=MISSING) -> list:
        return self.take(key, list, default, "a list")

    def sub(self, key, default=MISSING) -> "Doc | None":
        """The mapping at `key` as a Doc. Absent: an error without default, None with default
        None, an empty Doc (all its fields defaulted) with default {}."""
        value = self.take(key, dict, default, "a mapping")
        if value is default:
            return None if default is None else Doc(self.file, {}, self.field(key), self.line_of(key), self.problems)
        return Doc(self.file, value, self.field(key), problems=self.problems)

    def items(self, key) -> list:
        """(Doc-or-scalar, field, where) for each item of the list at `key` (absent: empty)."""
        out = []
        values = []
        with self.recover():      # a wrong type is recorded (with Problems) and read as no items
            values = self.take_list(key, [])
        for i, item in enumerate(values):
            path = f"{self.field(key)}[{i}]"
            if isinstance(item, dict):
                out.append(Doc(self.file, item, path, problems=self.problems))
            else:
                out.append(Scalar(self.file, item, path, self.line_of(key), self.problems))
        return out

    def done(self) -> None:
        """Every field not taken is an error: each one recorded (with Problems), else the first
        raised."""
        known = sorted(str(k) for k in self.taken)
        for key in [k for k in self.value if k not in self.taken and k not in self.misspelt]:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            with self.recover():
                self.fail(key, f"unknown field {key!r}{hint} (expected one of: {', '.join(known)})")


class Scalar:
    """A list item that is not a mapping, with where it stands for errors."""

    def __init__(self, file, value, path, line, problems: Problems | None = None):
        self.file, self.value, self.path, self.line = str(file), value, path, line
        self.problems = problems

    def as_doc(self, key: str) -> Doc:
        """The scalar as the one field `key` of a mapping (`- node1` read as `- {name: node1}`)."""
        return Doc(self.file, {key: self.value}, self.path, self.line, self.problems)

    def recover(self):
        return self.problems.recover() if self.problems is not None else contextlib.nullcontext()

    def fail(self, message):
        raise ScenarioError(f"{self.file}:{self.line}" if self.line else self.file, self.path, message)


def _tuple(types):
    return types if isinstance(types, tuple) else (types,)


def _names(types) -> str:
    return " or ".join(_kind(t()) if t not in (dict,) else "a mapping" for t in _tuple(types))
