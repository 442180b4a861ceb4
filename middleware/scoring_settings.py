"""``[scoring]``: the deeper second look (``middleware.learning.deep``) beside the live model.

Its own module (``settings.py`` re-exports it), so a config is checked without importing
torch: ``deep = "minilm"`` needs the ``deep`` install extra, which start-up checks.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DeepKind = Literal["off", "minilm"]


class ScoringSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: "minilm": sentence embeddings of the question and the reply (all-MiniLM-L6-v2,
    #: from the ``deep`` extra) feed a second model, off the request path
    deep: DeepKind = "off"
    #: how long a held reply (which waits for a person anyway) waits for the deeper look
    deep_wait_ms: int = Field(2000, ge=0, le=60_000)
    #: replies waiting for the deeper look; past it the most certain are skipped
    deep_queue: int = Field(256, ge=1, le=100_000)
    #: recent labelled replies whose embeddings the nearest-neighbour rate reads
    deep_ring: int = Field(5000, ge=10, le=100_000)
