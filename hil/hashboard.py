"""The software hash board: ASIC chain + plant physics + board HAL + the real bridge firmware.

    emu = HashBoardEmulator(family="BM1370", chips=4, seed=1)
    emu.start()                      # ptys open, emulation thread running
    emu.chain_path, emu.board_path   # open them with pyserial like /dev/ttyUSB0
    emu.state()                      # true state (see below); also written to emu.status_path
    emu.set_ambient_c(35.0)
    emu.inject_fault("chip_silent", chip=1, duration_s=5)   # at_s None = now (emulated)
    emu.power_cut()                  # supply lost and back: chips reset, the bridge reboots
    emu.stop()                       # joins the thread, closes every fd

Ports: `transport="pty"` (default) opens two pseudo-terminals, `chain_path` for the ASIC UART and
`board_path` for the board link served by `firmware_bridge.bridge.Bridge` running over
`EmulatedBoardHal` (sensors, fan, regulator, chain power/reset from the plant).
`transport="socket"` uses socket pairs instead; the `asicemu://` / `asicboard://` pyserial URLs
(hil/protocol_asicemu.py) use that, looking emulators up by `name` in `EMULATORS`.

`strict_baud` (default True; pty transport only): bytes in either direction are garbled while the
baud rate the host set on its pty differs by more than 5 % from the chips' UART rate (115 740 bd
after reset, ~1 Mbd after the fast-UART write), as on a real UART. A pty has no wire: the host's
drain returns at once and the kernel hands its bytes over whenever it gets to it (tens of ms on a
loaded machine), so bytes read now count as sent at any rate the host had within the last
`HOST_BYTES_LATE_S` (a host that drains a frame and then switches is right; one that stays at the
wrong rate is garbled).

Time: one emulation thread steps physics and chips every `step_s` emulated seconds (10 ms),
paced by the wall clock divided by `speed`; host bytes are taken at once (the thread waits in
select) and stamped with the current emulated time. All randomness comes from one
`random.Random(seed)`, split into fixed streams, so a seed and the same inputs at the same
emulated times give the same physics. If the host's work outruns the CPU, emulated time lags the
wall clock (`lag_s` in state) instead of skipping physics.

`state()` / status file (JSON, rewritten atomically every ~100 ms emulated): see hil/EMULATOR.md.

Size: about 680 lines on purpose: the loop, the physics step, the wire faults and the control
channel share one emulated clock, one seeded random source and one lock; the chips (hil.chain),
the plant (hil.plant), the faults (hil.faults) and the firmware's HAL (hil.boardhal) are apart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import select
import socket
import tempfile
import threading
import time
from collections import deque
from typing import Any

from hil.boardhal import BoardUart, EmulatedBoardHal
from hil.chain import DEFAULT_DIFFICULTY, HASHING, AsicChain
from hil.errors import EmulatorError, FaultPlanError
from hil.faults import Fault, FaultPlan, fault_from_dict
from hil.plant import BoardParams, ChipPhysics, Plant
from hil.pty import PtyPort, SocketPort

log = logging.getLogger(__name__)

STATUS_PERIOD_S = 0.1  # emulated seconds between status-file rewrites
STATUS_MIN_WALL_S = 0.05  # and never more often than this in wall time (high --speed)
STATE_VERSION = 1
#: wall seconds within which the host's bytes may reach the emulator after it wrote them
HOST_BYTES_LATE_S = 0.25

#: running emulators with transport="socket", by name (for the asicemu:// / asicboard:// URLs)
EMULATORS: dict[str, HashBoardEmulator] = {}
_EMULATORS_LOCK = threading.Lock()


class HashBoardEmulator:
    """A hash board behind two serial ports; see the module docstring for the contract."""

    def __init__(
        self,
        family: str = "BM1370",
        chips: int = 4,
        difficulty: float = DEFAULT_DIFFICULTY,
        seed: int = 0,
        speed: float = 1.0,
        fault_plan: FaultPlan | None = None,
        ambient_c: float = 25.0,
        status_file: str | None = None,
        control_path: str | None = None,
        transport: str = "pty",
        name: str | None = None,
        step_s: float = 0.01,
        board: BoardParams | None = None,
        bridge_config: dict[str, Any] | None = None,
        scan_budget: int = 1 << 22,
        strict_baud: bool = True,
    ) -> None:
        try:
            physics = ChipPhysics.for_family(family)
        except (ValueError, KeyError) as exc:
            raise EmulatorError(str(exc)) from None
        if not 1 <= chips <= 256:
            raise EmulatorError(f"chips must be in 1..256, got {chips}")
        if not (difficulty > 0):
            raise EmulatorError(f"difficulty must be > 0, got {difficulty}")
        if not (speed > 0):
            raise EmulatorError(f"speed must be > 0, got {speed}")
        if transport not in ("pty", "socket"):
            raise EmulatorError(f"transport must be 'pty' or 'socket', got {transport!r}")
        self.family = physics.family
        self.n_chips = chips
        self.seed = seed
        self.speed = float(speed)
        self.step_s = float(step_s)
        self.transport = transport
        self.name = name
        self.strict_baud = strict_baud
        # the host's pty rate as looked at: (wall s, rate), the one in force HOST_BYTES_LATE_S
        # ago first, then each change
        self._host_bauds: deque[tuple[float, int | None]] = deque()
        root = random.Random(seed)
        streams = [random.Random(root.getrandbits(64)) for _ in range(4)]
        self._fault_rng = streams[2]
        self.plant = Plant(physics, board or BoardParams.for_chips(chips), streams[0], ambient_c)
        self.chain = AsicChain(self.family, chips, difficulty, streams[1], scan_budget=scan_budget)
        self.faults = fault_plan or FaultPlan()
        self.hal = EmulatedBoardHal(self)
        self.bridge_config = bridge_config
        self.time_s = 0.0
        self._steps = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ports: dict[str, PtyPort | SocketPort] = {}
        self._wake_r = self._wake_w = -1
        self._control: socket.socket | None = None
        self._clients: list[tuple[socket.socket, bytearray]] = []
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self.status_path = status_file
        self.control_path = control_path
        self._status_due_s = 0.0
        self._status_wall = 0.0
        self._wall0 = 0.0
        self.bridge: Any = None
        self.board_uart: BoardUart | None = None
        self.bridge_error: str | None = None
        self.counters = {"frames_corrupted": 0, "frames_truncated": 0, "frames_dropped": 0,
                         "garbage_bytes": 0, "control_errors": 0, "bridge_errors": 0,
                         "baud_mismatch_bytes": 0}
        self._nonce_marks: list[tuple[float, int]] = []
        # chain starts powered at the default core voltage (the bridge may switch it)
        self.plant.chain_powered = True
        self.plant.vcore_mv = float(self.plant.vcore_set_mv)
        self.plant.step(0.0, self.chain.freqs_mhz(), self.chain.active())
        self.plant.sample()
        self._chain_alive = True
        self.power_cuts = 0

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def chain_path(self) -> str:
        return self._ports["chain"].path

    @property
    def board_path(self) -> str:
        return self._ports["board"].path

    def port(self, which: str) -> PtyPort | SocketPort:
        return self._ports[which]

    def start(self) -> HashBoardEmulator:
        if self._thread is not None:
            raise EmulatorError("emulator already started")
        try:
            cls = PtyPort if self.transport == "pty" else SocketPort
            for which in ("chain", "board"):
                self._ports[which] = cls(which)
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            if self.status_path is None:
                self._tmpdir = tempfile.TemporaryDirectory(prefix="gridminer-emu-")
            if self.status_path is None:
                assert self._tmpdir is not None
                self.status_path = os.path.join(self._tmpdir.name, "status.json")
            if self.control_path:
                self._open_control(self.control_path)
            self.board_uart = BoardUart(self._ports["board"], self._damage)
            self._start_bridge()
            if self.name:
                with _EMULATORS_LOCK:
                    if self.name in EMULATORS:
                        raise EmulatorError(f"an emulator named {self.name!r} is running")
                    EMULATORS[self.name] = self
            self._write_status()
        except BaseException:
            self._close_fds()
            raise
        self._wall0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"emulator-{self.name or 'board'}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the emulation thread and close every port, socket and file; idempotent."""
        self._stop.set()
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with _EMULATORS_LOCK:
            if self.name and EMULATORS.get(self.name) is self:
                del EMULATORS[self.name]
        with self._lock:
            if self.status_path and self._tmpdir is None:
                with contextlib.suppress(OSError):
                    self._write_status()
        self._close_fds()

    def _close_fds(self) -> None:
        for port in self._ports.values():
            port.close()
        for client, _ in self._clients:
            client.close()
        self._clients.clear()
        if self._control is not None:
            self._control.close()
            self._control = None
            with contextlib.suppress(OSError):
                if self.control_path:
                    os.unlink(self.control_path)
        for attr in ("_wake_r", "_wake_w"):
            fd = getattr(self, attr)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, attr, -1)
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def is_running(self) -> bool:
        """True while the emulation thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> HashBoardEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the bridge firmware -----------------------------------------------------------------
    def ticks_ms(self) -> int:
        """Emulated milliseconds: the bridge firmware's clock."""
        return int(self.time_s * 1000.0)

    def _start_bridge(self) -> None:
        try:
            from firmware_bridge.bridge import Bridge
        except ImportError as exc:  # the firmware is a separate component
            self.bridge_error = f"firmware_bridge.bridge unavailable: {exc}"
            log.warning("board link not served: %s", self.bridge_error)
            return
        config = self.default_bridge_config()
        config.update(self.bridge_config or {})
        try:
            self.bridge = Bridge(self.board_uart, self.hal, config, self.ticks_ms)
        except ValueError as exc:
            raise EmulatorError(f"bridge config: {exc}") from None

    def default_bridge_config(self) -> dict[str, Any]:
        """The bridge firmware's config for this board: the family, whether the chain is powered
        at boot, and sensor plausibility limits scaled to the board (the firmware's defaults fit
        a 1-6 chip board)."""
        ph, board = self.plant.physics, self.plant.board
        full_w = board.chips * ph.power0_w * 1.6 / board.regulator_efficiency + (
            board.board_overhead_w + board.fan_power_max_w)
        # Like a Bitaxe after boot, the chain starts powered; the bridge knows it, so its sensor
        # and watchdog protection apply from the start
        return {
            "family": self.family,
            "chain_powered_at_boot": bool(self.plant.chain_powered),
            "power_max_mw": max(500_000, int(2 * full_w * 1000)),
            "iin_max_ma": max(40_000, int(2 * full_w / board.vin_nominal_v * 1000)),
        }

    def _poll_bridge(self) -> None:
        if self.bridge is None:
            return
        try:
            self.bridge.poll()
        except Exception as exc:  # firmware bug: count it, keep the board alive
            self.counters["bridge_errors"] += 1
            if self.counters["bridge_errors"] <= 3:
                log.exception("bridge firmware raised: %s", exc)

    # ---- run-time controls -------------------------------------------------------------------
    def set_ambient_c(self, temp_c: float) -> None:
        temp_c = float(temp_c)
        if not -40.0 <= temp_c <= 80.0:
            raise EmulatorError(f"ambient_c must be in -40..80, got {temp_c}")
        with self._lock:
            self.plant.ambient_c = temp_c

    def inject_fault(self, kind: str, at_s: float | None = None, duration_s: float | None = None,
                     **params: Any) -> Fault:
        """Schedule a fault (at_s None = now, emulated seconds); FaultPlanError if invalid."""
        with self._lock:
            return self.faults.add(Fault(kind, self.time_s if at_s is None else at_s, duration_s,
                                         params))

    def reset_chain(self) -> None:
        """NRST pulse: chips lose their state; a chain hang ends."""
        with self._lock:
            self.chain.reset()
            self.faults.clear_hangs(self.time_s)

    def power_cut(self) -> None:
        """The board loses its supply and gets it back: the chips lose their state, the bridge
        MCU boots again (uptime from 0, watchdog disarmed, no latch, fan and core voltage
        forgotten), the regulator and the fan start at their boot values and, like a Bitaxe,
        the chain is powered at boot. Bytes on their way to the bridge are lost."""
        with self._lock:
            plant = self.plant
            plant.chain_powered = False
            plant.vcore_mv = 0.0
            self.sync_chain_power()  # the chips lose their state
            plant.vcore_set_mv = float(plant.physics.vcore0_mv)
            plant.fan_pct = 100
            plant.chain_powered = True
            plant.vcore_mv = float(plant.vcore_set_mv)
            self.sync_chain_power()
            if self.board_uart is not None:
                self.board_uart.pull()
                self.board_uart.read()
                self._start_bridge()
            self.power_cuts += 1
            log.info("power cut at %.3f s", self.time_s)

    def sync_chain_power(self) -> None:
        """Chips run only with chain power and core voltage; losing either resets them."""
        plant = self.plant
        alive = plant.chain_powered and plant.vcore_mv >= 0.5 * plant.physics.vcore0_mv
        if alive != self._chain_alive:
            self._chain_alive = alive
            self.chain.set_powered(alive)
            if not alive:
                self.faults.clear_hangs(self.time_s)

    # ---- emulation ---------------------------------------------------------------------------
    def advance(self, steps: int = 1) -> None:
        """Run `steps` physics steps now (no pacing); for tests that drive time themselves."""
        with self._lock:
            for _ in range(steps):
                self._physics_step()
                self._flush_output()

    def _physics_step(self) -> None:
        dt = self.step_s
        self.time_s = (self._steps + 1) * dt
        self._steps += 1
        now = self.time_s
        for f in self.faults.start_due(now):
            self._start_fault(f)
        self.faults.retire(now)
        self.chain.silent = {f.params["chip"] for f in self.faults.active("chip_silent", now)}
        rates: dict[int, float] = {}
        for f in self.faults.active("chip_hw_errors", now):
            key = f.params.get("chip", -1)
            rates[key] = rates.get(key, 0.0) + float(f.params["rate_hz"])
        self.chain.hw_error_rate_hz = rates
        self.plant.step(dt, self.chain.freqs_mhz(), self.chain.active())
        self.sync_chain_power()
        rates_hs = [self.plant.chip_hashrate_ghs(i) * 1e9 for i in range(self.n_chips)]
        before = self.chain.stats["nonces"] + self.chain.stats["hw_nonces"]
        self.chain.step(now, dt, rates_hs, self.plant.hw_error_fraction)
        emitted = self.chain.stats["nonces"] + self.chain.stats["hw_nonces"]
        if emitted != before or not self._nonce_marks:
            self._nonce_marks.append((now, emitted))
            while len(self._nonce_marks) > 2 and self._nonce_marks[1][0] < now - 10.0:
                self._nonce_marks.pop(0)
        self._poll_bridge()

    def _start_fault(self, f: Fault) -> None:
        if f.kind == "chain_hang":
            self.chain.hung = True
            f.effects += 1
        elif f.kind == "serial_garbage":
            n = int(f.params.get("bytes", 64))
            data = bytes(self._fault_rng.getrandbits(8) for _ in range(n))
            self._ports[f.params.get("port", "chain")].write(data)
            self.counters["garbage_bytes"] += n
            f.effects += n
        log.info("fault started at %.3f s: %s %s", self.time_s, f.kind, f.params)

    def _damage(self, frames: list[bytes], which: str) -> bytes:
        """Apply active reply faults to whole frames, then join them."""
        now = self.time_s
        active = [(kind, f) for kind in ("reply_drop", "reply_truncate", "reply_corrupt")
                  for f in self.faults.active(kind, now) if f.params.get("port", "chain") == which]
        if not active:
            return b"".join(frames)
        rng = self._fault_rng
        out = []
        for frame in frames:
            for kind, f in active:
                if rng.random() >= f.params.get("probability", 1.0):
                    continue
                f.effects += 1
                if kind == "reply_drop":
                    frame = b""
                    self.counters["frames_dropped"] += 1
                elif kind == "reply_truncate" and len(frame) > 1:
                    frame = frame[: rng.randrange(1, len(frame))]
                    self.counters["frames_truncated"] += 1
                elif kind == "reply_corrupt" and frame:
                    b = bytearray(frame)
                    b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
                    frame = bytes(b)
                    self.counters["frames_corrupted"] += 1
                if not frame:
                    break
            out.append(frame)
        return b"".join(out)

    def _flush_output(self) -> None:
        if not self._ports:
            return  # not started: replies stay queued in the chain
        frames = self.chain.pop_frames(self.time_s)
        if frames:
            data = self._damage(frames, "chain")
            if self._baud_mismatch():
                data = self._garble(data)
            self._ports["chain"].write(data)
        else:
            self._ports["chain"].flush()
        self._ports["board"].flush()

    def _pump_inputs(self) -> None:
        port = self._ports["chain"]
        self._look_at_host_baud(port)  # before reading
        data = port.read()
        if data:
            # A pty cannot tell when bytes were written (the host drains, then switches, and
            # the kernel may hand the bytes over after the switch): they are taken as sent at
            # any rate the host had within HOST_BYTES_LATE_S, garbled only if every one is off.
            if all(self._baud_off(rate) for _, rate in self._host_bauds):
                data = self._garble(data)
            self.chain.feed(data, self.time_s)
        if self.board_uart is not None and self.board_uart.pull():
            self._poll_bridge()

    def _look_at_host_baud(self, port: PtyPort | SocketPort) -> None:
        rate = port.host_baud() if self.strict_baud else None
        now = time.monotonic()
        looks = self._host_bauds
        if not looks or looks[-1][1] != rate:
            looks.append((now, rate))
        while len(looks) > 1 and looks[1][0] <= now - HOST_BYTES_LATE_S:
            looks.popleft()  # the next one was already in force then

    def _baud_off(self, host: int | None) -> bool:
        chip = self.chain.baud
        return host is not None and abs(host - chip) > 0.05 * chip

    def _baud_mismatch(self) -> bool:
        """strict_baud: the host's pty baud is more than 5 % off the chips' UART rate now."""
        return self.strict_baud and self._baud_off(self._ports["chain"].host_baud())

    def _garble(self, data: bytes) -> bytes:
        """What a UART at the wrong rate makes of bytes: noise of a similar length."""
        self.counters["baud_mismatch_bytes"] += len(data)
        rng = self._fault_rng
        return bytes(b ^ (rng.getrandbits(8) | 1) for b in data)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # keep stop() working and say why the board died
            log.exception("emulation thread crashed")
            raise

    def _loop(self) -> None:
        fds = [self._ports["chain"].fileno(), self._ports["board"].fileno(), self._wake_r]
        while not self._stop.is_set():
            deadline = self._wall0 + (self._steps + 1) * self.step_s / self.speed
            timeout = deadline - time.monotonic()
            watch = fds + ([self._control.fileno()] if self._control else []) + [
                c.fileno() for c, _ in self._clients]
            wants_out = [p.fileno() for p in self._ports.values() if p.pending]
            try:
                readable, _, _ = select.select(watch, wants_out, [], max(0.0, timeout))
            except (OSError, ValueError):
                readable = []
            if self._wake_r in readable:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
            with self._lock:
                self._pump_inputs()
                if self._control is not None:
                    self._serve_control(readable)
                if time.monotonic() >= deadline:
                    self._physics_step()
                self._flush_output()
                if self.time_s >= self._status_due_s:
                    wall = time.monotonic()
                    if wall - self._status_wall >= STATUS_MIN_WALL_S or self.speed <= 1.0:
                        self._status_due_s = self.time_s + STATUS_PERIOD_S
                        self._status_wall = wall
                        self._write_status()

    # ---- state -------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The true state: see hil/EMULATOR.md for the keys."""
        with self._lock:
            return self._state()

    def _nonce_rate_hz(self) -> float:
        marks = self._nonce_marks
        if len(marks) < 2 or marks[-1][0] <= marks[0][0]:
            return 0.0
        return (marks[-1][1] - marks[0][1]) / (self.time_s - marks[0][0] or 1.0)

    def _state(self) -> dict[str, Any]:
        plant = self.plant.snapshot()
        chain = self.chain.state()
        wall = time.monotonic() - self._wall0 if self._wall0 else 0.0
        ports = {}
        for which, p in self._ports.items():
            ports[which] = {"path": p.path, "bytes_in": p.bytes_in, "bytes_out": p.bytes_out,
                            "pending": p.pending, "overflow_bytes": p.overflow_bytes,
                            "host_baud": p.host_baud()}
        faults = self.faults.as_list(self.time_s)
        return {
            "version": STATE_VERSION,
            "pid": os.getpid(),
            "family": self.family,
            "chips": self.n_chips,
            "seed": self.seed,
            "speed": self.speed,
            "difficulty": self.chain.difficulty,
            "hashing": HASHING,
            "time_s": round(self.time_s, 6),
            "wall_s": round(wall, 3),
            "lag_s": round(max(0.0, wall * self.speed - self.time_s), 3) if self._wall0 else 0.0,
            # the monotonic instant time_s was due (CLOCK_MONOTONIC is one clock for the
            # machine's processes): a reader stamps the state with it, not with its read time
            "due_monotonic_s": round(self._wall0 + self.time_s / self.speed, 6)
            if self._wall0 else None,
            "chain_path": self._ports["chain"].path if "chain" in self._ports else None,
            "board_path": self._ports["board"].path if "board" in self._ports else None,
            "status_path": self.status_path,
            "control_path": self.control_path,
            "wall_power_w": plant["wall_power_w"],
            "board_power_w": plant["board_power_w"],
            "asic_power_w": plant["asic_power_w"],
            "hashrate_ghs": plant["hashrate_ghs"],
            "ambient_c": plant["ambient_c"],
            "chip_temp_c": plant["chip_temp_c"],
            "max_chip_temp_c": plant["max_chip_temp_c"],
            "freq_mhz": chain["freq_mhz"],
            "vcore_mv": plant["vcore_mv"],
            "fan_rpm": plant["fan_rpm"],
            "chain_powered": plant["chain_powered"],
            "nonces_emitted": chain["nonces"],
            "hw_nonces_emitted": chain["hw_nonces"],
            "nonce_rate_model_hz": chain["model_nonce_rate_hz"],
            "nonce_rate_emitted_hz": round(self._nonce_rate_hz(), 4),
            "nonces_owed": chain["nonces_owed"],
            "faults_injected": self.faults.started_count,
            "power_cuts": self.power_cuts,
            "faults": faults,
            "counters": dict(self.counters),
            "plant": plant,
            "sensors": vars(self.plant.sensors).copy(),
            "chain": chain,
            "ports": ports,
            "bridge": self._bridge_state(),
        }

    def _bridge_state(self) -> dict[str, Any]:
        b = self.bridge
        if b is None:
            return {"running": False, "error": self.bridge_error}
        from firmware_bridge import link

        return {"running": True, "state": link.STATE_NAMES.get(b.state, b.state),
                "trip_reason": link.TRIP_NAMES.get(b.trip_reason, b.trip_reason),
                "trips": b.trips, "requests": b.requests, "errors": self.counters["bridge_errors"]}

    def _write_status(self) -> None:
        path = self.status_path
        if not path:
            return
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(self._state(), fh, separators=(",", ":"))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("status file %s not written: %s", path, exc)

    # ---- control channel (unix socket, JSON lines) -------------------------------------------
    def _open_control(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(4)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise EmulatorError(f"control socket {path}: {exc.strerror}") from None
        self._control = sock

    def _serve_control(self, readable: list[int]) -> None:
        assert self._control is not None
        if self._control.fileno() in readable:
            with contextlib.suppress(BlockingIOError):
                conn, _ = self._control.accept()
                conn.setblocking(False)
                self._clients.append((conn, bytearray()))
        for conn, buf in list(self._clients):
            if conn.fileno() not in readable:
                continue
            try:
                data = conn.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                conn.close()
                self._clients.remove((conn, buf))
                continue
            buf += data
            while b"\n" in buf:
                line, _, rest = bytes(buf).partition(b"\n")
                buf[:] = rest
                reply = self.control(line)
                with contextlib.suppress(OSError):
                    conn.setblocking(True)
                    conn.sendall(json.dumps(reply).encode() + b"\n")
                    conn.setblocking(False)

    def control(self, line: bytes | str) -> dict[str, Any]:
        """One control request (a JSON object) -> reply; never raises. Commands:
        {"cmd": "set_ambient_c", "value": 30.0}; {"cmd": "inject_fault", "fault": {...}}
        (a fault-plan entry; at_s omitted = now); {"cmd": "state"}; {"cmd": "reset_chain"};
        {"cmd": "power_cut"}."""
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("request must be a JSON object")
            cmd = req.get("cmd")
            if cmd == "set_ambient_c":
                self.set_ambient_c(req["value"])
                return {"ok": True}
            if cmd == "inject_fault":
                entry = dict(req.get("fault") or {})
                entry.setdefault("at_s", self.time_s)
                with self._lock:
                    fault = self.faults.add(fault_from_dict(entry))
                return {"ok": True, "fault": fault.as_dict(self.time_s)}
            if cmd == "state":
                return {"ok": True, "state": self.state()}
            if cmd == "reset_chain":
                self.reset_chain()
                return {"ok": True}
            if cmd == "power_cut":
                self.power_cut()
                return {"ok": True}
            raise ValueError(f"unknown cmd {cmd!r} (set_ambient_c, inject_fault, state, "
                             "reset_chain, power_cut)")
        except (ValueError, TypeError, KeyError, EmulatorError, FaultPlanError) as exc:
            self.counters["control_errors"] += 1
            return {"ok": False, "error": str(exc)}


def find(name: str) -> HashBoardEmulator | None:
    """A running socket-transport emulator registered under `name`."""
    with _EMULATORS_LOCK:
        return EMULATORS.get(name)
