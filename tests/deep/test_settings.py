"""``[scoring]``: the deeper look's settings, validated like every section."""

from __future__ import annotations

import pytest

from middleware.errors import ConfigError
from middleware.settings import settings_from_mapping


def test_the_deeper_look_is_off_by_default_and_minilm_when_asked() -> None:
    assert settings_from_mapping({}).scoring.deep == "off"
    scoring = settings_from_mapping({"scoring": {"deep": "minilm", "deep_wait_ms": 500}}).scoring
    assert (scoring.deep, scoring.deep_wait_ms) == ("minilm", 500)


@pytest.mark.parametrize(
    "bad", [{"deep": "bert"}, {"deep_wait_ms": -1}, {"deep_queue": 0}, {"deeper": "on"}]
)
def test_a_bad_scoring_value_stops_start_up_naming_the_key(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="scoring"):
        settings_from_mapping({"scoring": bad})
