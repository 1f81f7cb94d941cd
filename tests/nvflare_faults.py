"""Fault injection for the FLARE job test, kept out of the shipped job: CorruptUpdate, a FLARE
Filter the test adds to the sites' task results (after the site's Client API script made its
reply, before FLARE sends it). On site `site` in round `round`, the last 8 bytes of the encoded
Ferret update become 0xff (NaN coefficients), as tests/flower_faults.py does on Flower: the
server must reject that update, name the site and finish the round with the others."""

from __future__ import annotations

from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

UPDATE = "ferret.update"  # ferret_kernels.fl.nvflare.protocol.UPDATE, spelled out: the fault is the test's own


class CorruptUpdate(Filter):
    def __init__(self, site: str = "site-2", round: int = 2):
        super().__init__()
        self.site, self.round = site, round

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        rnd = shareable.get_header(AppConstants.CURRENT_ROUND, None)
        if fl_ctx.get_identity_name() != self.site or rnd != self.round:
            return shareable
        dxo = from_shareable(shareable)
        rec = dict(dxo.meta[UPDATE])
        data = bytearray(rec["update"])
        data[-8:] = b"\xff" * 8
        rec["update"] = bytes(data)
        dxo.meta[UPDATE] = rec
        self.log_warning(fl_ctx, f"test fault: corrupted the update of {self.site} in round {rnd}")
        return dxo.update_shareable(shareable)
