"""The federated library on top of the ops, by role: parameter layout (layout), the update
codec (codec: encode on clients, validate and apply on the server), wire messages (message),
aggregation and momentum (aggregate), the server (server), crash-safe checkpoints
(checkpoint), sharded models (sharded), Flower's server and client halves (flower). The
simulation harness (a training loop with its FedAvg and zeroth-order baselines, tasks, data
splits, a local Flower deployment) is apart in ferret_kernels.fl.harness; apps live in
python/. What a client controls and what the server guarantees: docs/threat_model.md."""

from .checkpoint import CheckpointError
from .codec import Compressor, FerretConfig, UpdateCodec
from .layout import ParamLayout
from .message import DecodeError, UpdateMessage, decode, encode
from .server import FerretServer, ServerConfig

__all__ = [
    "ParamLayout",
    "UpdateCodec",
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
