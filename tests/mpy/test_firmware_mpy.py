"""firmware_bridge on the real MicroPython tools: mpy-cross, the unix port under a small heap,
mypy against the MicroPython stubs, and the CPython-only API lint."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODULES = sorted((ROOT / "firmware_bridge").glob("*.py"))
TYPINGS = ROOT / "build" / "typings"


def tool(name):
    path = BIN / name
    assert path.exists(), f"{path} is missing: run `make setup`"
    return str(path)


def _lint():
    spec = importlib.util.spec_from_file_location("mpy_lint", ROOT / "tests" / "mpy" / "lint.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("path", [*MODULES, ROOT / "tests" / "mpy" / "runner.py"],
                         ids=lambda p: p.name)
def test_module_compiles_with_mpy_cross(path):
    r = subprocess.run([tool("mpy-cross"), "-o", os.devnull, str(path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_mpy_cross_rejects_cpython_only_syntax(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(a, /, b):\n    return [*a, b]\n")
    r = subprocess.run([tool("mpy-cross"), "-o", os.devnull, str(bad)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and "SyntaxError" in r.stderr


def _run_checks(cmd, env=None):
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    m = re.search(r"(\d+) passed, (\d+) failed", r.stdout)
    assert r.returncode == 0 and m, r.stdout + r.stderr
    return int(m.group(1)), int(m.group(2))


def test_vectors_and_scenarios_on_the_micropython_unix_port_with_256k_heap():
    env = dict(os.environ, MICROPYPATH=".:.frozen")
    passed, failed = _run_checks([tool("micropython"), "-X", "heapsize=256k",
                                  "tests/mpy/runner.py", "."], env)
    assert failed == 0 and passed > 200


def test_the_same_checks_pass_on_cpython():
    passed, failed = _run_checks([sys.executable, "tests/mpy/runner.py", "."])
    assert failed == 0 and passed > 200


def test_runner_reports_failures_with_exit_1(tmp_path):
    # a broken vector must turn the run red on MicroPython
    vectors = tmp_path / "tests" / "vectors"
    vectors.mkdir(parents=True)
    data = (ROOT / "tests" / "vectors" / "bm13xx.json").read_text()
    (vectors / "bm13xx.json").write_text(data.replace('"55AA530500 0003"'.replace(" ", ""),
                                                      '"55AA53050000FF"'))
    (vectors / "link.json").write_text((ROOT / "tests" / "vectors" / "link.json").read_text())
    (tmp_path / "firmware_bridge").symlink_to(ROOT / "firmware_bridge")
    env = dict(os.environ, MICROPYPATH=f"{tmp_path}:.frozen")
    r = subprocess.run([tool("micropython"), str(ROOT / "tests/mpy/runner.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1 and "FAIL C1" in r.stdout and " 1 failed" in r.stdout


def _mypy(*paths):
    assert (TYPINGS / "stdlib").is_dir(), f"{TYPINGS} is missing: run `make setup`"
    return subprocess.run([tool("mypy"), "--config-file", "tests/mpy/mypy-mpy.ini", *paths],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_mypy_against_the_micropython_stubs():
    r = _mypy("firmware_bridge")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_config_uses_the_micropython_stdlib(tmp_path):
    bad = tmp_path / "bad_mpy.py"
    bad.write_text("import time\nimport dataclasses\n\n\ndef f():\n    return time.monotonic()\n")
    r = _mypy(str(bad))
    assert r.returncode == 1
    assert "monotonic" in r.stdout and "dataclasses" in r.stdout


def test_firmware_is_lint_clean():
    lint = _lint()
    findings = [str(f) for p in [*MODULES, ROOT / "tests/mpy/runner.py"]
                for f in lint.check_source(p.read_text(), str(p))]
    assert findings == []


BAD_SAMPLE = '''\
from __future__ import annotations
import typing
from dataclasses import dataclass
import enum, functools, logging, abc
import struct, time, hashlib
S = struct.Struct("<I")
for x in struct.iter_unpack("<I", b""):
    pass
try:
    pass
except struct.error:
    pass
n = int.from_bytes(b"ab", byteorder="big")
b = (5).to_bytes(2, "big", signed=True)
k = (5).bit_length()
t = time.monotonic() + time.perf_counter()
d = hashlib.sha256(b"").hexdigest()
raise TimeoutError("late") from None
'''


def test_lint_catches_every_cpython_only_use_in_a_bad_sample(tmp_path):
    lint = _lint()
    findings = lint.check_source(BAD_SAMPLE, "bad.py")
    lines = {f.line for f in findings}
    assert lines == set(range(1, 19)) - {5, 8, 9, 10, 12}, [str(f) for f in findings]
    text = "\n".join(str(f) for f in findings)
    for needle in ["__future__", "typing", "dataclasses", "enum", "functools", "logging", "abc",
                   "struct.Struct", "iter_unpack", "struct.error", "from_bytes", "to_bytes",
                   "bit_length", "time.monotonic", "time.perf_counter", "hexdigest",
                   "TimeoutError", "raise ... from"]:
        assert needle in text, needle
    sample = tmp_path / "bad.py"
    sample.write_text(BAD_SAMPLE)
    r = subprocess.run([sys.executable, str(ROOT / "tests/mpy/lint.py"), str(sample)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "bad.py:16:" in r.stdout
