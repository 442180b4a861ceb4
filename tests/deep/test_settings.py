"""``[scoring]``: the deeper look's settings, validated like every section."""

from __future__ import annotations

from pathlib import Path

import pytest

from middleware.app import deep as app_deep
from middleware.app.parts import build_parts
from middleware.errors import ConfigError
from middleware.scoring_settings import ScoringSettings
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


def test_minilm_without_the_extra_stops_start_up_saying_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stands in for a fresh install without the extra (the package cannot be found).
    monkeypatch.setattr(app_deep, "minilm_installed", lambda: False)
    settings = settings_from_mapping(
        {"scoring": {"deep": "minilm"}, "store": {"url": f"sqlite:///{tmp_path / 'h.db'}"}}
    )
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[deep\]"'):
        build_parts(settings, environ={})
    off = build_parts(settings.model_copy(update={"scoring": ScoringSettings()}), environ={})
    assert off.deep is None and off.replies.deep is None  # nothing extra runs when off
