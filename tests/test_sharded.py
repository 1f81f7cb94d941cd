"""Sharded clients and servers with real torch.distributed processes (gloo, CPU).

A real transformers model (BERT architecture, small config) under FSDP2's fully_shard on 2 and
4 ranks (uneven last shards) trains one real step; its update projected shard by shard
(ferret_kernels.fl.sharded) is compared with the unsharded projection of the same weights
(coefficients within 1e-5 relative), an update applied shard by shard leaves every shard
bit-identical to the matching slice of the unsharded apply, and in a federated round where one
client is a 2-rank FSDP2 job and two are single processes the global model matches the
all-unsharded round within float rounding."""

import os
import socket
import sys

import pytest
import torch

pytest.importorskip("transformers")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from ferret_kernels.fl import FerretConfig, UpdateCodec  # noqa: E402
from ferret_kernels.fl.message import decode, encode  # noqa: E402

if not dist.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

BS, K, SEED = 1000, 16, 2024


def _model():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=101,
        max_position_embeddings=16,
    )
    return BertModel(cfg)


def _train_step(model, rank):
    """One real AdamW step on this rank's own batch (FSDP2 averages the gradients)."""
    g = torch.Generator().manual_seed(100 + rank)
    ids = torch.randint(0, 101, (4, 9), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    out = model(ids).last_hidden_state
    out.square().mean().backward()
    opt.step()


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, outdir, adaptive):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        from ferret_kernels.fl import sharded

        torch.set_num_threads(1)
        model = _model()
        comp = UpdateCodec.for_module(
            model, FerretConfig(num_bases=K, block_size=BS, adaptive=adaptive, full_threshold=40)
        )
        mesh = init_device_mesh("cpu", (world,))
        for layer in model.encoder.layer:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        params = dict(model.named_parameters())
        old = {n: p.detach().clone() for n, p in params.items()}
        _train_step(model, rank)
        new = {n: p.detach() for n, p in params.items()}
        msg = sharded.project_sharded(comp, old, new, SEED, client=f"fsdp{world}")
        full_old = {n: t.full_tensor() for n, t in old.items()}
        full_new = {n: t.full_tensor() for n, t in new.items()}
        # the server side, sharded: apply a message's coefficients shard by shard
        dense = msg.dense() * fk_block_scale(msg.active)[:, None]
        sharded.apply_sharded(comp.layout, params, dense, SEED, msg.dist, 0.5, msg.active)
        shards = {n: p.to_local().clone() for n, p in params.items()}
        extents = {n: sharded.shard_extent(p)[1] for n, p in params.items()}
        torch.save(
            {"msg": encode(msg), "old": full_old, "new": full_new, "shards": shards, "extents": extents},
            os.path.join(outdir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def fk_block_scale(active):
    from ferret_kernels.fl.aggregate import block_scale as _block_scale

    return _block_scale(active)


def _spawn(world, tmp_path, adaptive=False):
    mp.start_processes(_worker, args=(world, _port(), str(tmp_path), adaptive), nprocs=world, start_method="spawn")
    return [torch.load(os.path.join(tmp_path, f"rank{r}.pt"), weights_only=False) for r in range(world)]


@pytest.mark.parametrize("world,adaptive", [(2, False), (4, True)])
def test_fsdp2_projection_and_apply_match_the_unsharded_ones(tmp_path, world, adaptive):
    res = _spawn(world, tmp_path, adaptive)
    layout = UpdateCodec.for_module(
        _model(), FerretConfig(num_bases=K, block_size=BS, adaptive=adaptive, full_threshold=40)
    ).layout
    msgs = [decode(r["msg"], layout) for r in res]
    for m in msgs[1:]:  # every rank holds the same update, bit for bit
        assert torch.equal(m.coeffs, msgs[0].coeffs) and torch.equal(m.active, msgs[0].active)
    model = _model()
    comp = UpdateCodec.for_module(model, FerretConfig(num_bases=K, block_size=BS, adaptive=adaptive, full_threshold=40))
    ref = comp.compress(res[0]["old"], res[0]["new"], SEED)
    got = msgs[0]
    assert torch.equal(got.active, ref.active)
    err = (got.coeffs - ref.coeffs).abs().max().item()
    assert err <= 1e-5 * ref.coeffs.abs().max().item(), err
    assert got.full.keys() == ref.full.keys() and all(torch.equal(got.full[n], ref.full[n]) for n in ref.full)
    # sharded apply vs the unsharded apply of the same coefficients: every shard bit-identical
    params = {n: t.clone() for n, t in res[0]["new"].items()}
    dense = got.dense() * fk_block_scale(got.active)[:, None]
    comp.apply_coefficients(params, dense, SEED, got.dist, got.active, 0.5)
    for r in res:
        for n, shard in r["shards"].items():
            flat = params[n].reshape(-1)
            start = r["extents"][n]
            assert torch.equal(shard.reshape(-1), flat[start : start + shard.numel()]), (n, start)


def test_federated_round_with_an_fsdp2_client_matches_the_unsharded_round(tmp_path):
    """Clients: a 2-rank FSDP2 job and two single processes; the server aggregates and applies
    in coefficient space. The same round with every client unsharded gives the same model
    within float rounding (the sharded client's coefficients differ in the last bits)."""
    res = _spawn(2, tmp_path)
    base = _model()
    comp = UpdateCodec.for_module(base, FerretConfig(num_bases=K, block_size=BS, full_threshold=40))
    fsdp_msg = decode(res[0]["msg"], comp.layout)
    old = {n: p.detach().clone() for n, p in base.named_parameters()}
    singles = []
    for c in range(2):
        m = _model()
        _train_step(m, 10 + c)
        singles.append(comp.compress(old, dict(m.named_parameters()), SEED, client=f"single{c}"))
    unsharded_fsdp = comp.compress(res[0]["old"], res[0]["new"], SEED, client="fsdp-unsharded")
    g1, g2 = _model(), _model()
    comp.apply(g1, [fsdp_msg, *singles], lr=1.0)
    comp.apply(g2, [unsharded_fsdp, *singles], lr=1.0)
    for (n, a), b in zip(g1.named_parameters(), g2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
    moved = sum((a - b).abs().sum().item() for a, b in zip(g1.parameters(), _model().parameters()))
    assert moved > 1e-3  # the round changed the model


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
