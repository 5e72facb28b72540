"""Denylist lint for CPython-only APIs that the MicroPython stubs do not catch (spec micropython.md
§1c, §3.4). Run on CPython over files or directories:

    .venv/bin/python tests/mpy/lint.py firmware_bridge

Prints `path:line: message` per finding; exit 1 if there is any.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

# modules absent from the MicroPython unix port / ESP32 firmware (or never allowed in the
# firmware: the agent side and pyserial)
BANNED_MODULES = {
    "__future__", "abc", "argparse", "contextlib", "copy", "dataclasses", "datetime", "enum",
    "functools", "inspect", "itertools", "logging", "pathlib", "queue", "serial", "string",
    "threading", "traceback", "types", "typing", "typing_extensions", "unittest", "warnings",
    "zlib", "os.path", "agent", "hil", "paho", "cbor2", "numpy",
}
# (module, attribute) pairs that do not exist on MicroPython
BANNED_ATTRS = {
    ("struct", "Struct"), ("struct", "iter_unpack"), ("struct", "error"),
    ("time", "monotonic"), ("time", "monotonic_ns"), ("time", "perf_counter"),
    ("time", "perf_counter_ns"), ("time", "process_time"), ("binascii", "crc_hqx"),
    ("sys", "getsizeof"), ("sys", "exc_info"), ("asyncio", "Queue"), ("collections", "defaultdict"),
    ("os", "path"), ("os", "read"), ("os", "write"), ("os", "fsync"), ("functools", "lru_cache"),
}
# method names that do not exist on MicroPython's int/bytes/memoryview/hash objects
BANNED_METHODS = {
    "bit_length": "int.bit_length() is missing; count bits with a loop",
    "bit_count": "int.bit_count() is missing",
    "hexdigest": "hashlib objects have digest() only; use .digest().hex()",
    "tobytes": "memoryview.tobytes() is missing; use bytes(mv)",
    "cast": "memoryview.cast() is missing",
    "iter_unpack": "struct.iter_unpack is missing",
    "removeprefix": "str/bytes.removeprefix is missing",
    "removesuffix": "str/bytes.removesuffix is missing",
}
# builtins missing on MicroPython
BANNED_NAMES = {
    "TimeoutError", "ExceptionGroup", "ConnectionError", "ConnectionResetError",
    "ConnectionRefusedError", "ConnectionAbortedError", "FileNotFoundError", "FileExistsError",
    "PermissionError", "BrokenPipeError", "BlockingIOError", "InterruptedError",
    "ChildProcessError", "ProcessLookupError", "IsADirectoryError", "NotADirectoryError",
    "BaseExceptionGroup", "aiter", "anext", "breakpoint",
}
KW_ONLY_IN_CPYTHON = {
    "from_bytes": "int.from_bytes takes positional arguments only on MicroPython",
    "to_bytes": "int.to_bytes keyword arguments differ on MicroPython; pass them positionally",
}


class Finding:
    def __init__(self, path: str, line: int, message: str) -> None:
        self.path, self.line, self.message = path, line, message

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def _module_of(node: ast.expr) -> str | None:
    return node.id if isinstance(node, ast.Name) else None


def check_source(source: str, path: str = "<string>") -> list[Finding]:
    """Findings for one module's source (a SyntaxError is a finding too)."""
    try:
        tree = ast.parse(source, path)
    except SyntaxError as exc:
        return [Finding(path, exc.lineno or 0, f"syntax error: {exc.msg}")]
    out: list[Finding] = []

    def add(node: ast.AST, msg: str) -> None:
        out.append(Finding(path, getattr(node, "lineno", 0), msg))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if alias.name in BANNED_MODULES or top in BANNED_MODULES:
                    add(node, f"import {alias.name}: not available on MicroPython")
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if mod in BANNED_MODULES or mod.split(".")[0] in BANNED_MODULES:
                add(node, f"from {mod} import ...: not available on MicroPython")
            for alias in node.names:
                if (mod, alias.name) in BANNED_ATTRS:
                    add(node, f"from {mod} import {alias.name}: missing on MicroPython")
        elif isinstance(node, ast.Attribute):
            mod = _module_of(node.value)
            if mod is not None and (mod, node.attr) in BANNED_ATTRS:
                add(node, f"{mod}.{node.attr}: missing on MicroPython")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                if func.attr in BANNED_METHODS:
                    add(node, f".{func.attr}(): {BANNED_METHODS[func.attr]}")
                if func.attr in KW_ONLY_IN_CPYTHON and node.keywords:
                    add(node, f".{func.attr}(keyword=...): {KW_ONLY_IN_CPYTHON[func.attr]}")
                if (func.attr == "dumps" and _module_of(func.value) == "json"
                        and any(k.arg == "indent" for k in node.keywords)):
                    add(node, "json.dumps(indent=...): not supported on MicroPython")
                if (func.attr == "deque" and _module_of(func.value) == "collections"
                        and len(node.args) < 2):
                    add(node, "collections.deque needs (iterable, maxlen) on MicroPython")
        elif isinstance(node, ast.Name) and node.id in BANNED_NAMES:
            add(node, f"{node.id}: builtin missing on MicroPython")
        elif isinstance(node, ast.Match):
            add(node, "match statement: not supported by MicroPython")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            if node.args.posonlyargs:
                add(node, "positional-only parameters (/): not supported by MicroPython")
        elif isinstance(node, ast.Raise) and node.cause is not None:
            add(node, "raise ... from ...: MicroPython prints a warning and drops the cause")
        elif isinstance(node, (ast.List, ast.Tuple, ast.Set)) and isinstance(node.ctx, ast.Load):
            if any(isinstance(e, ast.Starred) for e in node.elts):
                add(node, "[*a] / (*a,) display unpacking: not supported by MicroPython")
        elif isinstance(node, ast.Dict) and any(k is None for k in node.keys):
            add(node, "{**d} display unpacking: not supported by MicroPython")
        elif isinstance(node, ast.TryStar):
            add(node, "except*: not supported by MicroPython")
    return out


def iter_files(paths: list[str]) -> Iterator[Path]:
    for p in paths:
        path = Path(p)
        if path.is_dir():
            yield from sorted(path.rglob("*.py"))
        else:
            yield path


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    findings: list[Finding] = []
    for path in iter_files(argv):
        findings += check_source(path.read_text(), str(path))
    for f in findings:
        print(f)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
