"""The one YAML reader: every config, sweep file and saved config is read here.

A YAML file is user input, so each way it can be wrong ends as one `UserError` line before any
work starts, never a traceback and never a process that hangs or eats the host's memory:

- not a readable regular file (missing, a directory, no permission);
- larger than `MAX_BYTES` (a config is a few KiB; a huge file is a mistake, e.g. a data file);
- not UTF-8, or holding a character YAML forbids (NUL, other control characters, a lone
  surrogate): the line names the byte offset of the first bad byte. A UTF-8 byte-order mark, as
  Windows editors write it, is read as the text it starts;
- a section (a mapping) given twice in one mapping: YAML keeps the last silently, so the first
  section's keys would vanish; the line names both lines. A plain key given twice keeps YAML's
  rule, the later value wins, since the seed's own config.yaml overrides its defaults that way
  (and must load unchanged); it is said in one warning line naming both lines and the value used;
- an alias bomb ("billion laughs": a few lines of anchors that expand to 10**9 nodes when the
  config is flattened, hashed or dumped): at most `MAX_ALIASES` aliases and `MAX_NODES` nodes
  once aliases are expanded;
- nesting deeper than `MAX_DEPTH` (PyYAML's composer recurses: `[[[[...]]]]` a few thousand
  deep is a RecursionError, refused here long before that).

Only PyYAML's safe constructors are used (no Python objects from tags).
"""

from __future__ import annotations

import codecs
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from lmprof.errors import UserError

MAX_BYTES = 1024**2
MAX_DEPTH = 64
MAX_ALIASES = 200
MAX_NODES = 200_000
# What YAML's reader refuses (PyYAML's Reader.NON_PRINTABLE): matched here first, so the line
# names the byte offset and the file, not a PyYAML traceback from the loader's constructor.
_UNPRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class _Refused(yaml.YAMLError):
    """Raised inside the loader; turned into one UserError line by `parse`."""


class _SafeLoader(yaml.SafeLoader):
    """SafeLoader that counts depth and aliases while composing and refuses duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self.duplicates: list[tuple[Any, int, int, Node]] = []  # key, first line, line, value

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                line = self.peek_event().start_mark.line + 1
                raise _Refused(f"more than {MAX_ALIASES} aliases (line {line}): refused")
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels (line {line}): refused")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, tuple[int, Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merge keys (`<<: *base`) may be overridden: that is their point
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                continue
            if first is not None:
                first_line, first_value = first
                if isinstance(first_value, MappingNode) or isinstance(value_node, MappingNode):
                    raise _Refused(f"'{key}' is given twice (lines {first_line} and {line})")
                self.duplicates.append((key, first_line, line, value_node))
            seen[key] = (line, value_node)
        return super().construct_mapping(node, deep=deep)


_WARNED: set[str] = set()


def _warn_once(line: str) -> None:
    # A sweep file is read by the sweep and again by each run's process: say it once per process.
    if line not in _WARNED:
        _WARNED.add(line)
        print(f"lmprof: warning: {line}", file=sys.stderr)


def _expanded_nodes(root: Node) -> int:
    """The number of nodes with every alias expanded, counted without expanding (memoised by
    node identity), so an alias bomb is measured in microseconds."""
    memo: dict[int, int] = {}
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:  # iterative: a deep graph must not recurse here either
        node, done = stack.pop()
        if id(node) in memo:
            continue
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        if done:
            memo[id(node)] = min(1 + sum(memo[id(c)] for c in children), MAX_NODES + 1)
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in memo)
    return memo[id(root)]


def _flow_depth(text: str) -> int:
    """The deepest nesting of flow brackets (`[`, `{`), quotes and comments skipped roughly.

    PyYAML's scanner looks ahead over every open bracket before the composer sees the first
    node (quadratic: 5000 `[` take half a second), so deep flow nesting is refused first."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return 0  # the common case, in microseconds
    depth = deepest = 0
    quote = ""
    comment = False
    for ch in text:
        if comment:
            comment = ch != "\n"
        elif quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            comment = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(depth - 1, 0)
    return deepest


def parse(text: str, source: str = "YAML text") -> Any:
    """The value of one YAML document in `text`; `source` names it in the error line."""
    bad = _UNPRINTABLE.search(text)
    if bad:
        where = len(text[: bad.start()].encode("utf-8", "surrogatepass"))
        line = text.count("\n", 0, bad.start()) + 1
        raise UserError(
            f"{source} holds {_describe(bad.group())} at byte offset {where} (line {line}): "
            "YAML allows printable text, tabs and line breaks only"
        )
    text = text.removeprefix(codecs.BOM_UTF8.decode())  # as Windows editors write it
    if _flow_depth(text) > MAX_DEPTH:
        raise UserError(f"{source}: nested deeper than {MAX_DEPTH} levels: refused")
    loader = None
    try:
        loader = _SafeLoader(text)  # its reader checks the text too: inside the handlers
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_nodes(node) > MAX_NODES:
            raise _Refused(f"expands to more than {MAX_NODES} nodes (an alias bomb?): refused")
        value = loader.construct_document(node)
        for key, first, line, value_node in loader.duplicates:
            _warn_once(
                f"{source}: '{key}' is given twice (lines {first} and {line}); the later value, "
                f"{getattr(value_node, 'value', '')!r}, is used"
            )
        return value
    except _Refused as exc:
        raise UserError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise UserError(f"{source} is not valid YAML{where}: {problem}") from None
    except RecursionError:  # belt and braces: MAX_DEPTH stops it long before
        raise UserError(f"{source}: nested too deeply: refused") from None
    finally:
        if loader is not None:
            loader.dispose()


def _describe(ch: str) -> str:
    code = ord(ch)
    if 0xD800 <= code <= 0xDFFF:
        return f"a lone surrogate U+{code:04X}"
    if code == 0:
        return "a NUL byte"
    return f"the control character U+{code:04X}"


def read_text(path: str | Path, what: str = "file", max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of a regular file, or one UserError line saying why not."""
    p = Path(path)
    label = f"{what} '{path}'"
    try:
        if not p.exists():
            raise UserError(f"{label} does not exist")
        if p.is_dir():
            raise UserError(f"{label} is a directory, not a file")
        if not p.is_file():
            raise UserError(f"{label} is not a regular file")
        with open(p, "rb") as f:
            data = f.read(max_bytes + 1)  # never more than the limit, whatever stat says
    except PermissionError:
        raise UserError(f"{label} cannot be read: permission denied") from None
    except OSError as exc:
        raise UserError(f"{label} cannot be read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise UserError(f"{label} is larger than {max_bytes // 1024} KiB: refused")
    try:
        return data.decode("utf-8")  # a byte-order mark stays: `parse` counts it, then drops it
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{label} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None


def load_file(path: str | Path, what: str = "YAML file") -> Any:
    """The value of the YAML document in a file (None when it is empty)."""
    return parse(read_text(path, what), f"{what} '{path}'")


def load_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file that must hold a mapping (an empty file is an empty mapping)."""
    data = load_file(path, what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise UserError(f"{what} '{path}' must hold a mapping of keys to values, not a {kind}")
    return data
