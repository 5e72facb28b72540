"""Fuzz the HIL scenario reader (hil.scenario): `load` on a file holding the fuzz bytes and `parse`
on the TOML they parse to, or on a shipped scenario edited as the bytes say (`harness.TomlEdits`).
Only `ScenarioError` (a `ConfigError`) may come out. A scenario that loads must also answer what
the rig asks of it (`shortened`, `ambient_at`, the events' `end_s`) without raising.

Input: byte 0: bit 0 whether `parse` gets a path (the name defaults to its stem), bits 1-7 a time
for `ambient_at`; byte 1: bit 0 clear: the rest is the file; set: the rest are edits of shipped
scenario (byte 1 >> 1).
"""

from __future__ import annotations

import math
import sys
import tomllib
from pathlib import Path
from typing import Any

import harness

with harness.instrumented(__name__ == "__main__"):
    from agent.errors import ConfigError
    from hil import scenario

KNOWN_BUGS: dict[str, harness.KnownBug] = {}  # every bug found so far is fixed


def _use(s: Any, t_s: float) -> None:
    """What the rig and the report ask of a scenario."""
    assert s.duration_s >= 1.0, s.duration_s
    for view in (s, s.shortened()):
        for t in (0.0, t_s, view.duration_s, -1.0):
            temp = view.ambient_at(t)
            assert math.isfinite(temp), (t, temp)
        for event in view.grid:
            event.end_s()
            if event.op == "reserve":
                event.reserve_window_s()
        for fault in view.faults:
            fault.end_s()


def test_one_input(data: bytes) -> None:
    r = harness.Reader(data)
    head = r.u8()
    mode = r.u8()
    t_s = float(head >> 1) * 3.0
    name = Path("scenarios/fuzzed.toml") if head & 1 else None  # parse's default name: its stem
    if mode & 1:
        _parse(_edits().document(mode >> 1, r), name, t_s)
        return
    text = r.rest()
    path = harness.scratch_file("scenario", ".toml")
    path.write_bytes(text)
    try:
        s = scenario.load(path)
    except scenario.ScenarioError:
        pass
    else:
        _use(s, t_s)
    finally:
        path.unlink(missing_ok=True)
    try:
        raw = tomllib.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return  # not TOML: load above had it
    _parse(raw, name, t_s)


def _parse(raw: dict[str, Any], path: Path | None, t_s: float) -> None:
    try:
        s = scenario.parse(raw, source="fuzzed.toml", path=path)
    except scenario.ScenarioError:
        return
    except ConfigError as exc:  # the documented type is ScenarioError
        raise AssertionError(f"parse let out a bare ConfigError: {exc}") from exc
    _use(s, t_s)


# ---- seeds and dictionary -----------------------------------------------------------------------


def _strip(text: str) -> str:
    lines = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].rstrip() if '"' not in line.split("#", 1)[0] else line
        if line.strip():
            lines.append(line)
    return "\n".join(lines) + "\n"


def _files() -> list[tuple[str, str]]:
    return [(p.stem, p.read_text("utf-8"))
            for p in sorted((harness.ROOT / "hil/scenarios").glob("*.toml"))]


def _edits() -> harness.TomlEdits:
    return harness.toml_edits(tuple(text for _, text in _files()), scenario.Scenario)


def seeds() -> list[tuple[str, bytes]]:
    out = []
    for i, (name, text) in enumerate(_files()):
        out.append((name, b"\x15\x00" + text.encode()))
        out.append((name + "-short", b"\x14\x00" + _strip(text).encode()))
        out.append((name + "-edited", bytes((0x15, i << 1 | 1)) + bytes(range(i, i + 24))))
    out.append(("minimal", b"\x00\x00" + b'[scenario]\nname = "t"\nduration_s = 100\n'))
    return out


def dictionary() -> list[str]:
    words = ["[", "]", "[[", "]]", " = ", "\n", '"', "{", "}", ", ", "true", "false", "inf",
             "nan", "-", "1e400", "0.0", "[device.agent.envelope]", "[short.criteria]",
             "[[grid]]", "[[fault]]", "[[ambient]]", "clouds = [{ at_h = 11.0 }]"]
    for name in ("SECTIONS", "GRID_OPS", "FAULT_KINDS", "LINKS", "DIRECTIONS",
                 "RESERVE_PRODUCTS", "CRITERIA"):
        words += [str(w) for w in getattr(scenario, name, ())]
    words += harness.class_words(scenario.Scenario)
    return words


if __name__ == "__main__":
    harness.main("scenario", test_one_input, seeds, known=KNOWN_BUGS, dictionary=dictionary,
                 max_len=4096)
    sys.exit(0)
