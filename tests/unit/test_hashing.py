"""agent.hashing: every kernel usable on this machine, compiled and pure-Python, finds exactly the
nonces hashlib finds, including real Bitcoin blocks, exact-target and end-of-range boundaries, and
rejects bad arguments with a clear error."""

from __future__ import annotations

import hashlib
import importlib
import os
import platform
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import _sha256d_py, hashing
from tests.support.sha256d_reference import (
    MAX_TARGET,
    REAL_BLOCKS,
    SPACE,
    bits_target,
    hash_value,
    reference,
)

KERNELS = hashing.kernels()
COMPILED_NAMES = [name for name in KERNELS if name != "python"]


def random_target(rng: random.Random, header: bytes, start: int, count: int) -> int:
    """Targets that pass some nonces and fail others, often right at a hash value."""
    kind = rng.randrange(4)
    if kind == 0 or count == 0:
        return rng.getrandbits(256) >> rng.randrange(0, 9)
    value = hash_value(header, start + rng.randrange(count))
    if kind == 1:
        return value  # exactly one hash sits on the target
    if kind == 2:
        return max(0, value - 1)
    # same most significant word as a hash, random below: decided by the full comparison
    return (value >> 224 << 224) | rng.getrandbits(224)


@pytest.mark.parametrize("name", list(KERNELS))
def test_scan_agrees_with_hashlib_on_random_headers(name):
    scan = KERNELS[name]
    rng = random.Random(f"agree-{name}")
    cases = 150 if name == "python" else 1500
    for _ in range(cases):
        header = rng.randbytes(80)
        count = rng.randrange(0, 41)
        start = rng.randrange(0, SPACE - count + 1)
        target = random_target(rng, header, start, count)
        assert scan(header, start, count, target) == reference(header, start, count, target), (
            header.hex(),
            start,
            count,
            hex(target),
        )


@pytest.mark.parametrize("name", list(KERNELS))
def test_scan_agrees_with_hashlib_on_generated_input(name):
    scan = KERNELS[name]

    @settings(max_examples=40 if name == "python" else 150, deadline=None, derandomize=True)
    @given(
        header=st.binary(min_size=80, max_size=80),
        start=st.integers(0, SPACE),
        count=st.integers(0, 40),
        target=st.integers(0, MAX_TARGET) | st.integers(0, 1 << 252),
    )
    def check(header, start, count, target):
        start = min(start, SPACE - count)
        assert scan(header, start, count, target) == reference(header, start, count, target)

    check()


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("block", list(REAL_BLOCKS))
def test_scan_finds_real_block_nonce_at_its_bits_target(name, block):
    header, nonce, bits, block_hash = REAL_BLOCKS[block]
    assert hashing.sha256d(header)[::-1].hex() == block_hash
    half = 1 << 10 if name == "python" else 1 << 15
    junk_nonce = bytearray(header)
    junk_nonce[76:80] = b"\xde\xad\xbe\xef"  # the header's own nonce bytes are ignored
    found = KERNELS[name](bytes(junk_nonce), nonce - half, 2 * half, bits_target(bits))
    assert found == [nonce]
    assert KERNELS[name](header, nonce - half, half, bits_target(bits)) == []


@pytest.mark.parametrize("name", list(KERNELS))
def test_hash_equal_to_target_is_included_and_target_minus_one_excludes_it(name):
    scan = KERNELS[name]
    rng = random.Random(f"exact-{name}")
    for _ in range(20):
        header = rng.randbytes(80)
        nonce = rng.choice([0, SPACE - 1, rng.randrange(SPACE)])
        value = hash_value(header, nonce)
        assert scan(header, nonce, 1, value) == [nonce]
        assert scan(header, nonce, 1, value - 1) == []
        start = max(0, min(nonce - 20, SPACE - 40))
        assert nonce in scan(header, start, 40, value)
        assert nonce not in scan(header, start, 40, value - 1)


