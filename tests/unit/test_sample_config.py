"""The sample configuration an operator copies says what the board does without a command: its
default target is written out, and below the maximum, so a lost link does not raise the load."""

from __future__ import annotations

import tomllib
from pathlib import Path

import agent
from agent.config import load_config

SAMPLE = Path(agent.__file__).parent / "agent.sample.toml"


def test_the_sample_states_a_default_target_below_the_maximum() -> None:
    raw = tomllib.loads(SAMPLE.read_text(encoding="utf-8"))
    assert "default_target_w" in raw["governor"]  # explicit, not derived from max_power_w
    cfg = load_config(SAMPLE)
    assert cfg.governor.default_target_w is not None and cfg.envelope.max_power_w is not None
    assert cfg.governor.default_target_w < cfg.envelope.max_power_w
    text = SAMPLE.read_text(encoding="utf-8")
    assert "default_now" in text and "RAISES the load" in text
