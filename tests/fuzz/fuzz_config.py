"""Fuzz the agent's config loader (agent.config): `load_config` on a file holding the fuzz bytes,
and `config_from_mapping` on the TOML they parse to, or on a seed document edited as the bytes
say (`harness.TomlEdits`). Only `agent.errors.ConfigError` may come out. A config that loads is
taken further the way the agent does once it has probed the chain (`with_chain`, again only
ConfigError).

Input: byte 0: the chain the probe finds (bits 0-1 family, bits 2-7 chips - 1); byte 1: bit 0
clear: the rest is the file; set: the rest are edits of seed document (byte 1 >> 1).
"""

from __future__ import annotations

import sys
import tomllib

import harness

with harness.instrumented(__name__ == "__main__"):
    harness.preload("agent.control.power_model", "agent.pool.endpoint")  # lazy in agent.config
    from agent.config import AgentConfig, config_from_mapping, load_config, with_chain
    from agent.errors import ConfigError
    from firmware_bridge.chips import FAMILIES

KNOWN_BUGS: dict[str, harness.KnownBug] = {}  # every bug found so far is fixed


def _derived(cfg: AgentConfig, family: str, chips: int) -> None:
    assert isinstance(cfg, AgentConfig), type(cfg)
    try:
        with_chain(cfg, family, chips)
    except ConfigError:
        pass


def test_one_input(data: bytes) -> None:
    r = harness.Reader(data)
    probe = r.u8()
    family, chips = FAMILIES[probe & 3], (probe >> 2) + 1
    mode = r.u8()
    if mode & 1:
        try:
            # relative paths resolve against the file's folder, as load_config does
            cfg = config_from_mapping(_edits().document(mode >> 1, r), harness.ROOT / "agent",
                                      "edited.toml")
        except ConfigError:
            return
        _derived(cfg, family, chips)
        return
    text = r.rest()
    path = harness.scratch_file("config", ".toml")
    path.write_bytes(text)
    try:
        cfg = load_config(path)
    except ConfigError:
        pass
    else:
        _derived(cfg, family, chips)
    finally:
        path.unlink(missing_ok=True)
    try:
        raw = tomllib.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return  # not TOML: load_config above had it
    try:
        cfg = config_from_mapping(raw)
    except ConfigError:
        return
    _derived(cfg, family, chips)


# ---- seeds and dictionary -----------------------------------------------------------------------


def _strip(text: str) -> str:
    """TOML without its comment lines and end-of-line comments (outside strings: good enough
    for the sample, whose strings hold no #)."""
    lines = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].rstrip()
        if line:
            lines.append(line)
    return "\n".join(lines) + "\n"


def _sections(text: str) -> list[str]:
    parts: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("[") or not parts:
            parts.append("")
        parts[-1] += line
    return parts


def _files() -> list[tuple[str, str]]:
    """Real configs: the sample, shortened, and one section of it at a time."""
    sample = (harness.ROOT / "agent/agent.sample.toml").read_text("utf-8")
    short = _strip(sample)
    ports = '[chain]\nport = "/dev/ttyUSB0"\n[board]\nport = "/dev/ttyACM0"\n'
    out = [("sample", sample), ("sample-short", short), ("minimal", ports),
           ("dev-grid", ports + '[grid]\nbroker_url = "mqtt://localhost:1883"\nsite = "s"\n'
                               'device = "d"\ninsecure_dev = true\n'),
           ("pools", ports + '[[pool]]\nurl = "stratum+tcp://pool.example.net:3333"\n'
                            'user = "bc1qexample.miner1"\n[[pool]]\n'
                            'url = "stratum+ssl://[2001:db8::1]:443"\nuser = "acct.w2"\n'
                            'password_file = "secrets/pool2"\n[stratum]\nretry_min_s = 1.0\n'
                            'retry_max_s = 30.0\n')]
    chain, board = ports.split("[board]")
    for i, part in enumerate(_sections(short)):
        if part.startswith("[chain]"):
            part += "[board]" + board
        elif part.startswith("[board]"):
            part = chain + part
        else:
            part = ports + part
        out.append((f"section{i}", part))
    return out


def _edits() -> harness.TomlEdits:
    return harness.toml_edits(tuple(text for _, text in _files()), AgentConfig)


def seeds() -> list[tuple[str, bytes]]:
    out = []
    for i, (name, text) in enumerate(_files()):
        out.append((name, bytes((i * 4 + 3, 0)) + text.encode()))
        out.append((name + "-edited", bytes((i * 4 + 3, i << 1 | 1)) + bytes(range(i, i + 24))))
    return out


def dictionary() -> list[str]:
    words = ["[", "]", "[[", "]]", " = ", "\n", '"', "'", "{", "}", ", ", "true", "false",
             "inf", "nan", "-", "1e400", "0x", "~", "1979-05-27T07:32:00Z",
             "mqtts://", "mqtt://", "ws://", ":8883", "/dev/ttyUSB0", "keys/op.pem"]
    words += harness.class_words(AgentConfig)
    return words


if __name__ == "__main__":
    harness.main("config", test_one_input, seeds, known=KNOWN_BUGS, dictionary=dictionary,
                 max_len=8192)
    sys.exit(0)