@pytest.mark.parametrize("name", list(KERNELS))
def test_range_ends_and_extreme_targets(name):
    scan = KERNELS[name]
    header = bytes(range(80))
    assert scan(header, SPACE - 37, 37, MAX_TARGET) == list(range(SPACE - 37, SPACE))
    assert scan(header, 0, 37, MAX_TARGET) == list(range(37))
    assert scan(header, SPACE - 1, 1, MAX_TARGET) == [SPACE - 1]
    assert scan(header, 0, 1, MAX_TARGET) == [0]
    assert scan(header, 0, 0, MAX_TARGET) == []
    assert scan(header, 12345, 0, MAX_TARGET) == []
    assert scan(header, SPACE, 0, MAX_TARGET) == []
    assert scan(header, 0, 300, 0) == []
    easy = MAX_TARGET >> 3
    assert scan(header, SPACE - 300, 300, easy) == reference(header, SPACE - 300, 300, easy)


@pytest.mark.parametrize("name", COMPILED_NAMES)
def test_compiled_kernel_crosses_chunk_boundaries(name):
    """A scan longer than one GIL-free chunk (2**18 nonces) loses and repeats nothing."""
    header = bytes(80)
    target = MAX_TARGET >> 14  # about one nonce in 16384
    start = (1 << 18) - 5000
    found = KERNELS[name](header, start, 20000, target)
    assert found == reference(header, start, 20000, target)
    assert found  # the range does contain hits


@pytest.mark.parametrize("name", list(KERNELS))
def test_bytes_like_headers_give_the_same_result(name):
    scan = KERNELS[name]
    header = bytes(range(100, 180))
    expected = scan(header, 1000, 64, MAX_TARGET >> 2)
    assert expected == reference(header, 1000, 64, MAX_TARGET >> 2)
    assert scan(bytearray(header), 1000, 64, MAX_TARGET >> 2) == expected
    assert scan(memoryview(header), 1000, 64, MAX_TARGET >> 2) == expected
    assert scan(memoryview(b"xx" + header)[2:], 1000, 64, MAX_TARGET >> 2) == expected


BAD_ARGUMENTS = [
    ((b"", 0, 1, 1), ValueError, "header must be 80 bytes, got 0"),
    ((bytes(79), 0, 1, 1), ValueError, "header must be 80 bytes, got 79"),
    ((bytes(81), 0, 1, 1), ValueError, "header must be 80 bytes, got 81"),
    (("x" * 80, 0, 1, 1), TypeError, "header must be bytes-like"),
    ((None, 0, 1, 1), TypeError, "header must be bytes-like"),
    ((12, 0, 1, 1), TypeError, "header must be bytes-like"),
    ((bytes(80), -1, 1, 1), ValueError, "start must be in"),
    ((bytes(80), SPACE + 1, 0, 1), ValueError, "start must be in"),
    ((bytes(80), 0, -1, 1), ValueError, "count must be >= 0"),
    ((bytes(80), SPACE - 1, 2, 1), ValueError, "start \\+ count must be <= 2\\*\\*32"),
    ((bytes(80), 0, SPACE + 1, 1), ValueError, "start \\+ count must be <= 2\\*\\*32"),
    ((bytes(80), 0, 1, -1), ValueError, "target must be in"),
    ((bytes(80), 0, 1, 1 << 256), ValueError, "target must be in"),
    ((bytes(80), 0, 1, 1.0), TypeError, "target must be an int, not float"),
    ((bytes(80), 0, 1, "1"), TypeError, "target must be an int, not str"),
    ((bytes(80), 0, 1, None), TypeError, "target must be an int, not NoneType"),
    ((bytes(80), 0, 1, True), TypeError, "target must be an int, not bool"),
    ((bytes(80), 0.0, 1, 1), TypeError, "start must be an int, not float"),
    ((bytes(80), False, 1, 1), TypeError, "start must be an int, not bool"),
    ((bytes(80), 0, 2.5, 1), TypeError, "count must be an int, not float"),
]


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize(("args", "error", "message"), BAD_ARGUMENTS)
def test_bad_arguments_raise_a_clear_error(name, args, error, message):
    with pytest.raises(error, match=message):
        KERNELS[name](*args)


SHA256D_IMPLEMENTATIONS = {"python": _sha256d_py.sha256d, "selected": hashing.sha256d}


