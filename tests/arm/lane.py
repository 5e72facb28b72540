"""The ARM lane: the C kernels of ext/ cross-compiled for AArch64 and armv7 into tests/arm/harness.c
and run under qemu-user on several CPU models, their nonces compared with hashlib's.

Debian's `gcc-aarch64-linux-gnu`, `gcc-arm-linux-gnueabihf` and `qemu-user` do the work, and
`clang` builds for the same targets where it is installed (`make arm-toolchain` installs them all).
The harness is linked statically, so qemu needs no sysroot.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.sha256d_reference import (
    MAX_TARGET,
    REAL_BLOCKS,
    SPACE,
    bits_target,
    hash_value,
    reference,
)

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("harness.c")
KERNEL_SOURCES = (ROOT / "ext" / "sha256d_kernels.c",)
# setup.py's flags for the extension (no -march: the kernels choose at run time)
CFLAGS = ("-O3", "-fno-strict-aliasing", "-Wno-psabi", "-Wall", "-Werror")
CHUNK = 1 << 18  # SHA256D_CHUNK in ext/sha256d_kernels.h: agent._sha256d.scan's nonces per call
RUN_TIMEOUT_S = 300.0

# AT_HWCAP / AT_HWCAP2 bits (Linux uapi asm/hwcap.h of each architecture)
AARCH64_HWCAP_SHA2 = 1 << 6
ARM_HWCAP_NEON = 1 << 12
ARM_HWCAP2_SHA2 = 1 << 3


@dataclass(frozen=True)
class Arch:
    """One ARM target: its cross compiler, its qemu and the CPU models the lane runs."""

    name: str
    triple: str
    qemu: str
    # CPU model -> the kernels it must offer, widest first (anything else means a wrong choice)
    cpus: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def compiler(self, name: str = "gcc") -> list[str]:
        """The command line of `name` ("gcc" or "clang") compiling for this target."""
        return [f"{self.triple}-gcc"] if name == "gcc" else ["clang", f"--target={self.triple}"]


AARCH64 = Arch(
    "aarch64",
    "aarch64-linux-gnu",
    "qemu-aarch64",
    {
        "cortex-a53": ("armv8-sha2", "neon", "scalar"),
        "cortex-a72": ("armv8-sha2", "neon", "scalar"),
        "max": ("armv8-sha2", "neon", "scalar"),
    },
)
ARMV7 = Arch(
    "armv7",
    "arm-linux-gnueabihf",
    "qemu-arm",
    {
        "cortex-a7": ("neon", "scalar"),
        "cortex-a9": ("neon", "scalar"),
        "cortex-a15": ("neon", "scalar"),
        "cortex-r5f": ("scalar",),  # armv7 with a VFP and no NEON at all
        "max": ("armv8-sha2", "neon", "scalar"),  # an ARMv8 core in AArch32
    },
)
ARCHES = (AARCH64, ARMV7)

# (arch, cpu, AT_HWCAP bits cleared, AT_HWCAP2 bits cleared) -> kernels left: the fallbacks
FALLBACKS: dict[tuple[str, str, int, int], tuple[str, ...]] = {
    ("aarch64", "max", AARCH64_HWCAP_SHA2, 0): ("neon", "scalar"),
    ("armv7", "max", 0, ARM_HWCAP2_SHA2): ("neon", "scalar"),
    ("armv7", "max", ARM_HWCAP_NEON, ARM_HWCAP2_SHA2): ("scalar",),
}


def missing_tools(compiler: str = "gcc") -> list[str]:
    """The compilers and qemu binaries the lane needs that are not on PATH."""
    tools = [tool for arch in ARCHES for tool in (arch.compiler(compiler)[0], arch.qemu)]
    return sorted({tool for tool in tools if shutil.which(tool) is None})


def build(arch: Arch, out_dir: Path, compiler: str = "gcc", flags: tuple[str, ...] = ()) -> Path:
    """The harness and the kernels, cross-compiled by `compiler` with `flags` added and linked
    statically for `arch`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / f"harness-{arch.name}-{compiler}{''.join(flags)}"
    cmd = [
        *arch.compiler(compiler), *CFLAGS, *flags, "-static", f"-I{ROOT / 'ext'}",
        "-Wl,--wrap=getauxval", str(HARNESS), *map(str, KERNEL_SOURCES), "-o", str(binary),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return binary


@dataclass(frozen=True)
class Case:
    """One scan: nonces in [start, start + count) of `header` whose hash is <= target."""

    name: str
    header: bytes
    start: int
    count: int
    target: int

    def line(self) -> str:
        return f"{self.header.hex()} {self.start} {self.count} {self.target:064x}\n"

    def expected(self) -> list[int]:
        return reference(self.header, self.start, self.count, self.target)


def cases(seed: int, *, chunks: bool) -> list[Case]:
    """The lane's cases: the genesis block, exact targets, the end of the nonce space, counts
    that are no multiple of any lane width, random headers; with `chunks`, a range longer than
    one of agent._sha256d.scan's chunks, ending at 2**32."""
    rng = random.Random(seed)
    genesis, nonce, bits, _ = REAL_BLOCKS["genesis"]
    genesis_hash = hash_value(genesis, nonce)
    found = [
        Case("genesis at its bits target", genesis, nonce - 1501, 3001, bits_target(bits)),
        Case("target equal to the genesis hash", genesis, nonce - 7, 15, genesis_hash),
        Case("target one below the genesis hash", genesis, nonce - 7, 15, genesis_hash - 1),
        Case("range ending at 2**32", rng.randbytes(80), SPACE - 1003, 1003, MAX_TARGET >> 3),
        Case("every nonce up to 2**32", rng.randbytes(80), SPACE - 13, 13, MAX_TARGET),
        Case("empty range", rng.randbytes(80), SPACE - 5, 0, MAX_TARGET),
    ]
    header = rng.randbytes(80)
    value = hash_value(header, 1234)
    found += [
        Case("target equal to a random hash", header, 1000, 499, value),
        Case("target one below a random hash", header, 1000, 499, value - 1),
        Case("same top word, decided below it", header, 1000, 499,
             (value >> 224 << 224) | rng.getrandbits(224)),
    ]
    for count in (1, 2, 3, 5, 6, 7, 9, 15, 17, 31, 1021):
        start = rng.randrange(SPACE - count + 1)
        found.append(Case(f"{count} nonces", rng.randbytes(80), start, count,
                          MAX_TARGET >> rng.randrange(0, 4)))
    if chunks:
        found.append(Case("chunks crossed, ending at 2**32", rng.randbytes(80),
                          SPACE - CHUNK - 2049, CHUNK + 2049, MAX_TARGET >> 12))
    return found


@dataclass
class LaneRun:
    """What the harness printed: the kernels it offered, those the compiler left out (name ->
    reason) and each kernel's nonces per case."""

    label: str
    usable: tuple[str, ...]
    omitted: dict[str, str]
    found: dict[tuple[int, str], list[int]]


def run(arch: Arch, binary: Path, cpu: str, scan: list[Case], *, hwcap_clear: int = 0,
        hwcap2_clear: int = 0) -> LaneRun:
    """The harness under qemu on `cpu`, with the given AT_HWCAP/AT_HWCAP2 bits cleared."""
    env = dict(os.environ, GM_HWCAP_CLEAR=f"{hwcap_clear:x}", GM_HWCAP2_CLEAR=f"{hwcap2_clear:x}")
    label = f"{arch.name} -cpu {cpu}"
    if hwcap_clear or hwcap2_clear:
        label += f" (HWCAP &= ~{hwcap_clear:#x}, HWCAP2 &= ~{hwcap2_clear:#x})"
    done = subprocess.run(
        [arch.qemu, "-cpu", cpu, str(binary)], input="".join(case.line() for case in scan),
        capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise AssertionError(f"{label}: harness exited {done.returncode}: {done.stderr.strip()}")
    lines = done.stdout.splitlines()
    usable = tuple(lines[0].split()[1:])
    omitted: dict[str, str] = {}
    found: dict[tuple[int, str], list[int]] = {}
    for text in lines[1:]:
        if not text[:1].isdigit():
            name, _, reason = text.partition(": ")
            omitted[name] = reason
            continue
        index, kernel, *nonces = text.split()
        found[int(index), kernel] = [int(n) for n in nonces]
    return LaneRun(label, usable, omitted, found)


def mismatches(result: LaneRun, scan: list[Case], expected: list[list[int]]) -> list[str]:
    """Every (case, kernel) whose nonces differ from hashlib's, said with the difference."""
    problems = []
    for index, case in enumerate(scan):
        for kernel in result.usable:
            got = result.found.get((index, kernel))
            if got is None:
                problems.append(f"{result.label}: {kernel} did not scan case {case.name!r}")
            elif got != expected[index]:
                missed = sorted(set(expected[index]) - set(got))[:5]
                extra = sorted(set(got) - set(expected[index]))[:5]
                problems.append(
                    f"{result.label}: {kernel} on {case.name!r} (start {case.start}, count "
                    f"{case.count}): {len(got)} nonces, hashlib {len(expected[index])}; "
                    f"missed {missed}, extra {extra}"
                )
    return problems
