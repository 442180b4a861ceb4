"""The app of one serving process of a fleet (``hitl serve --workers N``).

uvicorn starts each worker in a fresh interpreter and builds its app by calling
``worker_app()``; what the parent was told (config file, command-line overrides) comes
over in ``$HITL_FLEET_SPEC``, so every worker builds the same settings the parent
checked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from middleware.settings import Settings, load_settings

SPEC_ENV = "HITL_FLEET_SPEC"


@dataclass(frozen=True)
class FleetSpec:
    """How a fleet's child process loads its settings."""

    config: str | None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> FleetSpec:
        raw = environ.get(SPEC_ENV)
        if not raw:
            raise RuntimeError(f"${SPEC_ENV} is not set: start workers with `hitl serve --workers`")
        data = json.loads(raw)
        return cls(config=data["config"], overrides=data["overrides"])

    def settings(self, environ: Mapping[str, str]) -> Settings:
        path = None if self.config is None else Path(self.config)
        return load_settings(path, environ, **self.overrides)


def worker_app() -> Starlette:
    from middleware.app.asgi import create_app
    from middleware.logs import configure

    environ = os.environ
    settings = FleetSpec.from_environ(environ).settings(environ)
    configure(settings.server.log_format)
    return create_app(settings, environ=environ, role="serve")
