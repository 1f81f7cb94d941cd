"""Packed layouts: the projected tensors end to end in one virtual vector, blocks across tensor
edges. Checked against the ops on the concatenated vector (the independent reference), for
compress (coefficients) and apply (bit for bit), with per-tensor and adaptive K."""

import pytest
import torch

import ferret_kernels as fk
from ferret_kernels.fl import FerretConfig, UpdateCodec
from ferret_kernels.fl.aggregate import block_scale
from ferret_kernels.fl.layout import ParamLayout

BS = 300


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(17, 23), torch.nn.ReLU(), torch.nn.Linear(23, 9), torch.nn.Linear(9, 250)
    )


def _flat(params, layout):
    return torch.cat([params[s.name].detach().reshape(-1).float() for s in layout.projected])


def test_packed_layout_blocks_cross_tensor_edges():
    m = _model()
    per = ParamLayout.from_module(m, BS)
    packed = ParamLayout.from_module(m, BS, pack=True)
    n = sum(p.numel() for p in m.parameters())
    assert packed.total_blocks == fk.num_blocks(n, BS) < per.total_blocks
    assert packed.fingerprint != per.fingerprint
    assert sum(s.numel for s in packed.projected) == n
    ends = [s.block_offset * BS + s.lead for s in packed.projected]
    assert ends == [sum(s.numel for s in packed.projected[:i]) for i in range(len(ends))]


@pytest.mark.parametrize("adaptive", [False, True])
def test_packed_compress_and_apply_match_the_ops_on_the_concatenated_vector(adaptive):
    m = _model()
    new = _model()
    with torch.no_grad():
        for p in new.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    comp = UpdateCodec.for_module(m, FerretConfig(num_bases=8, block_size=BS, adaptive=adaptive, pack=True))
    assert comp.layout.pack and comp.layout.fingerprint == ParamLayout.from_module(m, BS, pack=True).fingerprint
    msg = comp.compress(m, new, seed=77)
    old_p, new_p = dict(m.named_parameters()), dict(new.named_parameters())
    d = _flat(old_p, comp.layout) - _flat(new_p, comp.layout)
    # adaptive K from the whole vector's block norms
    norms = torch.nn.functional.pad(d.double(), (0, comp.layout.total_blocks * BS - d.numel())).view(-1, BS).norm(dim=1)
    torch.testing.assert_close(comp.block_norms(old_p, new_p), norms, rtol=1e-6, atol=0)
    assert torch.equal(msg.active, comp.active_counts(comp.block_norms(old_p, new_p)))
    ref = (
        fk.project(
            _flat(old_p, comp.layout),
            77,
            8 if not adaptive else comp.config.max_bases,
            BS,
            y=_flat(new_p, comp.layout),
            active=msg.active,
        )
        * block_scale(msg.active)[:, None]
    )
    torch.testing.assert_close(msg.dense(), ref, rtol=1e-5, atol=1e-6)
    # apply: each tensor gets its slice of the reconstruction of the whole vector, bit for bit
    dense = msg.dense() * block_scale(msg.active)[:, None]
    target = {n: p.detach().clone() for n, p in old_p.items()}
    comp.apply_coefficients(target, dense, 77, msg.dist, msg.active, 0.5)
    want = _flat(old_p, comp.layout).clone()
    fk.reconstruct_(want, dense, 77, BS, alpha=-0.5, active=msg.active)
    assert torch.equal(_flat(target, comp.layout), want)


def test_codec_refuses_a_layout_that_disagrees_with_its_config():
    m = _model()
    with pytest.raises(ValueError, match=r"layout pack=True != config pack=False"):
        UpdateCodec(ParamLayout.from_module(m, BS, pack=True), FerretConfig(num_bases=8, block_size=BS))


def test_flower_nodes_build_the_packed_layout_the_strategy_announces():
    pytest.importorskip("flwr")
    from flwr.app import ConfigRecord

    from ferret_kernels.fl.flower.protocol import ferret_config

    keys = {"num-bases": 8, "block-size": BS, "dist": "rademacher", "adaptive": False, "full-threshold": 0}
    cfg = ferret_config(ConfigRecord(dict(keys, **{"wire-dtype": "float32", "pack": True})))
    assert cfg.pack and UpdateCodec.for_module(_model(), cfg).layout.pack
    assert not ferret_config(ConfigRecord(dict(keys, **{"wire-dtype": "float32"}))).pack  # an older server


def test_config_fields_round_trip_for_every_engine():
    """The fields a server announces rebuild the same config on a client, packed or not, in
    Flower's ConfigRecord and in FLARE's task meta (the FLARE copy once dropped `pack`)."""
    for pack in (False, True):
        cfg = FerretConfig(num_bases=8, block_size=BS, adaptive=True, wire_dtype="bfloat16", pack=pack)
        assert FerretConfig.from_fields(cfg.to_fields()) == cfg
    nv = pytest.importorskip("ferret_kernels.fl.nvflare.protocol", reason="nvflare not installed")
    cfg = FerretConfig(num_bases=8, block_size=BS, pack=True)
    assert nv.ferret_config(nv.config_dict(cfg)) == cfg
