"""The standard library as a corpus (`data.source=stdlib`): the .py modules and text documents
that ship with this Python, in sorted order, without test suites and build-specific files."""

from __future__ import annotations

import os
import platform
import sys
import sysconfig
from pathlib import Path
from typing import Any

from lmprof.data.text_source import FileSource
from lmprof.errors import UserError

STDLIB_SUFFIXES = (".py", ".txt", ".rst")
# Test suites (tens of MB of generated data and odd encodings), byte-compiled files, installed
# packages and build-specific files (paths and flags of the machine Python was built on).
STDLIB_SKIP_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"}


class StdlibSource(FileSource):
    """The .py modules and the text documents that ship with this Python's standard library."""

    kind = "stdlib"

    def __init__(self, root: str | Path | None = None, max_files: int = 0):
        self.root = Path(root or sysconfig.get_paths()["stdlib"])
        self.max_files = max_files  # the first N files (sorted); 0 = all. Part of the identity
        self._files: list[tuple[str, Path]] | None = None

    def identity(self) -> dict[str, Any]:
        ident: dict[str, Any] = {"kind": "stdlib", "python": _python_tag()}
        if self.max_files:
            ident["max_files"] = self.max_files
        return ident

    def label(self) -> str:
        return f"stdlib-{_python_tag()}"

    def describe(self) -> str:
        return f"the standard library at {self.root}"

    def files(self) -> list[tuple[str, Path]]:
        if self._files is None:
            if not self.root.is_dir():
                raise UserError(f"data.source=stdlib: the standard library {self.root} is missing")
            found = []
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames[:] = [d for d in dirnames if not _skip_stdlib_dir(d)]
                for name in filenames:
                    if name.endswith(STDLIB_SUFFIXES) and not name.startswith("_sysconfigdata"):
                        path = Path(dirpath, name)
                        found.append((path.relative_to(self.root).as_posix(), path))
            found.sort()  # os.walk's order is the file system's; sorting makes it portable
            if self.max_files:
                found = found[: self.max_files]
            self._files = found
        return self._files


def _skip_stdlib_dir(name: str) -> bool:
    return name in STDLIB_SKIP_DIRS or name.startswith((".", "config-"))


def _python_tag() -> str:
    impl = platform.python_implementation().lower()
    return f"{impl}{sys.version_info.major}.{sys.version_info.minor}"
