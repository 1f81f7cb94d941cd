"""WireMeter: a FLARE Filter that measures what FLARE transmits for a task's data or result:
the length of FOBS's encoding of the Shareable (the CellNet message payload FLARE sends for
it; arrays above FLARE's streaming threshold are then fetched by its downloader, the same
bytes), attributed to the peer site and round.

Put it on the server as a task result filter (direction "up": site -> server) and/or a
task data filter (direction "down": server -> site). It never changes the Shareable. Each
measurement is set on the FLContext as WIRE_BYTES_PROP (FerretController reads it for the
round's record) and, with `log_file`, appended as a JSON line {direction, site, round, task,
bytes} to <run dir>/<log_file>. A failure to measure is logged and the Shareable passes on.
"""

from __future__ import annotations

import json
import os

from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants
from nvflare.fuel.utils import fobs

WIRE_BYTES_PROP = "ferret.wire_bytes"


def shareable_wire_bytes(shareable: Shareable) -> int:
    """Bytes of FOBS's (inline) encoding of a Shareable: what CellNet carries for it."""
    return len(fobs.dumps(shareable))


class WireMeter(Filter):
    def __init__(self, direction: str = "up", log_file: str = "ferret/wire.jsonl"):
        super().__init__()
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' (task results) or 'down' (task data), got {direction!r}")
        self.direction, self.log_file = direction, log_file

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        try:
            n = shareable_wire_bytes(shareable)
            peer = fl_ctx.get_peer_context()
            site = peer.get_identity_name() if peer is not None else None
            rnd = shareable.get_header(AppConstants.CURRENT_ROUND, None)
            fl_ctx.set_prop(WIRE_BYTES_PROP, n, private=True, sticky=False)
            if self.log_file:
                ws = fl_ctx.get_engine().get_workspace()
                path = os.path.join(ws.get_run_dir(fl_ctx.get_job_id()), self.log_file)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                line = {
                    "direction": self.direction,
                    "site": site,
                    "round": rnd if isinstance(rnd, int) else None,
                    "task": fl_ctx.get_prop("__task_name__", None),
                    "bytes": n,
                }
                with open(path, "a") as f:
                    f.write(json.dumps(line) + "\n")
        except Exception as e:  # noqa: BLE001 - measuring must never drop a task or a result
            self.log_warning(fl_ctx, f"WireMeter could not measure a shareable: {type(e).__name__}: {e}")
        return shareable
