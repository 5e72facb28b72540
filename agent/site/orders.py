"""Which device commands the site controller sends, and when: pure bookkeeping (no MQTT, no
signing), so the rules are tested alone.

* A device gets a command when its share moves by more than a deadband (a fraction of its
  rating, at least `deadband_min_w`) or up to its rating (else a fleet climbing together would
  stop short of full power), when it is to be switched on or off, or when the command it
  follows comes within `refresh_s` of its `exp`. Commands hold for `validity_s` (less a random
  15 %, so the refreshes of a fleet spread out): a dead controller leaves the fleet holding, then
  falling back to its defaults when the commands lapse.
* A device still far from its share well after its move should have ended is sent it again.
* The site's ramp limit holds across the fleet: every command carries a `ramp_w_s`, and the
  ramps of the moves in flight never add up to more than the site's. A batch shares the site's
  ramp in proportion to each move (so the moves of a batch end together), capped by each
  device's own limit; a move the ramps still in flight leave no room for waits. A move is in
  flight until its modelled end, and until the device has answered for it: then until the end
  it announced (`eta_ms`), so a late command (a busy broker or device) is not overtaken by the
  next batch's ramps (at most `ack_wait_s` past the modelled end without an answer).
* Site-wide commands (curtail, standby) go on the `all` topic, refreshed before they lapse: one
  message sheds every device at once. After one, every device is addressed afresh. The site's
  `resume` is no site-wide command: it is a target (`agent.site.target`) reached with device
  commands, so that the start-ups are spread.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Order:
    """A command to sign and publish; `device` None means the site-wide topic."""

    device: str | None
    op: str
    power_w: int | None = None
    ramp_w_s: int | None = None
    validity_s: float = 60.0


@dataclass
class _Sent:
    op: str
    power_w: float | None
    ramp_w_s: int | None
    exp_s: float  # monotonic time the command lapses
    move_end_s: float  # when its move is modelled (or, once acked, announced) to be over
    due_s: float  # when the move to this share was first modelled to be over
    cmd_id: bytes | None = None  # the last command that went out for it
    acked: bool = False  # the device accepted that move


@dataclass(frozen=True)
class Want:
    """What the controller wants of one device: a share (None: off, i.e. standby), the power it
    draws now (None: unknown), its rating and its own ramp limit."""

    share_w: int | None
    power_w: float | None
    max_w: float
    ramp_max_w_s: float


class OrderBook:
    def __init__(self, validity_s: float = 60.0, refresh_s: float = 20.0,
                 deadband_frac: float = 0.02, deadband_min_w: float = 10.0,
                 catch_up_s: float = 1.5, ack_wait_s: float = 2.0,
                 rng: random.Random | None = None) -> None:
        if not 0 < refresh_s < validity_s * 0.85:
            raise ValueError("refresh_s must lie between 0 and 85 % of validity_s")
        self.validity_s = validity_s
        self.refresh_s = refresh_s
        self.deadband_frac = deadband_frac
        self.deadband_min_w = deadband_min_w
        self.catch_up_s = catch_up_s
        self.ack_wait_s = ack_wait_s
        self.rng = rng or random.Random()
        self.sent: dict[str, _Sent] = {}
        self.switched_s: dict[str, float] = {}  # when a device was last switched on or off
        self.site: _Sent | None = None
        self.deferred = 0  # changes held back by the site ramp (last plan)

    def _validity(self) -> float:
        return self.validity_s * self.rng.uniform(0.85, 1.0)

    def deadband_w(self, max_w: float) -> float:
        return max(self.deadband_min_w, self.deadband_frac * max_w)

    def in_flight_w_s(self, now_s: float, besides: frozenset[str] | set[str] = frozenset()
                      ) -> float:
        """The ramps of the moves still under way (those of `besides` left out)."""
        return sum(s.ramp_w_s or 0 for d, s in self.sent.items()
                   if self._moving(s, now_s) and d not in besides)

    def _moving(self, sent: _Sent, now_s: float) -> bool:
        return now_s < sent.move_end_s or (
            not sent.acked and now_s < sent.move_end_s + self.ack_wait_s)

    def issued(self, device: str, cmd_id: bytes) -> None:
        """The command planned last for `device` went out with id `cmd_id`."""
        sent = self.sent.get(device)
        if sent is not None:
            sent.cmd_id = cmd_id

    def acked(self, device: str, cmd_id: bytes, now_s: float, eta_s: float | None) -> None:
        """`device` accepted `cmd_id`: its move ends `eta_s` from now by its own estimate (never
        before the modelled end; an estimate beyond the command's validity is not believed)."""
        sent = self.sent.get(device)
        if sent is None or sent.cmd_id != cmd_id:
            return  # an answer to an older command
        sent.acked = True
        if eta_s is not None and math.isfinite(eta_s) and eta_s >= 0.0:
            sent.move_end_s = max(sent.move_end_s, now_s + min(eta_s, self.validity_s))

    def is_on(self, device: str) -> bool | None:
        """Whether the last command put the device on (None: never commanded)."""
        sent = self.sent.get(device)
        return None if sent is None else sent.op != "standby"

    def forget(self, device: str) -> None:
        """The device's command did not go out (or the device is gone): plan it afresh."""
        self.sent.pop(device, None)

    def plan(self, now_s: float, wants: Mapping[str, Want], site_ramp_w_s: float) -> list[Order]:
        """The device commands due now for what the controller wants of each device."""
        self.site = None
        changes: dict[str, float] = {}  # device -> size of its move, W
        refreshes: list[str] = []
        for device, want in wants.items():
            last = self.sent.get(device)
            op = "setpoint" if want.share_w is not None else "standby"
            target_w = float(want.share_w or 0)
            moved = (last is None or last.op != op or
                     (op == "setpoint" and last.power_w is not None
                      and (abs(target_w - last.power_w) > self.deadband_w(want.max_w)
                           or (target_w >= math.floor(want.max_w)
                               and last.power_w < target_w - 0.5))))
            if moved or self._straggles(last, want, now_s):
                start_w = want.power_w if want.power_w is not None else (
                    last.power_w if last is not None and last.power_w is not None else 0.0)
                changes[device] = abs(target_w - start_w)
            elif last is not None and last.exp_s - now_s <= self.refresh_s:
                refreshes.append(device)
        # every move under way counts until a new command to its device replaces it (a move
        # held back goes on at its ramp)
        spare_w_s = site_ramp_w_s - self.in_flight_w_s(now_s)
        total_w = sum(changes.values())
        orders = [self._refresh(device, now_s) for device in refreshes]
        self.deferred = 0
        for device, move_w in changes.items():
            want = wants[device]
            last = self.sent.get(device)
            freed_w_s = (last.ramp_w_s or 0) if last is not None and self._moving(last, now_s) \
                else 0
            share_w_s = site_ramp_w_s * move_w / total_w if total_w > 0 else want.ramp_max_w_s
            ramp = int(max(1.0, min(want.ramp_max_w_s, math.floor(share_w_s))))
            if ramp > spare_w_s + freed_w_s and move_w >= 1.0:  # no move at all needs no room
                self.deferred += 1
                continue
            spare_w_s += freed_w_s - (ramp if move_w >= 1.0 else 0)
            orders.append(self._send(device, want, ramp, move_w, now_s))
        return orders

    def _straggles(self, last: _Sent | None, want: Want, now_s: float) -> bool:
        """Still far from its share `catch_up_s` after its move should have ended (it was given
        a small share of the site ramp, or started from elsewhere than the model thought): it
        is sent its share again, with the ramp there is now."""
        return (last is not None and last.op == "setpoint" and last.power_w is not None
                and want.power_w is not None and now_s >= last.move_end_s + self.catch_up_s
                and abs(want.power_w - last.power_w) > self.deadband_w(want.max_w))

    def _send(self, device: str, want: Want, ramp: int, move_w: float, now_s: float) -> Order:
        op = "setpoint" if want.share_w is not None else "standby"
        last = self.sent.get(device)
        if last is not None and (last.op == "standby") != (op == "standby"):
            self.switched_s[device] = now_s
        validity_s = self._validity()
        end_s = now_s + move_w / ramp
        same = last is not None and last.op == op and last.power_w == want.share_w
        self.sent[device] = _Sent(op, want.share_w, ramp, now_s + validity_s, end_s,
                                  last.due_s if same and last is not None else end_s)
        return Order(device, op, want.share_w, ramp, validity_s)

    def _refresh(self, device: str, now_s: float) -> Order:
        last = self.sent[device]
        validity_s = self._validity()
        last.exp_s = now_s + validity_s
        power_w = None if last.power_w is None else int(last.power_w)
        return Order(device, last.op, power_w, last.ramp_w_s, validity_s)

    def plan_site(self, now_s: float, op: str, ramp_w_s: int) -> Order | None:
        """The site-wide command for `op` (curtail, standby) if one is due now."""
        if op not in ("curtail", "standby"):
            raise ValueError(f"{op!r} is no site-wide command")
        last = self.site
        due = last is None or last.op != op or last.exp_s - now_s <= self.refresh_s
        if not due:
            return None
        if last is None or last.op != op:
            self.sent.clear()  # every device follows the site-wide command now
        validity_s = self._validity()
        self.site = _Sent(op, None, ramp_w_s, now_s + validity_s, now_s, now_s)
        return Order(None, op, None, ramp_w_s, validity_s)
