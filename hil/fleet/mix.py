"""The fleet's mix of miner models: which ratings and efficiencies, in what shares, adding up to
the site rating.

A mix file (TOML, checked by `agent.tomlschema`, errors name the key):

```toml
site_rating_w = 1500000          # the ratings add up to this (absent: 1,154 W a device)
[[model]]
name = "bm1370-1300"             # device ids are NAME-NNNN
family = "BM1370"                # the chips' family (J/TH comes with it)
rating_w = 1300                  # nameplate power; scaled with every model to the site rating
share = 0.40                     # share of the devices (weights, normalised)
efficiency_spread = 0.04         # per-device spread of true power against the model (1 sigma)
ramp_max_w_s = 0                 # the device's ramp limit (0: the agent's default, 2 x rating)
```

`specs(mix, devices, seed)` turns it into one `DeviceSpec` per device: counts by largest
remainder of the shares, every rating scaled by one factor so the sum is the site rating, the
chip count the smallest that makes the rating reachable for the family (`agent.config`'s
derivation), and a per-device power gain drawn from the seed (what makes devices of one model
differ in J/TH, and what the governor's model correction learns).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from agent.config import config_from_mapping
from agent.errors import ConfigError
from agent.grid.contract import NAME_RE, RESERVED_DEVICES
from agent.tomlschema import build, key, read, read_toml, reject_unknown
from firmware_bridge.chips import FAMILIES

SITE_DEVICE_W = 1_500_000.0 / 1300  # the default: 1,300 devices make 1.5 MW
MAX_CHIPS = 256  # agent.config's [chain] chips range
CORRECTION_STEP = 0.4  # the governor's model correction per control tick (ki * period)
SCALE_LIMITS = (0.5, 2.0)  # how far the site rating may scale the models' ratings


@dataclass(frozen=True)
class ModelMix:
    """[[model]]: one miner model of the mix."""

    name: str = key()
    family: str = key(choices=FAMILIES)
    rating_w: float = key(lo=10.0, hi=4000.0)
    share: float = key(lo=0.0, hi=1.0, lo_open=True)
    efficiency_spread: float = key(0.04, lo=0.0, hi=0.15)
    ramp_max_w_s: float = key(0.0, lo=0.0, hi=100_000.0)


@dataclass(frozen=True)
class Mix:
    """A whole mix file."""

    site_rating_w: float | None = key(None, lo=1.0, hi=1e9)  # None: SITE_DEVICE_W a device
    models: tuple[ModelMix, ...] = key(())


@dataclass(frozen=True)
class DeviceSpec:
    """One virtual device: its id, model, the agent's configuration table and its true power
    against the model (`power_gain`)."""

    device: str
    model: str
    family: str
    chips: int
    rating_w: float
    ramp_max_w_s: float | None
    power_gain: float

    def config_key(self, control_period_s: float) -> str:
        """`config_table` as canonical JSON (devices of one model share one configuration)."""
        return json.dumps(self.config_table(control_period_s), sort_keys=True)

    def config_table(self, control_period_s: float) -> dict[str, Any]:
        """The agent.toml tables of this device (ports unused: the plant stands in for them)."""
        envelope: dict[str, Any] = {"max_power_w": self.rating_w}
        if self.ramp_max_w_s:
            envelope["ramp_max_w_s"] = self.ramp_max_w_s
        return {"chain": {"port": "fleet://", "family": self.family, "chips": self.chips},
                "board": {"port": "fleet://"}, "envelope": envelope,
                "governor": {"control_period_s": control_period_s,
                             # the model correction's integral step stays below half the error
                             "correction_ki_per_s": min(3.0, CORRECTION_STEP / control_period_s)}}


DEFAULT_MIX = Mix(None, (
    ModelMix("bm1370-1300", "BM1370", 1300.0, 0.40),
    ModelMix("bm1368-1150", "BM1368", 1150.0, 0.35),
    ModelMix("bm1366-900", "BM1366", 900.0, 0.25),
))


def load_mix(path: str | Path) -> Mix:
    """Read and check a mix file (ConfigError naming the key otherwise)."""
    return parse_mix(read_toml(path), str(path))


def parse_mix(raw: Any, source: str = "mix") -> Mix:
    """Check a mix's TOML table (ConfigError naming the key otherwise)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a table")
    reject_unknown("", raw, ("site_rating_w", "model"))
    site = {k: v for k, v in raw.items() if k == "site_rating_w"}
    site_rating_w = read(Mix, "", site, keys=("site_rating_w",))["site_rating_w"]
    models_raw = raw.get("model", [])
    if not isinstance(models_raw, list) or not models_raw:
        raise ConfigError("model: expected a list of tables ([[model]] with keys "
                          + ", ".join(f.name for f in dataclasses.fields(ModelMix)) + ")")
    models = tuple(build(ModelMix, f"model[{i}]", m) for i, m in enumerate(models_raw))
    names = [m.name for m in models]
    for i, name in enumerate(names):
        if not NAME_RE.match(f"{name}-0000") or name in RESERVED_DEVICES:
            raise ConfigError(f"model[{i}].name: {name!r} must be letters, digits, _ or - "
                              f"(at most 59) and not {' or '.join(RESERVED_DEVICES)}")
    if len(set(names)) != len(names):
        raise ConfigError("model: two models share a name")
    return Mix(site_rating_w, models)


