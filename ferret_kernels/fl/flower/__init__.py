"""Ferret on Flower (Message API, flwr >= 1.42), by role: the server half (strategy.py:
FerretStrategy), the client half (client.py: ferret_train, ferret_evaluate) and the wire
protocol both speak (protocol.py). docs/flower.md shows an app; python/ferret_flower is one."""

from .client import ferret_evaluate, ferret_train
from .protocol import CONFIG, MODEL, SYNC, UPDATE, apply_updates, model_digest
from .strategy import FerretStrategy, RoundLog

__all__ = [
    "FerretStrategy",
    "RoundLog",
    "ferret_train",
    "ferret_evaluate",
    "apply_updates",
    "model_digest",
    "CONFIG",
    "SYNC",
    "MODEL",
    "UPDATE",
]
