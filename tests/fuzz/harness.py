"""What the fuzz harnesses in tests/fuzz share: the atheris runner, the input reader and the
known-bug table.

A harness `fuzz_<target>.py` defines `test_one_input(data: bytes)`: plain Python that raises only
for a bug (an exception the component must not let out, or a broken invariant) and returns for
everything else. It imports the product modules inside `instrumented(__name__ == "__main__")`, so
atheris instruments them when the file runs as a fuzzer while `tests/unit/test_fuzz_corpus.py`
replays the corpus through the same function without atheris.

Run one: ``python tests/fuzz/fuzz_<target>.py [-runs=N] [libFuzzer flags] [corpus dirs]``. With no
corpus dir the new inputs go to build/fuzz/<target>/corpus and the regression corpus
tests/fuzz/corpus/<target> is read too; seeds from real inputs (vectors, sample config, scenarios)
are written to build/fuzz/<target>/seeds and added whenever every path given is a folder. Crashes
land in build/fuzz/<target>/artifacts/; ``python tests/fuzz/fuzz_<target>.py FILE`` replays one.
``FUZZ_IGNORE_KNOWN=1`` lets the fuzzer go on past the bugs listed in the harness's KNOWN_BUGS
(they still fail without it). After a campaign, ``python tests/fuzz/merge.py`` folds what it
found into the regression corpus.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import functools
import importlib
import os
import shutil
import struct
import sys
import tempfile
import traceback
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FUZZ_DIR = Path(__file__).resolve().parent
ROOT = FUZZ_DIR.parents[1]
CORPUS_DIR = FUZZ_DIR / "corpus"
WORK_DIR = ROOT / "build" / "fuzz"
PRODUCT = ("agent", "firmware_bridge", "hil")

if str(ROOT) not in sys.path:  # the work tree's packages, also when run as a bare script
    sys.path.insert(1, str(ROOT))


def instrumented(active: bool) -> contextlib.AbstractContextManager[Any]:
    """`atheris.instrument_imports()` for our packages when `active` (run as the fuzzer); a
    module a harness reaches only through a lazy import must be imported in the block too."""
    if not active:
        return contextlib.nullcontext()
    import atheris

    return atheris.instrument_imports(include=list(PRODUCT))


def preload(*modules: str) -> None:
    """Import `modules` now (inside `instrumented`, so they are instrumented) when they exist:
    those the code under test imports lazily, inside a function."""
    for name in modules:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


class Reader:
    """Reads a fuzz input front to back; past the end every read gives zeros / empty bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.pos = 0

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + max(0, n)]
        self.pos += len(out)
        return out

    def u8(self) -> int:
        b = self.take(1)
        return b[0] if b else 0

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(self.take(nbytes).ljust(nbytes, b"\0"), "little")

    def sint(self, nbytes: int) -> int:
        return int.from_bytes(self.take(nbytes).ljust(nbytes, b"\0"), "little", signed=True)

    def chunk(self) -> bytes:
        """A length byte, then that many bytes."""
        return self.take(self.u8())

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def chunks(data: bytes, size: int) -> list[bytes]:
    """`data` in pieces of `size` bytes (0: in one piece)."""
    if size <= 0:
        return [data]
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


class StreamWatch:
    """A stream parser fed in chunks, with the errors its `_hunt` raises kept (the parser's own
    catch-all would swallow them). `run` feeds, flushes when `flush` is set, resyncs until
    nothing is pending, and fails on the first swallowed error."""

    def __init__(self, parser: Any, flush: bool) -> None:
        self.parser = parser
        self.flush = flush
        self.errors: list[BaseException] = []
        self.fed = 0
        hunt = parser._hunt

        def watched(data: Any, final: bool) -> Any:
            try:
                return hunt(data, final)
            except Exception as exc:
                self.errors.append(exc)
                raise

        parser._hunt = watched

    def run(self, stream: bytes, chunk: int) -> list[Any]:
        p = self.parser
        out: list[Any] = []
        for piece in chunks(stream, chunk):
            self.fed += len(piece)
            out += p.feed(piece)
        if self.flush:
            out += p.flush()
        for _ in range(len(stream) + 2):
            if not p.pending():
                break
            out += p.resync()
        if self.errors:
            raise AssertionError(f"{type(p).__name__} swallowed an error") from self.errors[0]
        return out


# strings a key may mishandle: empty, blank, NUL, a home folder ("~user" is expanded in path
# keys), a parent folder, a wildcard, a reserved id, long, non-ASCII
EDGE_STRINGS = ("", " ", "\0", "~", "~fuzz-no-such-user/", "../", "/", "*", "all", "x" * 300, "é",
                "mqtt://")


