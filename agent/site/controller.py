"""The site controller (`gridminer site`): the whole site as one grid resource (spec section 7).

Grid side: device `site` of its site, run by the device's own `GridSession` (same checks, reason
codes, acks, replay state) with `SiteTarget` as its sink and the site's figures as its telemetry.
Fleet side: the devices' retained status and telemetry (`Roster`), the site meter (`Meter`), the
PI trim on measured power (`PowerTrim`), the split of the target (`Allocator`) and the commands
it takes (`OrderBook`), signed with the site's own key and published by `FleetClient`.

One thread runs `step()`: it never blocks on the network. It first learns the fleet after the
broker answers: the devices' retained statuses arrive in a burst right after it subscribes, so it
goes online as device `site` once the roster has stopped growing for `learn_quiet_s` (at most
`learn_max_s` after connecting, when a fleet keeps trickling in); a restart starts its
target from the measured power, so it continues without a step larger than the ramp.
`state()` gives the site as plain data (targets, roster, flexibility) for a dashboard or a
demand-response bridge, from any thread.

Start-ups: spec section 7 has `curtail`, `standby` and `resume` of the site go to every device.
Curtail and standby go as one message on the site-wide topic `all` (shedding at once is what the
grid wants). Resume (and the site's default: no command yet, a lapsed command, a `default_now`
fallback) reaches every device too, but as device commands: it is the site target max_w, approached
at the site's ramp and split by the allocator like a setpoint, so devices in standby are started at
most `max_starts` a tick (a chain's power-on is a step of its device's min_w) and the site never
re-energises in one step. A one-message `resume` on `all` would power every chain at once.

A fatal grid link (another client holds device `site`, the link gave up): the controller stops
dispatching at once, sends its devices nothing more (another controller may hold the site now;
a command from this one would fight it) and `run()` returns with `fatal` set; the command line
exits non-zero so that a supervisor restarts it. The devices hold their last commands until
these lapse (`exp`: at most `validity_s`, spread by its jitter), then each moves to its own
default target at its own ramp limit (spec section 3.4), unless a controller holding the site
commands them first.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.clock import Clock, SystemClock
from agent.errors import GridLinkError
from agent.grid.contract import PREFIX, RESERVED_DEVICES, SITE_DEVICE, Topics
from agent.grid.link import Inbound
from agent.grid.session import GridPolicy, GridSession, Link
from agent.grid.telemetry import caps_map, decode_map
from agent.site.allocate import Allocator, Unit
from agent.site.fleet_client import FleetClient
from agent.site.meter import Meter
from agent.site.orders import Order, OrderBook, Want
from agent.site.roster import DeviceRecord, Roster
from agent.site.sequence import SeqBlock
from agent.site.signer import CommandSigner
from agent.site.target import SiteCaps, SiteTarget
from agent.site.trim import PowerTrim

log = logging.getLogger(__name__)

FIVE_MIN_S = 300.0
STATUS_ASK_S = 5.0  # a device heard without its retained status is asked again this often
SUMMARY_PERIOD_S = 60.0  # a summary line in the log this often
CAPS_SHARE = 0.01  # caps that move by more than this share of max_w are republished at once ...
CAPS_PERIOD_S = 0.5  # ... at most this often (else with the next telemetry)


@dataclass(frozen=True)
class SiteSettings:
    """The controller's numbers; the CLI sets the first four."""

    site: str
    prefix: str = PREFIX
    ramp_w_s: float | None = None  # the site's ramp limit (default: the devices' together)
    meter_topic: str | None = None  # the site meter; else the sum of the devices' telemetry
    tick_s: float = 0.25
    learn_quiet_s: float = 1.0  # after connecting, go online once no device was new this long
    learn_max_s: float = 10.0  # ... or this long after connecting at the latest
    stale_s: float = 3.0  # telemetry older than this: the device does not answer
    validity_s: float = 60.0  # device commands hold this long (exp) ...
    refresh_s: float = 20.0  # ... and are renewed this long before they lapse
    deadband_frac: float = 0.02  # of a device's max_w: smaller moves of its share wait
    deadband_min_w: float = 10.0
    lag_s: float = 5.0  # a device this far behind its modelled move lags ...
    lag_hold_s: float = 30.0  # ... and is capped at what it drew then for this long
    start_s: float = 20.0  # a device switched on does not lag before this long
    refuse_hold_s: float = 30.0  # a device that rejected a command is left alone this long
    dwell_s: float = 10.0  # a device switched this recently is not stopped to spare capacity
    merit_margin: float = 0.03  # load moves to another device only if it is this much better
    trim_frac: float = 0.1  # the PI trim stays within this share of the site target
    settle_s: float = 4.0  # after a large move (or a change of the devices measured), the
    #                        trim holds this long: the fleet's response, not a model error


