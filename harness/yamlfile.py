"""YAML files read strictly: duplicate keys refused, the text of every number kept
(a message can say "YAML reads 6.10 as 6.1"), and a table reader that checks each key
it takes and refuses what is left. Every error names the file, the key and what was
expected."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Hashable, Mapping, TypeVar

import yaml

from harness.errors import ConfigError

T = TypeVar("T")


def join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


class DuplicateKey(Exception):
    def __init__(self, key: str, lines: list[int]) -> None:
        super().__init__(key)
        self.key, self.lines = key, lines


class Loader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the
    last), and keeps the text of every number so a message can quote what was typed."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.paths: dict[int, str] = {}  # id of a collection node -> its key path
        self.numbers: dict[str, str] = {}  # key path of a number -> its text

    def construct_document(self, node: yaml.Node) -> Any:
        self._walk(node, "")
        return super().construct_document(node)

    def _walk(self, node: yaml.Node, path: str) -> None:
        if id(node) in self.paths:  # an alias: walked already
            return
        if isinstance(node, yaml.MappingNode):
            self.paths[id(node)] = path
            for key, value in node.value:
                self._walk(value, join(path, str(key.value)))
        elif isinstance(node, yaml.SequenceNode):
            self.paths[id(node)] = path
            for i, value in enumerate(node.value):
                self._walk(value, f"{path}[{i}]")
        elif node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
            self.numbers[path] = str(node.value)

    def construct_mapping(self, node: yaml.MappingNode,
                          deep: bool = False) -> dict[Hashable, Any]:
        lines: dict[Any, list[int]] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # << may be overridden
                continue
            try:
                lines.setdefault(self.construct_object(key_node, deep=deep), []).append(
                    key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: the base class refuses it
                pass
        for key, at in lines.items():
            if len(at) > 1:
                raise DuplicateKey(join(self.paths.get(id(node), ""), str(key)), at)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path, what: str) -> tuple[Any, dict[str, str]]:
    """A YAML file's data, and the text of each number in it by key path."""
    file = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(file, "(file)", f"a readable {what} ({exc.strerror})") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(file, "(file)", f"UTF-8 text (byte 0x{data[exc.start]:02x} "
                                          f"at offset {exc.start})") from None
    loader = Loader(text)
    try:
        return loader.get_single_data(), loader.numbers
    except DuplicateKey as exc:
        *head, last = map(str, exc.lines)
        raise ConfigError(file, exc.key, "a key given once, but it appears on lines "
                                         f"{', '.join(head)} and {last}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(file, "(file)", f"valid YAML ({exc})".replace("\n", " ")) from exc
    finally:
        loader.dispose()


class Table:
    """A YAML mapping being read: every key taken is checked, leftovers are errors."""

    def __init__(self, data: Any, file: str, where: str,
                 numbers: Mapping[str, str] | None = None) -> None:
        if not isinstance(data, dict):
            raise ConfigError(file, where or "(top level)", "expected a mapping")
        self.data = dict(data)
        self.file = file
        self.where = where
        self.numbers = numbers or {}

    def key(self, name: str) -> str:
        return join(self.where, name)

    def quote_hint(self, key: str, value: object) -> str:
        """Why a number stands where a string was expected, and the fix."""
        text = self.numbers.get(key)
        if text is None or isinstance(value, bool):
            return ""
        read = "a number" if text == repr(value) else f"the number {value!r}"
        return f' (YAML reads {text} as {read}: write "{text}" in quotes)'

    def take(self, name: str, kind: type[T], default: T | None = None,
             required: bool = False) -> T:
        key = self.key(name)
        if name not in self.data:
            if required:
                raise ConfigError(self.file, key, "missing (required)")
            return default  # type: ignore[return-value]
        value = self.data.pop(name)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value) if abs(value) < 2**1000 else math.inf
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            hint = self.quote_hint(key, value) if kind is str else ""
            raise ConfigError(self.file, key, f"expected {kind.__name__}{hint}, "
                                              f"got {type(value).__name__} {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(self.file, key,
                              f"a finite number, got {self.numbers.get(key, value)}")
        return value

    def strings(self, name: str, default: tuple[str, ...] = (),
                required: bool = False) -> tuple[str, ...]:
        """A list of strings; a number is refused, not converted: 6.10 would be 6.1."""
        value = self.take(name, list, list(default), required)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                key = f"{self.key(name)}[{i}]"
                raise ConfigError(self.file, key,
                                  f"a string{self.quote_hint(key, item)}, got {item!r}")
        return tuple(value)

    def sub(self, name: str) -> "Table":
        return Table(self.take(name, dict, {}), self.file, self.key(name), self.numbers)

    def done(self) -> None:
        if self.data:
            extra = sorted(map(str, self.data))[0]
            raise ConfigError(self.file, self.key(extra), "unknown key")