def counts(shares: list[float], devices: int) -> list[int]:
    """`devices` split by the shares (normalised), by largest remainder."""
    total = sum(shares)
    exact = [devices * s / total for s in shares]
    out = [math.floor(x) for x in exact]
    order = sorted(range(len(shares)), key=lambda i: exact[i] - out[i], reverse=True)
    for i in order[: devices - sum(out)]:
        out[i] += 1
    return out


@cache
def chips_for(family: str, rating_w: float) -> int:
    """The fewest chips of `family` whose derived rating reaches `rating_w`."""
    lo, hi = 1, MAX_CHIPS
    if _rated_w(family, hi) < rating_w:
        raise ConfigError(f"rating_w {rating_w:.0f} needs more than {MAX_CHIPS} {family} chips")
    while lo < hi:
        mid = (lo + hi) // 2
        if _rated_w(family, mid) >= rating_w:
            hi = mid
        else:
            lo = mid + 1
    return lo


@cache
def _rated_w(family: str, chips: int) -> float:
    cfg = config_from_mapping({"chain": {"port": "x", "family": family, "chips": chips},
                               "board": {"port": "x"}})
    assert cfg.envelope.max_power_w is not None
    return cfg.envelope.max_power_w


def specs(mix: Mix, devices: int, seed: int = 0) -> list[DeviceSpec]:
    """One spec per device (see the module docstring); ConfigError when the mix cannot make the
    site rating with `devices` devices."""
    if devices < 1:
        raise ConfigError(f"devices: {devices} must be at least 1")
    n = counts([m.share for m in mix.models], devices)
    nominal = sum(c * m.rating_w for c, m in zip(n, mix.models, strict=True))
    site_w = mix.site_rating_w if mix.site_rating_w is not None else devices * SITE_DEVICE_W
    scale = site_w / nominal
    if not SCALE_LIMITS[0] <= scale <= SCALE_LIMITS[1]:
        raise ConfigError(
            f"site_rating_w {site_w:.0f}: {devices} devices of this mix are rated "
            f"{nominal:.0f} W; the ratings would scale by {scale:.2f} (allowed "
            f"{SCALE_LIMITS[0]}-{SCALE_LIMITS[1]}): change the devices, ratings or site rating")
    rng = random.Random(seed)
    out: list[DeviceSpec] = []
    for count, model in zip(n, mix.models, strict=True):
        rating = model.rating_w * scale
        if rating > 4000.0:
            raise ConfigError(f"model {model.name}: scaled rating {rating:.0f} W is over the "
                              "agent's 4000 W per device")
        try:
            chips = chips_for(model.family, math.floor(rating))
        except ConfigError as exc:
            raise ConfigError(f"model {model.name}: {exc}") from None
        for k in range(count):
            gain = max(0.8, min(1.2, rng.gauss(1.0, model.efficiency_spread)))
            out.append(DeviceSpec(f"{model.name}-{k:04d}", model.name, model.family, chips,
                                  rating, model.ramp_max_w_s or None, gain))
    return out
