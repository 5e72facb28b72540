"""The ARM kernels under qemu-user: every kernel an AArch64 or armv7 CPU model offers finds exactly
the nonces hashlib finds, each CPU is offered only the kernels its instructions allow, and with
the extension bits cleared from the hardware capabilities the fallback kernels take over.

`make test` runs a reduced set (two CPU models an architecture, clang with its default flags);
`make test-arm` (GRIDMINER_ARM_LANE=full) runs every CPU model of tests/arm/lane.py and clang
builds that target the extensions as a whole.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.arm import lane

FULL = os.environ.get("GRIDMINER_ARM_LANE", "") == "full"
REDUCED_CPUS = {"aarch64": ("cortex-a53", "max"), "armv7": ("cortex-a9", "max")}
SEED = 14
ARCHES = {arch.name: arch for arch in lane.ARCHES}
RUNS = [
    (arch.name, cpu)
    for arch in lane.ARCHES
    for cpu in arch.cpus
    if FULL or cpu in REDUCED_CPUS[arch.name]
]


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    missing = lane.missing_tools()
    if missing:
        pytest.skip(f"ARM lane: {', '.join(missing)} missing and could not be installed "
                    "(`make arm-toolchain` installs gcc-aarch64-linux-gnu, "
                    "gcc-arm-linux-gnueabihf and qemu-user)")
    out = tmp_path_factory.mktemp("arm")
    return {arch.name: lane.build(arch, out) for arch in lane.ARCHES}


@pytest.fixture(scope="module")
def scan() -> tuple[list[lane.Case], list[list[int]]]:
    cases = lane.cases(SEED, chunks=True)
    return cases, [case.expected() for case in cases]


@pytest.mark.parametrize(("arch", "cpu"), RUNS)
def test_every_kernel_agrees_with_hashlib(binaries, scan, arch, cpu):
    cases, expected = scan
    result = lane.run(ARCHES[arch], binaries[arch], cpu, cases)
    assert result.usable == ARCHES[arch].cpus[cpu], f"{result.label}: kernels offered"
    assert result.omitted == {}, "gcc builds every kernel of the architecture"
    assert lane.mismatches(result, cases, expected) == []


# clang: (arch, added flags) -> kernels offered on -cpu max, kernels it says it left out
CLANG_BUILDS = {
    ("aarch64", ()): (("neon", "scalar"), {"armv8-sha2"}),
    ("aarch64", ("-march=armv8-a+crypto",)): (("armv8-sha2", "neon", "scalar"), set()),
    ("armv7", ()): (("scalar",), {"armv8-sha2", "neon"}),
    ("armv7", ("-mfpu=neon",)): (("neon", "scalar"), {"armv8-sha2"}),
}


CLANG_RUNS = [build for build in CLANG_BUILDS if FULL or not build[1]]


@pytest.mark.parametrize(("arch", "flags"), CLANG_RUNS,
                         ids=[" ".join((arch, *flags)) for arch, flags in CLANG_RUNS])
def test_clang_builds_agree_and_name_the_kernels_they_left_out(binaries, scan, arch, flags,
                                                               tmp_path):
    if lane.missing_tools("clang"):
        pytest.skip("ARM lane: clang is not installed (`make arm-toolchain` installs it)")
    cases, expected = scan
    binary = lane.build(ARCHES[arch], tmp_path, "clang", flags)
    result = lane.run(ARCHES[arch], binary, "max", cases)
    usable, omitted = CLANG_BUILDS[arch, flags]
    assert result.usable == usable
    assert set(result.omitted) == omitted
    assert all("clang" in reason for reason in result.omitted.values())
    assert lane.mismatches(result, cases, expected) == []


@pytest.mark.parametrize(("arch", "cpu", "hwcap", "hwcap2"), list(lane.FALLBACKS))
def test_cleared_hwcap_bits_fall_back_to_kernels_the_cpu_still_has(
    binaries, scan, arch, cpu, hwcap, hwcap2
):
    cases, expected = scan
    result = lane.run(ARCHES[arch], binaries[arch], cpu, cases, hwcap_clear=hwcap,
                      hwcap2_clear=hwcap2)
    assert result.usable == lane.FALLBACKS[arch, cpu, hwcap, hwcap2]
    assert lane.mismatches(result, cases, expected) == []


def test_a_wrong_expectation_fails_the_lane(binaries, scan):
    """The comparison is not vacuous: one nonce dropped from, one added to hashlib's answer, and
    every kernel is reported on exactly those two cases."""
    cases, expected = scan
    wrong = [list(nonces) for nonces in expected]
    dropped = next(i for i, nonces in enumerate(wrong) if len(nonces) > 1)
    wrong[dropped].pop(random.Random(SEED).randrange(len(wrong[dropped])))
    added = next(i for i, nonces in enumerate(wrong) if not nonces and cases[i].count)
    wrong[added].append(cases[added].start)
    result = lane.run(ARCHES["armv7"], binaries["armv7"], "max", cases)
    problems = lane.mismatches(result, cases, wrong)
    assert len(problems) == 2 * len(result.usable)
    assert sum(repr(cases[dropped].name) in p for p in problems) == len(result.usable)
    assert sum(repr(cases[added].name) in p for p in problems) == len(result.usable)
