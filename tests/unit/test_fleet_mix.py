"""The fleet's mix: devices split by share, ratings adding up to the site rating, ids a device
may use, and mix files checked with the key named."""

from __future__ import annotations

import pytest

from agent.config import config_from_mapping
from agent.errors import ConfigError
from hil.fleet.mix import DEFAULT_MIX, counts, load_mix, parse_mix, specs


def test_default_fleet_is_a_site_of_three_models_summing_to_its_rating():
    fleet = specs(DEFAULT_MIX, 1300, seed=1)
    assert len(fleet) == 1300
    assert sum(s.rating_w for s in fleet) == pytest.approx(1_500_000.0)
    assert {s.model for s in fleet} == {"bm1370-1300", "bm1368-1150", "bm1366-900"}
    ids = [s.device for s in fleet]
    assert len(set(ids)) == 1300 and not set(ids) & {"all", "site"}
    # units of one model differ in their true power (J/TH), reproducibly from the seed
    gains = {s.power_gain for s in fleet if s.model == "bm1370-1300"}
    assert len(gains) > 100 and min(gains) < 0.97 < 1.03 < max(gains)
    assert [s.power_gain for s in specs(DEFAULT_MIX, 1300, seed=1)] == \
        [s.power_gain for s in fleet]


def test_each_device_config_reaches_its_rating():
    for spec in {s.model: s for s in specs(DEFAULT_MIX, 100, seed=2)}.values():
        cfg = config_from_mapping(spec.config_table(1.0))
        assert cfg.envelope.max_power_w == pytest.approx(spec.rating_w)
        assert cfg.chain.chips == spec.chips and cfg.chain.family == spec.family


def test_counts_follow_the_shares_and_add_up():
    assert counts([0.4, 0.35, 0.25], 1300) == [520, 455, 325]
    assert sum(counts([1, 1, 1], 10)) == 10


def test_mix_file_with_a_site_rating(tmp_path):
    path = tmp_path / "mix.toml"
    path.write_text('site_rating_w = 4500000\n'
                    '[[model]]\nname = "hydro"\nfamily = "BM1370"\nrating_w = 3400\nshare = 1\n'
                    'ramp_max_w_s = 500\n')
    fleet = specs(load_mix(path), 1300)
    assert sum(s.rating_w for s in fleet) == pytest.approx(4_500_000.0)
    assert {s.ramp_max_w_s for s in fleet} == {500.0}


@pytest.mark.parametrize(("raw", "error"), [
    ({"model": [{"name": "a", "family": "BM1370", "rating_w": 1000, "share": 1, "colour": 1}]},
     "model[0].colour: unknown key"),
    ({"model": [{"name": "a", "family": "BM9999", "rating_w": 1000, "share": 1}]},
     "model[0].family: 'BM9999' is not one of"),
    ({"model": [{"name": "a", "family": "BM1370", "rating_w": 1000, "share": 0}]},
     "model[0].share: 0 is out of range (0, 1]"),
    ({"model": [{"name": "site", "family": "BM1370", "rating_w": 1000, "share": 1}]},
     "model[0].name: 'site'"),
    ({"model": [{"name": "a", "family": "BM1370", "rating_w": 1000, "share": 1},
                {"name": "a", "family": "BM1366", "rating_w": 900, "share": 1}]},
     "two models share a name"),
    ({"site_rating_w": 1e6}, "model: expected a list of tables"),
    ({"sites": 1}, "sites: unknown key"),
])
def test_bad_mix_is_refused_with_the_key_named(raw, error):
    with pytest.raises(ConfigError) as info:
        parse_mix(raw)
    assert error in str(info.value)


def test_a_site_rating_the_mix_cannot_make_is_refused():
    mix = parse_mix({"site_rating_w": 100_000,
                     "model": [{"name": "a", "family": "BM1370", "rating_w": 1000, "share": 1}]})
    with pytest.raises(ConfigError, match=r"would scale by 0\.05"):
        specs(mix, 2000)


def test_a_rating_the_family_cannot_reach_names_the_model():
    mix = parse_mix({"site_rating_w": 39_000,
                     "model": [{"name": "old", "family": "BM1397", "rating_w": 3900,
                                "share": 1}]})
    with pytest.raises(ConfigError, match=r"model old: rating_w .* needs more than 256 BM1397"):
        specs(mix, 10, seed=0)