class TomlEdits:
    """Structure-aware inputs for the TOML readers: a document from `docs` (parsed seeds) with
    edits read from the fuzz bytes. An edit picks a table anywhere in the document and deletes,
    replaces or adds a key (names from every document), the value drawn from the documents' own
    values or made up with a TOML type: int, float (inf, nan too), bool, string, date/time,
    array, table. Reaches the checks between keys that byte mutations of TOML text rarely do.
    `names`: more key names (e.g. of the dataclasses the reader fills)."""

    def __init__(self, docs: list[dict[str, Any]], names: Iterable[str] = ()) -> None:
        self.docs = docs
        names = dict.fromkeys(names)
        values: list[Any] = []
        for doc in docs:
            self._collect(doc, names, values)
        self.names = list(names)
        self.values = values

    def _collect(self, node: Any, names: dict[str, None], values: list[Any]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                names[k] = None
                self._collect(v, names, values)
        elif isinstance(node, list):
            values.append(node)
            for v in node:
                self._collect(v, names, values)
        else:
            values.append(node)

    @staticmethod
    def _tables(node: Any, out: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if isinstance(node, dict):
            out.append(node)
            for v in node.values():
                TomlEdits._tables(v, out)
        elif isinstance(node, list):
            for v in node:
                TomlEdits._tables(v, out)
        return out

    def value(self, r: Reader, depth: int = 0) -> Any:
        kind = r.u8() % 12
        if kind == 0 or (kind >= 10 and depth > 2):
            return copy.deepcopy(self.values[r.uint(2) % len(self.values)])
        if kind == 1:
            return r.sint(8)
        if kind == 2:
            return r.sint(2)
        if kind == 3:
            return struct.unpack("<d", r.take(8).ljust(8, b"\0"))[0]
        if kind == 4:
            return r.sint(2) / 10.0
        if kind == 5:
            return bool(r.u8() & 1)
        if kind == 6:
            return r.chunk().decode("utf-8", "replace")
        if kind == 7:
            return EDGE_STRINGS[r.u8() % len(EDGE_STRINGS)] + r.chunk().decode("utf-8", "replace")
        if kind == 8:
            stamp = datetime.datetime(2026, 1, 1) + datetime.timedelta(seconds=r.uint(4))
            return (stamp, stamp.date(), stamp.time())[r.u8() % 3]
        if kind == 9:
            return self.names[r.u8() % len(self.names)]
        if kind == 10:
            return [self.value(r, depth + 1) for _ in range(r.u8() % 4)]
        return {self.names[r.u8() % len(self.names)]: self.value(r, depth + 1)
                for _ in range(r.u8() % 4)}

    def document(self, choice: int, r: Reader) -> dict[str, Any]:
        doc = copy.deepcopy(self.docs[choice % len(self.docs)])
        for _ in range(1 + r.u8() % 8):
            if not r.left:
                break
            tables = self._tables(doc, [])
            table = tables[r.u8() % len(tables)]
            op = r.u8() % 4
            if op < 2 and table:
                name = list(table)[r.u8() % len(table)]
            else:
                name = self.names[r.u8() % len(self.names)]
            if op == 0:
                table.pop(name, None)
            else:
                table[name] = self.value(r)
        return doc


# ---- known bugs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownBug:
    """A bug the harness hits that is not fixed yet: the exception type(s) and the product
    function it comes out of ("path:function" of the innermost frame in agent/, firmware_bridge/
    or hil/)."""

    exc: type[BaseException] | tuple[type[BaseException], ...]
    where: str  # "agent/tomlschema.py:read_toml"
    what: str

    def matches(self, exc: BaseException) -> bool:
        return isinstance(exc, self.exc) and product_frame(exc) == self.where


def product_frame(exc: BaseException) -> str | None:
    """"path:function" of the innermost traceback frame in our packages (None if none)."""
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        try:
            rel = Path(frame.filename).resolve().relative_to(ROOT)
        except ValueError:
            continue
        if rel.parts and rel.parts[0] in PRODUCT:
            found = f"{rel.as_posix()}:{frame.name}"
    return found


def known_bug(exc: BaseException, known: Mapping[str, KnownBug]) -> str | None:
    return next((name for name, bug in known.items() if bug.matches(exc)), None)


def tolerating(
    fn: Callable[[bytes], None], known: Mapping[str, KnownBug]
) -> Callable[[bytes], None]:
    """`fn` that swallows the exceptions of `known` bugs (for FUZZ_IGNORE_KNOWN=1)."""

    def run(data: bytes) -> None:
        try:
            fn(data)
        except Exception as exc:
            if known_bug(exc, known) is None:
                raise

    return run


def scratch_file(target: str, suffix: str) -> Path:
    """A file name for what a harness writes, on tmpfs when there is one; one per process (the
    caller removes the file: libFuzzer exits without running atexit handlers)."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return base / f"gridminer-fuzz-{target}-{os.getpid()}{suffix}"


# ---- seeds and dictionary -----------------------------------------------------------------------


def _dict_line(token: bytes) -> str:
    body = "".join(
        chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02X}" for b in token
    )
    return f'"{body}"'


@functools.cache
def toml_edits(texts: tuple[str, ...], cls: Any) -> TomlEdits:
    """The structure-aware TOML editor for seed documents `texts` read by dataclass `cls` (its
    key names and choices as words; none if they cannot be read)."""
    import tomllib

    return TomlEdits([tomllib.loads(text) for text in texts], class_words(cls))


def class_words(cls: Any) -> list[str]:
    """`dataclass_words`, or none if the reader's classes cannot be read (being refactored:
    the seed documents' names are enough)."""
    try:
        return dataclass_words(cls)
    except Exception:
        return []


def dataclass_words(cls: Any, seen: set[Any] | None = None) -> list[str]:
    """The key names and choices of a TOML-table dataclass and of the tables nested in it."""
    seen = set() if seen is None else seen
    if cls in seen or not dataclasses.is_dataclass(cls):
        return []
    seen.add(cls)
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        out.append(f.name)
        out += [str(c) for c in (f.metadata.get("choices") or ())]
        tp = hints.get(f.name)
        for arg in (tp, *typing.get_args(tp)):
            for inner in (arg, *typing.get_args(arg)):
                out += dataclass_words(inner, seen)
    return out


def write_dictionary(path: Path, tokens: Iterable[bytes | str]) -> None:
    """A libFuzzer dictionary (one quoted token a line)."""
    seen: dict[bytes, None] = {}
    for tok in tokens:
        raw = tok.encode("utf-8") if isinstance(tok, str) else bytes(tok)
        if 0 < len(raw) <= 64:
            seen[raw] = None
    path.write_text("".join(_dict_line(t) + "\n" for t in seen), encoding="ascii")


def write_seeds(folder: Path, seeds: Iterable[tuple[str, bytes]]) -> int:
    """Replace the files of `folder` with `seeds` ((name, bytes) pairs)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    count = 0
    for name, blob in seeds:
        (folder / name).write_bytes(blob)
        count += 1
    return count


# ---- the runner ---------------------------------------------------------------------------------


def main(
    target: str,
    test_one_input: Callable[[bytes], None],
    seeds: Callable[[], Iterable[tuple[str, bytes]]],
    *,
    known: Mapping[str, KnownBug] | None = None,
    dictionary: Callable[[], Iterable[bytes | str]] | None = None,
    max_len: int = 4096,
) -> None:
    """Run `test_one_input` under atheris with libFuzzer's command line (see the module doc)."""
    import atheris

    args = sys.argv[1:]
    flags = [a for a in args if a.startswith("-")]
    paths = [a for a in args if not a.startswith("-")]
    work = WORK_DIR / target
    if not paths:
        paths = [str(work / "corpus"), str(CORPUS_DIR / target)]
    if all(Path(p).is_dir() or not Path(p).exists() for p in paths):
        for p in paths:
            Path(p).mkdir(parents=True, exist_ok=True)
        n = write_seeds(work / "seeds", seeds())
        paths.append(str(work / "seeds"))
        print(f"fuzz {target}: {n} seeds in {work / 'seeds'}", file=sys.stderr)
    if dictionary is not None and not any(f.startswith("-dict=") for f in flags):
        work.mkdir(parents=True, exist_ok=True)
        write_dictionary(work / "fuzz.dict", dictionary())
        flags.append(f"-dict={work / 'fuzz.dict'}")
    if not any(f.startswith("-artifact_prefix=") for f in flags):
        (work / "artifacts").mkdir(parents=True, exist_ok=True)
        flags.append(f"-artifact_prefix={work / 'artifacts'}/")
    if not any(f.startswith("-max_len=") for f in flags):
        flags.append(f"-max_len={max_len}")
    if not any(f.startswith("-timeout=") for f in flags):
        flags.append("-timeout=30")
    fn = test_one_input
    if known and os.environ.get("FUZZ_IGNORE_KNOWN") == "1":
        print(f"fuzz {target}: ignoring known bugs {', '.join(known)}", file=sys.stderr)
        fn = tolerating(test_one_input, known)
    # -merge=1 and -fork=N run the fuzzer again as argv[0]: make that an executable
    work.mkdir(parents=True, exist_ok=True)
    runner = work / "run.sh"
    runner.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(sys.argv[0]).resolve()}" "$@"\n')
    runner.chmod(0o755)
    atheris.Setup([str(runner), *flags, *paths], fn)
    atheris.Fuzz()
