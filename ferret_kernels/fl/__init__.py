"""The federated layer on top of the ops: parameter layout, compressor, update messages,
server aggregation and a thin training loop with its baselines (FedAvg, zeroth-order)."""

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
]
