"""Device entry: build the bridge from a JSON config file and run it (what main.py calls).

    import firmware_bridge.device
    firmware_bridge.device.start("bridge.json")

Config (JSON object): the Bridge keys (family, heartbeat_timeout_ms, trip_temp_dc, ...; see
bridge.DEFAULTS) plus
  "link": {"kind": "machine", "id": 2, "baudrate": 115200, "tx": 43, "rx": 44}   # machine.UART
        | {"kind": "path", "path": "/dev/pts/3"}                                 # unix port
  "hal":  {"kind": "machine", "i2c": {"id": 0, "scl": 48, "sda": 47, "freq": 400000},
           "power_pin": 10, "reset_pin": 1, "fan_pwm_pin": null,
           "chain_uart": {"id": 1, "baudrate": 115200, "tx": 17, "rx": 18},
           "emc2101": 76, "ina260": 64, "tps546": 36, "domains": 1}
        | {"kind": "sim", "channels": 1}                                           # simulated
"""
# MicroPython-first: %-formatting (f-string support varies by port) and no `raise ... from`
# (MicroPython warns on exception chaining).
# ruff: noqa: UP031, B904


import json

from firmware_bridge import hal as halmod
from firmware_bridge.bridge import Bridge, make_config


def load_config(path):
    """The config dict from a JSON file; ValueError with the reason if it is not usable."""
    try:
        with open(path) as f:
            cfg = json.load(f)
    except OSError as exc:
        raise ValueError("cannot read %s: %s" % (path, exc))
    except ValueError as exc:
        raise ValueError("%s is not JSON: %s" % (path, exc))
    if not isinstance(cfg, dict):
        raise ValueError("%s must hold a JSON object" % path)
    make_config(cfg)  # validates the bridge keys
    return cfg


def _uart(machine, c):
    kw = {"baudrate": c.get("baudrate", 115200)}
    if "tx" in c:
        kw["tx"] = c["tx"]
    if "rx" in c:
        kw["rx"] = c["rx"]
    return machine.UART(c.get("id", 1), **kw)


def build_link(c):
    kind = c.get("kind", "machine")
    if kind == "path":
        return halmod.PathUart(c["path"])
    if kind == "machine":
        import machine

        return _uart(machine, c)
    raise ValueError("link kind must be 'machine' or 'path', got %r" % (kind,))


def build_hal(c):
    kind = c.get("kind", "machine")
    if kind == "sim":
        return halmod.SimHal(c.get("channels", 1))
    if kind != "machine":
        raise ValueError("hal kind must be 'machine' or 'sim', got %r" % (kind,))
    import time

    import machine

    ic = c.get("i2c", {})
    i2c = machine.I2C(ic.get("id", 0), scl=machine.Pin(ic.get("scl", 48)),
                      sda=machine.Pin(ic.get("sda", 47)), freq=ic.get("freq", 400000))
    power = machine.Pin(c["power_pin"], machine.Pin.OUT) if c.get("power_pin") is not None else None
    reset = machine.Pin(c["reset_pin"], machine.Pin.OUT) if c.get("reset_pin") is not None else None
    chain = _uart(machine, c["chain_uart"]) if c.get("chain_uart") else None
    fan = None
    if c.get("fan_pwm_pin") is not None:
        fan = machine.PWM(machine.Pin(c["fan_pwm_pin"]), freq=c.get("fan_pwm_freq", 25000))
    return halmod.MachineHal(i2c, power, reset, chain, fan, c.get("emc2101", 0x4C),
                             c.get("ina260", 0x40), c.get("tps546", 0x24), c.get("domains", 1),
                             time.sleep_ms)


def build(cfg):
    """A Bridge from a config dict (see the module docstring)."""
    import time

    return Bridge(build_link(cfg.get("link", {})), build_hal(cfg.get("hal", {})), cfg,
                  time.ticks_ms)


def start(path="bridge.json"):
    """Load the config, build the bridge and run it forever."""
    bridge = build(load_config(path))
    print("gridminer bridge: %s, heartbeat timeout %d ms" % (
        bridge.family, bridge.cfg["heartbeat_timeout_ms"]))
    bridge.run()
