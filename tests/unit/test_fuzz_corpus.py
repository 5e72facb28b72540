"""The fuzz regression corpus (tests/fuzz/corpus/<target>/) replayed through each harness's
`test_one_input`, without atheris: no input may end in an exception the component must not let
out (a bad config file, scenario, MQTT payload or serial stream is rejected with a reason).

A file named `bug-<name>[.<n>]` reproduces the bug `<name>` of the harness's KNOWN_BUGS, found by
fuzzing and not fixed yet: it is expected to fail with exactly that bug (xfail). Once the bug is
fixed the test says so: drop the entry from KNOWN_BUGS and the `bug-` prefix from the file name,
and it stays in the corpus as a regression input.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

FUZZ_DIR = Path(__file__).resolve().parents[1] / "fuzz"
CORPUS_DIR = FUZZ_DIR / "corpus"
TARGETS = sorted(p.stem.removeprefix("fuzz_") for p in FUZZ_DIR.glob("fuzz_*.py"))


def harness_of(target: str) -> ModuleType:
    if str(FUZZ_DIR) not in sys.path:
        sys.path.insert(0, str(FUZZ_DIR))
    return importlib.import_module(f"fuzz_{target}")


def corpus(target: str, bugs: bool) -> list[Path]:
    folder = CORPUS_DIR / target
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.name.startswith("bug-") == bugs and p.name[0] != ".")


def test_every_target_has_a_corpus() -> None:
    assert {"asic", "command", "config", "link", "scenario"} <= set(TARGETS)
    for target in TARGETS:
        assert len(corpus(target, bugs=False)) >= 10, target


@pytest.mark.parametrize("target", TARGETS)
def test_corpus_replays_without_unexpected_exceptions(target: str) -> None:
    mod = harness_of(target)
    failures = []
    for path in corpus(target, bugs=False):
        try:
            mod.test_one_input(path.read_bytes())
        except Exception as exc:
            where = mod.harness.product_frame(exc) or "the harness"
            failures.append(f"{path.name}: {type(exc).__name__}: {exc} (in {where})"[:400])
    assert not failures, f"{len(failures)} corpus inputs fail:\n" + "\n".join(failures)


def _bug_cases() -> list[object]:
    return [pytest.param(t, p, id=f"{t}/{p.name}") for t in TARGETS for p in corpus(t, bugs=True)]


@pytest.mark.parametrize(("target", "path"), _bug_cases())
def test_known_bug_input_still_fails_the_same_way(target: str, path: Path) -> None:
    mod = harness_of(target)
    name = path.name.removeprefix("bug-").split(".")[0]
    assert name in mod.KNOWN_BUGS, f"{path.name}: no bug {name!r} in fuzz_{target}.KNOWN_BUGS"
    bug = mod.KNOWN_BUGS[name]
    try:
        mod.test_one_input(path.read_bytes())
    except Exception as exc:
        if not bug.matches(exc):
            raise
        pytest.xfail(f"known bug {name}: {bug.what}")
    pytest.fail(f"bug {name} is fixed: remove it from KNOWN_BUGS in tests/fuzz/fuzz_{target}.py "
                f"and rename {path.relative_to(CORPUS_DIR)} without the bug- prefix")