class _SiteLink:
    """The site's GridLink as its GridSession sees it: commands on the site-wide topic are the
    site's own commands to its devices, not the operator's to the site: acked and dropped."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.topics = link.topics

    @property
    def connected(self) -> bool:
        return self.link.connected

    def drain(self) -> list[Inbound]:
        out = []
        for msg in self.link.drain():
            if msg.topic == self.topics.cmd:
                out.append(msg)
            else:
                self.link.ack(msg)
        return out

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                correlation_data: bytes | None = None,
                user_properties: tuple[tuple[str, str], ...] = ()) -> bool:
        return self.link.publish(topic, payload, qos, retain, correlation_data, user_properties)

    def ack(self, msg: Inbound) -> None:
        self.link.ack(msg)

    def set_status(self, caps: Any, mode: str | None) -> None:
        self.link.set_status(caps, mode)

    def take_lost(self) -> int:
        return self.link.take_lost()


class SiteController:
    """See the module docstring. `link` is the site's GridLink (device `site`, not started),
    `fleet` the FleetClient (not started), `keys` the grid operator's public keys."""

    def __init__(self, settings: SiteSettings, link: Any, fleet: FleetClient,
                 signer: CommandSigner, seq: SeqBlock, keys: dict[bytes, Ed25519PublicKey],
                 state_dir: str | Path, clock: Clock | None = None) -> None:
        self.settings = settings
        self.link = link
        self.fleet = fleet
        self.signer = signer
        self.seq = seq
        self.keys = keys
        self.state_dir = Path(state_dir)
        self.clock = clock or SystemClock()
        self.roster = Roster(settings.site, settings.prefix)
        self.meter = Meter(settings.meter_topic, settings.stale_s) if settings.meter_topic else None
        self.target = SiteTarget(settings.ramp_w_s)
        self.trim = PowerTrim(limit_frac=settings.trim_frac)
        self.book = OrderBook(settings.validity_s, settings.refresh_s, settings.deadband_frac,
                              settings.deadband_min_w)
        self.session: GridSession | None = None
        self.counters: Counter[str] = Counter()
        self.energy_wh = 0.0
        self.measured_w: float | None = None
        self.trim_w = 0.0
        self.shares_w: dict[str, float] = {}
        self.judged: dict[str, str] = {}  # device -> why it is not dispatched (last step)
        self._lagging: dict[str, float] = {}  # device -> until (monotonic)
        self._lag_cap_w: dict[str, float] = {}  # device -> what it drew when found lagging
        self._refusing: dict[str, float] = {}
        self._status_asked_s: dict[str, float] = {}  # devices heard without a status: when asked
        self._saturated = 0
        self._moving_until_s = -math.inf  # the fleet carries out a large move until then
        self._fleet = (0, 0)  # devices measured and dispatched, at the last step
        self._learn_from_s: float | None = None  # connected to the fleet's broker then
        self._roster_size = 0
        self._grew_s = 0.0  # a device was new then (while learning)
        self._last_s: float | None = None
        self._state: dict[str, Any] = {"phase": "learning", "site": settings.site}
        self._next_state_s = 0.0
        self._pushed_caps: SiteCaps | None = None  # in the retained status (as far as we know)
        self._next_caps_s = 0.0
        self._next_log_s = 0.0
        self.standby_w: dict[str, float] = {}  # device -> least draw measured in standby
        self.fatal: str | None = None  # why the controller stopped for good
        self.wake = threading.Event()
        self.on_online: Callable[[dict[str, Any]], None] | None = None  # once, when online

    @staticmethod
    def fleet_topics(site: str, prefix: str = PREFIX, meter_topic: str | None = None) -> list[str]:
        topics = [f"{prefix}/{site}/+/{leaf}" for leaf in ("status", "telemetry", "ack")]
        return topics + ([meter_topic] if meter_topic else [])

    # ---- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.fleet.start()

    def stop(self) -> None:
        """Offline status for the site (its Will otherwise; none after a fatal link: the site's
        status is another client's now), and both connections closed. The devices hold their
        commands until these lapse, then fall back to their defaults."""
        if self.session is not None:
            self.link.stop()
        self.fleet.close()

    def fail(self, text: str) -> None:
        """Stop for good (any thread): no dispatch from now on, `run()` returns. The first
        reason is the one kept."""
        if self.fatal is None:
            self.fatal = text
            log.error("site %s stops dispatching: %s; the devices hold their commands until "
                      "these lapse, then move to their own defaults", self.settings.site, text)
        self.wake.set()

    def run(self, stop: threading.Event) -> None:
        """Step until `stop` is set or the controller fails (`fatal`)."""
        self.start()
        try:
            while not stop.is_set() and self.fatal is None:
                wait_s = self.step()
                self.wake.wait(max(0.0, min(wait_s, self.settings.tick_s)))
                self.wake.clear()
        finally:
            self.stop()

    @property
    def online(self) -> bool:
        return self.session is not None

    def _go_online(self, now_s: float) -> None:
        self.target.update_caps(self._caps())
        policy = GridPolicy(restart_spread_s=0.0, hold_during_spread=False)
        self.session = GridSession(_SiteLink(self.link), self.target, self.keys, self.state_dir,
                                   snapshot=self.snapshot, policy=policy, clock=self.clock)
        self.link.on_inbound = self.wake.set
        self.link.on_fatal = lambda text: self.fail(f"grid link: {text}")
        self.link.start()
        self.session.start(hot=True)  # the fleet's load is on: continue from it, no spread
        caps = self.target.current_caps
        summary = {"devices": len(self.roster.online()),
                   "answering": len(self.roster.answering(now_s, self.settings.stale_s)),
                   "max_w": caps.max_w, "ramp_max_w_s": caps.ramp_max_w_s}
        log.info("site %s online: %d devices (%d answering), max %d W, ramp %d W/s",
                 self.settings.site, summary["devices"], summary["answering"], caps.max_w,
                 caps.ramp_max_w_s)
        if self.on_online is not None:
            self.on_online(summary)

    # ---- one pass -------------------------------------------------------------------------------
    def step(self, now_s: float | None = None) -> float:
        """One pass; returns the seconds until the next is due."""
        now_s = self.clock.monotonic() if now_s is None else now_s
        if self.fatal is not None:
            return self.settings.tick_s  # dispatching blind is worse than not at all
        self._take_messages(now_s)
        if self.session is None:
            if not self._learned(now_s):
                return self.settings.tick_s
            self._go_online(now_s)
        assert self.session is not None
        self.target.update_caps(self._caps())
        self._push_caps(now_s)
        self.measured_w = self._measured(now_s)
        self._account_energy(now_s)
        wait_s = self.session.service(now_s)
        self._dispatch(now_s)
        if now_s >= self._next_state_s:
            self._state = self._build_state(now_s)
            self._next_state_s = now_s + 1.0
        if now_s >= self._next_log_s:
            self._log_summary()
            self._next_log_s = now_s + SUMMARY_PERIOD_S
        return min(wait_s, self.settings.tick_s)

    def _learned(self, now_s: float) -> bool:
        """Whether the roster has stopped growing (or the longest wait is over)."""
        if self._learn_from_s is None:
            if not self.fleet.connected:
                return False
            self._learn_from_s = self._grew_s = now_s
        size = len(self.roster.devices)
        if size != self._roster_size:
            self._roster_size, self._grew_s = size, now_s
        quiet_s = self.settings.learn_quiet_s
        return (now_s - self._grew_s >= quiet_s and now_s - self._learn_from_s >= quiet_s) or \
            now_s - self._learn_from_s >= self.settings.learn_max_s

    def _push_caps(self, now_s: float) -> None:
        """Republish the retained status at once when the caps moved by more than `CAPS_SHARE`
        (devices lost or back): an operator keeps its setpoints within the last caps it saw."""
        caps = self.target.current_caps
        last = self._pushed_caps
        if last is not None and now_s < self._next_caps_s:
            return
        moved = last is None or max(abs(caps.max_w - last.max_w), abs(caps.min_w - last.min_w),
                                    abs(caps.ramp_max_w_s - last.ramp_max_w_s)) \
            > CAPS_SHARE * max(caps.max_w, last.max_w, 1)
        if moved:
            self.link.set_status(caps_map(caps), self._mode())
            self._pushed_caps, self._next_caps_s = caps, now_s + CAPS_PERIOD_S

    def _take_messages(self, now_s: float) -> None:
        for topic, payload, received_s in self.fleet.drain():
            if self.meter is not None and topic == self.meter.topic:
                self.meter.update(payload, now_s)
            elif topic.endswith("/ack"):
                self._take_ack(topic, payload, now_s, min(received_s, now_s))
            elif self.roster.update(topic, payload, now_s) == "telemetry":
                device = topic.split("/")[2]
                self._note_standby(device)
                self._ask_status_if_missing(device, topic, now_s)

    def _ask_status_if_missing(self, device: str, telemetry_topic: str, now_s: float) -> None:
        """A device that sends telemetry but whose retained status never came (lost in the
        burst after a (re)connect) is asked for it again, at most every STATUS_ASK_S: without
        its caps it would not be dispatched."""
        rec = self.roster.devices.get(device)
        if rec is None or rec.has_caps:
            self._status_asked_s.pop(device, None)
            return
        if now_s < self._status_asked_s.get(device, -math.inf) + STATUS_ASK_S:
            return
        self._status_asked_s[device] = now_s
        self.counters["status_asked"] += 1
        self.fleet.ask_status(telemetry_topic.rsplit("/", 1)[0] + "/status")

    def _note_standby(self, device: str) -> None:
        """A device's standby draw (board, fans): the least its telemetry read in standby."""
        rec = self.roster.devices.get(device)
        if rec is not None and rec.mode == "standby" and rec.power_w is not None:
            self.standby_w[device] = min(rec.power_w, self.standby_w.get(device, math.inf))

    def _take_ack(self, topic: str, payload: bytes, now_s: float, received_s: float) -> None:
        """A device's answer: an accepted move ends when the device says (counted from when
        the answer arrived); a refusal leaves the device alone for a while."""
        device = topic.split("/")[2] if topic.count("/") == 3 else None
        ack = decode_map(payload)
        if device is None or device in RESERVED_DEVICES or ack is None:
            return
        if ack.get("result") in ("accepted", "duplicate"):
            cmd_id, eta_ms = ack.get("id"), ack.get("eta_ms")
            eta_s = (eta_ms / 1000.0 if isinstance(eta_ms, int | float)
                     and not isinstance(eta_ms, bool) else None)
            if isinstance(cmd_id, bytes):
                self.book.acked(device, cmd_id, received_s, eta_s)
            return
        if ack.get("result") != "rejected":
            return
        reason = str(ack.get("reason", "?"))
        self.counters[f"device_rejected_{reason}"] += 1
        if device not in self._refusing:
            log.warning("device %s rejected a site command: %s (%s); left alone for %.0f s",
                        device, reason, ack.get("detail", ""), self.settings.refuse_hold_s)
        self._refusing[device] = now_s + self.settings.refuse_hold_s
        self.book.forget(device)

    def _caps(self) -> SiteCaps:
        return SiteCaps.of(self.roster.online(), self.settings.ramp_w_s, self.standby_w)

    def _measured(self, now_s: float) -> float | None:
        if self.meter is not None:
            return self.meter.value_w(now_s)
        return self.roster.measured_w(now_s, self.settings.stale_s)

    def _account_energy(self, now_s: float) -> None:
        if self._last_s is not None and self.measured_w is not None:
            self.energy_wh += self.measured_w * max(0.0, now_s - self._last_s) / 3600.0
        self._last_s = now_s

    # ---- dispatch -------------------------------------------------------------------------------
    def _dispatch(self, now_s: float) -> None:
        target_w = self.target.advance(now_s, self.measured_w)
        op = self.target.op
        if not self.target.tracking or target_w is None:
            self.trim.reset()
            self.trim_w = 0.0
            self.shares_w = {}
            if op in ("curtail", "standby"):
                order = self.book.plan_site(now_s, op, self._site_wide_ramp())
                if order is not None and not self._publish(order):
                    self.book.site = None
            return
        units, fixed_w, lost = self._units(now_s)
        caps = self.target.current_caps
        self.trim.settle_w = self.trim.floor_w = 0.01 * caps.max_w
        answering = len(self.roster.devices) - sum(
            1 for why in self.judged.values() if why in ("offline", "stale"))
        fleet = (answering, len(units))
        if (self.book.in_flight_w_s(now_s) > 0.05 * self.target.ramp_w_s
                or fleet != self._fleet):
            # a large move under way, or the devices measured or dispatched changed: the error
            # is not the model's
            self._moving_until_s = now_s + self.settings.settle_s
        self._fleet = fleet
        self.trim_w = self.trim.update(now_s, target_w, self.measured_w, self._saturated,
                                       moving=now_s < self._moving_until_s)
        tolerance_w = max(self.settings.deadband_min_w, 0.001 * caps.max_w)
        # on the way up, the shares are the goal's at once: no device the goal needs is stopped
        # on the way (a resume from curtail keeps every device on), every device gets one
        # command for the whole climb, and the site ramp shared by the moves paces them
        goal_w = self.target.goal_w()
        climbing = goal_w is not None and goal_w - target_w > tolerance_w
        allocation = self._allocator().allocate(
            units, (goal_w if climbing and goal_w is not None else target_w) + self.trim_w
            - fixed_w)
        self._saturated = (1 if allocation.low_w > tolerance_w else
                           -1 if allocation.low_w < -tolerance_w else 0)
        self.shares_w = allocation.shares_w
        # a lost device is taken to draw nothing: its standby is no move for the site's ramp
        wants = {r.device: Want(None, 0.0, r.max_w, r.ramp_max_w_s) for r in lost}
        for device, share_w in allocation.shares_w.items():
            rec = self.roster.devices[device]
            fitted = None if share_w <= 0 else _fit(share_w, rec)
            wants[device] = Want(fitted, rec.power_w, rec.max_w, rec.ramp_max_w_s)
        for order in self.book.plan(now_s, wants, self.target.ramp_w_s):
            if not self._publish(order):
                self.book.forget(order.device or "")
        self.counters["deferred"] += self.book.deferred

    def _allocator(self) -> Allocator:
        """Start-ups spread so the power they add in a tick stays within the site ramp."""
        online = self.roster.online()
        mean_min_w = sum(r.min_w for r in online) / len(online) if online else 1.0
        starts = int(self.target.ramp_w_s * self.settings.tick_s / max(mean_min_w, 1.0))
        biggest_w = max((r.max_w for r in online), default=0.0)
        return Allocator(max_starts=max(1, starts), max_stops=max(1, starts),
                         hysteresis_w=biggest_w)

    def _site_wide_ramp(self) -> int:
        """The per-device ramp of a site-wide command: the site's ramp shared by the devices
        online that draw (one in standby does not move), within the slowest device's own
        limit."""
        online = self.roster.online()
        if not online:
            return 1
        drawing = [r for r in online if r.mode != "standby"]
        share = self.target.ramp_w_s / max(1, len(drawing))
        return max(1, int(min(share, min(r.ramp_max_w_s for r in online))))

    def _units(self, now_s: float) -> tuple[list[Unit], float, list[DeviceRecord]]:
        """The dispatchable devices (a lagging one capped at what it drew), the power no share
        moves (answering devices that are not dispatchable: tripped, refusing commands; and the
        own draw of those standing by), and the lost ones (offline, silent, tripped): their
        share went to the others, so they are told to stand by, and when they come back they are
        started as the others are, one batch at a time."""
        settings = self.settings
        units: list[Unit] = []
        fixed_w = 0.0
        lost: list[DeviceRecord] = []
        judged: dict[str, str] = {}
        for rec in self.roster.devices.values():
            device = rec.device
            if not (rec.online and rec.has_caps):
                judged[device] = "offline"
            elif not rec.answering(now_s, settings.stale_s):
                judged[device] = "stale"
            elif rec.mode == "tripped":
                judged[device] = "tripped"
            elif self._refusing.get(device, -math.inf) > now_s:
                judged[device] = "refusing"
            if device in judged:
                if judged[device] in ("tripped", "refusing"):
                    fixed_w += rec.power_w or 0.0
                if judged[device] != "refusing" and rec.has_caps:
                    lost.append(rec)
                else:
                    self.book.forget(device)
                continue
            on = self.book.is_on(device)
            if on is None:
                on = rec.mode != "standby" and (rec.power_w or 0.0) > 0.0
            if self._lags(rec, now_s):
                judged[device] = "lagging"
                held_w = min(rec.max_w, max(rec.min_w, self._lag_cap_w.get(device, 0.0)))
                if on:  # capped at what it drew: it can give load, not take more
                    units.append(Unit(device, rec.min_w, held_w, rec.j_th, True, False))
                else:
                    fixed_w += rec.power_w or 0.0
                continue
            if not on and rec.mode == "standby" and (rec.power_w or 0.0) < rec.min_w:
                # a board standing by still draws (fans, controller) once its chain is down
                fixed_w += rec.power_w or 0.0
            switched_s = self.book.switched_s.get(device, -math.inf)
            dwelt = now_s - switched_s >= settings.dwell_s
            # a device carrying load keeps it unless another is clearly more efficient
            load = self.shares_w.get(device, 0.0) / rec.max_w
            j_th = rec.j_th * (1.0 - settings.merit_margin * load)
            units.append(Unit(device, rec.min_w, rec.max_w, j_th, on, dwelt=dwelt))
        self.judged = judged
        return units, fixed_w, lost

    def _lags(self, rec: DeviceRecord, now_s: float) -> bool:
        """Behind its setpoint longer than its move plus `lag_s` (then held for `lag_hold_s`)."""
        until_s = self._lagging.get(rec.device)
        if until_s is not None:
            if now_s < until_s:
                return True
            del self._lagging[rec.device]
        sent = self.book.sent.get(rec.device)
        if sent is None or sent.op != "setpoint" or sent.power_w is None or rec.power_w is None:
            return False
        if now_s < sent.due_s + self.settings.lag_s or rec.mode == "starting":
            return False
        if now_s - self.book.switched_s.get(rec.device, -math.inf) < self.settings.start_s:
            return False  # a chain that was powered down takes a while to come up
        tolerance_w = max(0.05 * rec.max_w, self.book.deadband_w(rec.max_w))
        if abs(rec.power_w - sent.power_w) <= tolerance_w:
            return False
        log.info("device %s lags: %.0f W for a setpoint of %.0f W; held for %.0f s", rec.device,
                 rec.power_w, sent.power_w, self.settings.lag_hold_s)
        self.counters["lagging"] += 1
        self._lagging[rec.device] = now_s + self.settings.lag_hold_s
        self._lag_cap_w[rec.device] = rec.power_w
        return True

    def _publish(self, order: Order) -> bool:
        try:
            seq = self.seq.next()
            signed = self.signer.build(
                self.settings.site, order.device, order.op, seq=seq,
                now_ms=math.floor(self.clock.time() * 1000), validity_s=order.validity_s,
                power_w=order.power_w, ramp_w_s=order.ramp_w_s, fallback="hold_until_exp")
            self.fleet.publish_command(signed)
            if order.device is not None:
                self.book.issued(order.device, signed.id)
        except (GridLinkError, OSError, ValueError) as exc:
            self.counters["publish_failed"] += 1
            if self.counters["publish_failed"] in (1, 10, 100) or \
                    self.counters["publish_failed"] % 1000 == 0:
                log.warning("site command to %s not sent: %s (%d so far)",
                            order.device or "all", exc, self.counters["publish_failed"])
            return False
        self.counters["commands"] += 1
        self.counters[f"commands_{order.op}"] += 1
        return True

    def _log_summary(self) -> None:
        counts = Counter(self.judged.values())
        counts["dispatched"] = sum(1 for d, w in self.shares_w.items()
                                   if w > 0 and d not in self.judged)
        counts["off"] = sum(1 for w in self.shares_w.values() if w == 0)
        log.info("site %s: %s, target %s W, measured %s W, trim %.0f W; devices %s; "
                 "%d commands sent, %d held back by the ramp, %d not sent",
                 self.settings.site, self.target.op, _w(self.target.target_w),
                 _w(self.measured_w), self.trim_w,
                 ", ".join(f"{n} {k}" for k, n in sorted(counts.items()) if n) or "none",
                 self.counters["commands"], self.counters["deferred"],
                 self.counters["publish_failed"])

    # ---- what the site reports ------------------------------------------------------------------
    def _mode(self) -> str:
        if self.session is None:
            return "starting"
        return {"curtail": "curtailed", "standby": "standby"}.get(self.target.op, "mining")

    def flex_w(self, now_s: float) -> dict[str, float]:
        """W the site can add or shed now (the answering devices' headroom), and within 5 min
        at its ramp limit."""
        answering = [r for r in self.roster.answering(now_s, self.settings.stale_s)
                     if r.mode != "tripped"]
        up = sum(max(0.0, r.max_w - (r.power_w or 0.0)) for r in answering)
        down = sum(max(0.0, (r.power_w or 0.0) - self.standby_w.get(r.device, 0.0))
                   for r in answering)
        reach = self.target.ramp_w_s * FIVE_MIN_S
        return {"flex_up_w": round(up, 1), "flex_down_w": round(down, 1),
                "flex_up_5m_w": round(min(up, reach), 1),
                "flex_down_5m_w": round(min(down, reach), 1)}

    def snapshot(self) -> dict[str, Any]:
        """The site's telemetry (spec section 7), for its GridSession."""
        now_s = self.clock.monotonic()
        stale_s = self.settings.stale_s
        return {
            "mode": self._mode(),
            "power_w": self.measured_w,
            "target_w": self.target.target_w,
            "hashrate_ghs": round(self.roster.hashrate_ghs(now_s, stale_s), 3),
            "energy_wh": round(self.energy_wh, 3),
            "devices": len(self.roster.online()),
            "devices_total": len(self.roster.devices),
            **self.flex_w(now_s),
        }

    def _build_state(self, now_s: float) -> dict[str, Any]:
        devices = []
        for rec in sorted(self.roster.devices.values(), key=lambda r: r.device):
            share = self.shares_w.get(rec.device)
            devices.append({
                "device": rec.device, "online": rec.online, "mode": rec.mode,
                "power_w": rec.power_w, "share_w": share,
                "j_th": None if math.isinf(rec.j_th) else round(rec.j_th, 2),
                "status": self.judged.get(rec.device) or (
                    "off" if share == 0.0 else "dispatched" if share is not None else "idle"),
            })
        return {
            "phase": "online" if self.session is not None else "learning",
            "site": self.settings.site,
            "op": self.target.op,
            "setpoint_w": self.target.setpoint_w,
            "target_w": self.target.target_w,
            "measured_w": self.measured_w,
            "trim_w": round(self.trim_w, 1),
            "ramp_w_s": self.target.ramp_w_s,
            "caps": asdict(self.target.current_caps),
            "energy_wh": round(self.energy_wh, 3),
            **self.flex_w(now_s),
            "counters": dict(self.counters),
            "devices": devices,
        }

    def state(self) -> dict[str, Any]:
        """The site as plain data, refreshed once a second (safe to call from any thread)."""
        return self._state


def _w(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _fit(share_w: float, rec: DeviceRecord) -> int:
    """A share as a whole number of W inside the device's caps."""
    return int(min(math.floor(rec.max_w), max(math.ceil(rec.min_w), round(share_w))))


def site_topics(site: str, prefix: str = PREFIX) -> Topics:
    """The site controller's own topics (device `site`)."""
    return Topics(site, SITE_DEVICE, prefix)