@pytest.mark.parametrize("impl", list(SHA256D_IMPLEMENTATIONS))
def test_sha256d_is_double_sha256(impl):
    sha256d = SHA256D_IMPLEMENTATIONS[impl]
    rng = random.Random(7)
    for size in [0, 1, 55, 56, 63, 64, 80, 119, 1000]:
        data = rng.randbytes(size)
        expected = hashlib.sha256(hashlib.sha256(data).digest()).digest()
        assert sha256d(data) == expected
        assert sha256d(bytearray(data)) == expected
        assert sha256d(memoryview(data)) == expected
    with pytest.raises(TypeError, match="data must be bytes-like"):
        sha256d("text")


def test_unknown_compiled_kernel_is_refused():
    if not hashing.COMPILED:
        pytest.skip("compiled module not loaded")
    from agent import _sha256d

    with pytest.raises(ValueError, match="kernel must be one of"):
        _sha256d.scan(bytes(80), 0, 1, 1, kernel="quantum")


def test_compiled_module_loaded_where_a_compiler_exists():
    """Fails if the build silently fell back to pure Python on a machine that can compile it."""
    if hashing.NO_EXTENSIONS:
        pytest.skip("GRIDMINER_NO_EXTENSIONS is set")
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    assert hashing.COMPILED, "agent._sha256d did not load: rebuild with `pip install -e .`"
    assert hashing.IMPLEMENTATION != "python"
    assert hashing.IMPLEMENTATION in KERNELS
    assert "scalar" in KERNELS


def _cpu_flags() -> set[str]:
    """Feature flags of the first CPU in /proc/cpuinfo ("flags" on x86, "Features" on ARM)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def test_every_kernel_the_cpu_supports_is_offered():
    """Runtime detection did not lose a kernel the CPU reports (Linux x86-64 and AArch64)."""
    machine = platform.machine().lower()
    flags = _cpu_flags()
    if not hashing.COMPILED or not flags or machine not in ("x86_64", "amd64", "aarch64"):
        pytest.skip("compiled module on Linux x86-64 or AArch64 only")
    if machine == "aarch64":
        expected = {"neon"} | ({"armv8-sha2"} if "sha2" in flags else set())
    else:
        expected = {"sse2"}
        expected |= {"sha-ni"} if {"sha_ni", "sse4_1", "ssse3"} <= flags else set()
        expected |= {"avx2"} if "avx2" in flags else set()
        expected |= {"avx512"} if "avx512f" in flags else set()
    assert expected <= set(KERNELS)


def test_no_extensions_variable_forces_the_pure_reference(monkeypatch):
    monkeypatch.setenv("GRIDMINER_NO_EXTENSIONS", "1")
    try:
        forced = importlib.reload(hashing)
        assert forced.IMPLEMENTATION == "python"
        assert not forced.COMPILED
        assert list(forced.kernels()) == ["python"]
        assert forced.scan is _sha256d_py.scan
    finally:
        monkeypatch.undo()  # the environment as it was, then the module as it was
        importlib.reload(hashing)


@pytest.mark.parametrize("forced", ["scalar", "no-such-kernel"])
def test_kernel_variable_forces_a_compiled_kernel(forced):
    try:
        compiled = importlib.import_module("agent._sha256d")
    except ImportError:
        pytest.skip("compiled module not built")
    env = {**os.environ, "GRIDMINER_SHA256D_KERNEL": forced}
    env.pop("GRIDMINER_NO_EXTENSIONS", None)
    out = subprocess.run(
        [sys.executable, "-c", "import agent.hashing as h; print(h.IMPLEMENTATION)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    if forced == "scalar":
        assert out.stdout.strip() == "scalar"
    else:
        assert out.stdout.strip() in compiled.KERNELS
        assert "GRIDMINER_SHA256D_KERNEL='no-such-kernel' is not usable" in out.stderr


def test_target_from_difficulty():
    assert hashing.target_from_difficulty(1) == 0xFFFF << 208
    assert hashing.target_from_difficulty(256) == int((0xFFFF << 208) / 256)
    assert hashing.target_from_difficulty(1e-12) == MAX_TARGET
    header, nonce, _, _ = REAL_BLOCKS["genesis"]
    assert hashing.scan(header, nonce - 100, 200, hashing.target_from_difficulty(1)) == [nonce]
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="difficulty must be"):
            hashing.target_from_difficulty(bad)
    with pytest.raises(TypeError):
        hashing.target_from_difficulty("1")
