"""Ferret on NVIDIA FLARE (nvflare >= 2.9), by role: the server half (controller.py:
FerretController, a ModelController), the site half for the Client API (client.py:
FerretSite), a Filter that measures what FLARE transmits (meter.py: WireMeter) and the wire
protocol in FLARE's FLModel (protocol.py). Validation, aggregation and application are the
federated library's (FerretServer, fl.sync), shared with the Flower integration.
docs/nvflare.md shows a job; python/ferret_nvflare is one. Install: ferret_kernels[nvflare]."""

from .client import FerretSite
from .controller import FerretController
from .meter import WireMeter, shareable_wire_bytes
from .protocol import CONFIG, SYNC, UPDATE

__all__ = ["FerretController", "FerretSite", "WireMeter", "shareable_wire_bytes", "CONFIG", "SYNC", "UPDATE"]
