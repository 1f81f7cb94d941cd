"""Parameter layout: which tensors of a model take part, in which order, and their block plan.

Every tensor of the layout is cut into blocks of `block_size` elements; blocks are numbered
across tensors (tensor i starts at global block `offsets[i]`) so each block of the model
has its own bases. With `pack=True` the projected tensors are instead laid end to end in one
virtual flat vector cut into blocks, so a block may span several (small) tensors: fewer,
fuller blocks (the official Ferret code groups parameters for the same reason); each tensor
then starts at element `lead` of its first block, and a shared block's coefficients are the
sum over its tensors. Tensors with fewer than `full_threshold` elements (biases, norms, a
small head) are not projected: they travel in full. The fingerprint (a SHA-256 over names,
shapes, dtypes and the block plan) travels with every message, so an update made for
another model, or with another plan, is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch

from ..ops import num_blocks


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple
    dtype: torch.dtype
    numel: int
    projected: bool
    block_offset: int  # first global block (projected tensors)
    num_blocks: int  # blocks the tensor touches
    lead: int = 0  # position of the tensor's first element in its first block (packed layouts)


class ParamLayout:
    def __init__(self, specs: list[TensorSpec], block_size: int, full_threshold: int, pack: bool = False):
        self.specs = specs
        self.block_size = block_size
        self.full_threshold = full_threshold
        self.pack = pack
        self.by_name = {s.name: s for s in specs}
        self.total_blocks = max((s.block_offset + s.num_blocks for s in specs if s.projected), default=0)
        self.fingerprint = self._fingerprint()

    @classmethod
    def from_module(
        cls, module: torch.nn.Module, block_size: int = 1 << 20, full_threshold: int = 0, pack: bool = False
    ) -> "ParamLayout":
        """The trainable parameters of `module` (named_parameters order, shared ones once);
        `pack`: blocks of one virtual vector of all projected tensors (blocks cross tensor edges)."""
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        specs, offset, pos = [], 0, 0
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            if p.dtype not in (torch.float32, torch.bfloat16, torch.float16):
                raise TypeError(f"parameter {name} has dtype {p.dtype}; ferret handles float32/bfloat16/float16")
            projected = p.numel() >= max(full_threshold, 1)
            if projected and pack:  # element pos of the virtual vector: block pos // bs, position pos % bs
                lead = pos % block_size
                nb = num_blocks(p.numel(), block_size, lead)
                specs.append(TensorSpec(name, tuple(p.shape), p.dtype, p.numel(), True, pos // block_size, nb, lead))
                pos += p.numel()
                continue
            nb = num_blocks(p.numel(), block_size) if projected else 0
            specs.append(TensorSpec(name, tuple(p.shape), p.dtype, p.numel(), projected, offset, nb))
            offset += nb
        if not specs:
            raise ValueError("the module has no trainable parameters")
        return cls(specs, block_size, full_threshold, pack)

    def _fingerprint(self) -> str:
        desc = {
            "block_size": self.block_size,
            "tensors": [
                [s.name, list(s.shape), str(s.dtype).replace("torch.", ""), s.projected, s.block_offset]
                for s in self.specs
            ],
        }
        if self.pack:  # another plan, another fingerprint (per-tensor layouts keep theirs)
            desc["packed"] = [s.lead for s in self.specs]
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:32]

    @property
    def projected(self) -> list[TensorSpec]:
        return [s for s in self.specs if s.projected]

    @property
    def full(self) -> list[TensorSpec]:
        return [s for s in self.specs if not s.projected]

    @property
    def numel(self) -> int:
        return sum(s.numel for s in self.specs)

    def params(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The module's tensors for this layout, checked against it."""
        named = dict(module.named_parameters())
        out = {}
        for s in self.specs:
            p = named.get(s.name)
            if p is None:
                raise KeyError(f"the model has no parameter {s.name!r} of the layout")
            if tuple(p.shape) != s.shape or p.dtype != s.dtype:
                raise ValueError(
                    f"parameter {s.name}: model has {tuple(p.shape)} {p.dtype}, layout {s.shape} {s.dtype}"
                )
            out[s.name] = p
        return out

    def check_module(self, module: torch.nn.Module) -> None:
        if (
            ParamLayout.from_module(module, self.block_size, self.full_threshold, self.pack).fingerprint
            != self.fingerprint
        ):
            raise ValueError(
                "the model does not match this parameter layout (names, shapes, dtypes or block plan differ)"
            )

    def __repr__(self) -> str:
        return (
            f"ParamLayout({len(self.specs)} tensors, {self.numel} elements, {self.total_blocks} blocks of "
            f"{self.block_size}, {len(self.full)} sent in full, fingerprint {self.fingerprint[:8]})"
        )
