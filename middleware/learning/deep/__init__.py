"""The deeper second look: sentence embeddings and a second model, off the request path.

``worker``: the embedding process (idle priority, one compute thread, restarted when it
dies); ``model``: the second model and its nearest-neighbour ring (pure, river);
``look``: the queue between the request path and the worker, least certain first.
"""

from middleware.learning.deep.look import DeepLook, DeepResult
from middleware.learning.deep.model import DeepModel, NeighbourRing, deep_features
from middleware.learning.deep.worker import Embedder, EmbedderUnavailable

__all__ = [
    "DeepLook",
    "DeepModel",
    "DeepResult",
    "Embedder",
    "EmbedderUnavailable",
    "NeighbourRing",
    "deep_features",
]
