"""The federated layer on top of the ops: parameter layout, compressor, update messages,
server aggregation, crash-safe checkpoints and a thin training loop with its baselines
(FedAvg, zeroth-order). What a client controls and what the server guarantees:
docs/threat_model.md."""

from .checkpoint import CheckpointError
from .compress import Compressor, FerretConfig
from .layout import ParamLayout
from .message import DecodeError, UpdateMessage, decode, encode
from .server import FerretServer, ServerConfig

__all__ = [
    "ParamLayout",
    "Compressor",
    "FerretConfig",
    "UpdateMessage",
    "encode",
    "decode",
    "DecodeError",
    "FerretServer",
    "ServerConfig",
    "CheckpointError",
]
