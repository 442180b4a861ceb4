"""``[learner]``: how labels are learned, by which model, and how a retrain rebuilds it.

Its own module (``settings.py`` re-exports it) so that the model's names are checked
here without importing the model (river) to load a config.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

#: the models ``middleware.learning.model.CANDIDATES`` builds (a test keeps them equal)
ModelName = Literal[
    "logreg-adagrad",
    "logreg-adagrad-reply",
    "logreg-sgd",
    "naive-bayes",
    "hoeffding-tree",
    "adaptive-forest",
]
MODEL_NAMES: tuple[str, ...] = get_args(ModelName)
LearnerMode = Literal["online", "batch"]


class LearnerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user_weight: float = Field(1.0, gt=0)
    reviewer_weight: float = Field(3.0, gt=0)
    snapshot_every_labels: int = Field(200, gt=0)
    snapshot_interval_s: float = Field(60.0, gt=0)
    rolling_window: int = Field(500, gt=1)
    #: on PostgreSQL, while labels arrive, the fleet's learner publishes a snapshot at
    #: most this often; serving processes look for a new one every second
    publish_interval_s: float = Field(1.0, gt=0, le=60)
    #: the model a new brain (and a retrain's candidate) is built with; a running
    #: gateway keeps the model of its newest snapshot until a retrain is promoted
    model: ModelName = "logreg-adagrad-reply"
    #: online: every label is learned as it is committed; batch: labels are stored as
    #: usual and learned every ``batch_every_s``, for teams that review before a model changes
    mode: LearnerMode = "online"
    batch_every_s: float = Field(3600.0, gt=0)
    #: ``hitl retrain``: passes over the training labels (the last in time order), whether
    #: the earlier passes are shuffled, with this seed (also the bootstrap's)
    retrain_passes: int = Field(1, ge=1, le=20)
    retrain_shuffle: bool = False
    retrain_seed: int = 0
    #: the bootstrap resamples behind the interval of the AUC difference
    retrain_bootstrap: int = Field(500, ge=50, le=20000)
