"""Plant known bugs in the source, one at a time, and report which tests catch them.

    python scripts/plant_bugs.py                 # every mutation, the fl tests, stop at the first failure
    python scripts/plant_bugs.py --list          # the mutations
    python scripts/plant_bugs.py --only decode-no-block-count shares-no-cap --all   # every failing test
    python scripts/plant_bugs.py --csv results.csv

Each mutation replaces one exact piece of source text (it must occur exactly once: when the
code changes, the script says so instead of planting nothing). The script copies the tracked
files and the built extension to a scratch directory, plants one mutation, checks the file
still compiles, runs the mutation's tests there with pytest and records "caught" (a test
failed, with its id) or "MISSED" (every test passed). Exit status 1 if any was missed.

A missed mutation is a hole in the suite (or an equivalent mutant: then drop it here and say
why). FL_MUTATIONS covers ferret_kernels/fl; KERNEL_MUTATIONS is for the kernels' owner to
fill (same format). Not part of CI: it runs the suite once per mutation.
"""

from __future__ import annotations

import argparse
import csv
import os
import py_compile
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the fastest to fail first (with -x the first failure ends a run)
FL_TESTS = (
    "tests/test_fl_adversarial.py",
    "tests/test_fl_checkpoint.py",
    "tests/test_flower_strategy.py",
    "tests/test_fl.py",
)


@dataclass
class Mutation:
    id: str
    path: str
    old: str
    new: str
    why: str  # the bug it stands for
    tests: tuple = FL_TESTS
    build: bool = False  # a source of the CPU extension: rebuilt in the scratch copy first


FL_MUTATIONS = [
    Mutation(
        "decode-no-block-count",
        "ferret_kernels/fl/message.py",
        '    if nb != layout.total_blocks:\n        raise DecodeError(f"message has {nb} blocks, the layout {layout.total_blocks}")\n',
        "",
        "decode does not check that the block count matches the layout",
    ),
    Mutation(
        "decode-no-finite-check",
        "ferret_kernels/fl/message.py",
        '        if not torch.isfinite(t).all():\n            raise DecodeError(f"message tensor {name!r} has NaN or Inf values")\n',
        "",
        "NaN / Inf coefficients accepted",
    ),
    Mutation(
        "decode-not-canonical",
        "ferret_kernels/fl/message.py",
        "    if again != data:\n",
        "    if False:\n",
        "any encoding of a valid message accepted (whitespace, key order, padding...)",
    ),
    Mutation(
        "decode-lenient-integers",
        "ferret_kernels/fl/message.py",
        "    if not _UINT.fullmatch(s):\n",
        "    s = s.strip().replace('_', '')\n    if not s.isdigit() or len(s) > 20:\n",
        "integers with spaces, separators or non-ASCII digits accepted",
    ),
    Mutation(
        "decode-any-count-dtype",
        "ferret_kernels/fl/message.py",
        "        if a.dtype != _count_dtype(K) or a.dim() != 1",
        "        if a.dtype not in (torch.uint8, torch.int16, torch.int32) or a.dim() != 1",
        "active counts in any integer dtype (several encodings of one message)",
    ),
    Mutation(
        "decode-weight-unbounded",
        "ferret_kernels/fl/message.py",
        "    if not math.isfinite(weight) or not 0 <= weight <= MAX_WEIGHT:\n",
        "    if not math.isfinite(weight) or not 0 <= weight:\n",
        "claimed weights above 2^53 accepted",
    ),
    Mutation(
        "encode-metadata-unsorted",
        "ferret_kernels/fl/message.py",
        '    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))\n',
        "",
        "encode keeps safetensors' random metadata order (one message, many encodings)",
    ),
    Mutation(
        "receive-no-round-check",
        "ferret_kernels/fl/server.py",
        "            if msg.round != rnd:\n",
        "            if False:\n",
        "stale or replayed updates of other rounds accepted",
    ),
    Mutation(
        "receive-no-client-check",
        "ferret_kernels/fl/server.py",
        "            if node is not None and msg.client != str(node):\n",
        "            if False:\n",
        "another node's update accepted from a node",
    ),
    Mutation(
        "receive-no-duplicate-check",
        "ferret_kernels/fl/server.py",
        "            if key in self._seen:\n",
        "            if False:\n",
        "two updates from one client in a round",
    ),
    Mutation(
        "receive-unnamed-clients-uncounted",
        "ferret_kernels/fl/server.py",
        "            if key in self._seen:\n",
        "            if key[1] and key in self._seen:\n",
        "updates naming no client, from no node, accepted any number of times (as before 2026-11-27)",
    ),
    Mutation(
        "bounds-on-coefficient-norm",
        "ferret_kernels/fl/server.py",
        "            norm = msg.step_norm(self.codec.config.num_bases)\n",
        "            norm = msg.norm()\n",
        "max_norm measured on the coefficients: K' = 1 steps sqrt(K) times past it",
    ),
    Mutation(
        "restore-loads-before-checking",
        "ferret_kernels/fl/flower/strategy.py",
        "        digest = model_digest(self._loaded_params(tensors), self.codec)\n",
        "        self.model.load_state_dict(tensors)\n        digest = model_digest(self.model, self.codec)\n",
        "the strategy loads a checkpoint's model before checking its digest",
    ),
    Mutation(
        "evaluate-uncapped-weights",
        "ferret_kernels/fl/flower/strategy.py",
        "capped_shares([n for n, _ in got], self.server.config.max_share)",
        "[n / max(sum(n for n, _ in got), 1e-300) for n, _ in got]",
        "evaluation metrics weighted by claimed examples without the share cap",
    ),
    Mutation(
        "receive-no-seed-check",
        "ferret_kernels/fl/server.py",
        "            if msg.seed != expected_seed:\n",
        "            if False:\n",
        "updates under any seed accepted",
    ),
    Mutation(
        "receive-no-max-norm",
        "ferret_kernels/fl/server.py",
        "            if self.config.max_norm is not None and not norm <= self.config.max_norm:\n",
        "            if False:\n",
        "unbounded update norms",
    ),
    Mutation(
        "shares-no-cap",
        "ferret_kernels/fl/server.py",
        "    cap = max(max_share, 1.0 / n)\n",
        "    cap = 1.0\n",
        "one client claiming a huge weight takes the whole round",
    ),
    Mutation(
        "shares-underflow",
        "ferret_kernels/fl/server.py",
        "                share[i] = w[i] / tot * budget\n",
        "                share[i] = budget * w[i] / tot\n",
        "tiny weights underflow to a zero share",
    ),
    Mutation(
        "clip-relative-ignored",
        "ferret_kernels/fl/server.py",
        "            bound = min(bound, c.clip_relative * statistics.median(norms))\n",
        "            pass\n",
        "no relative clipping",
    ),
    Mutation(
        "broadcast-first-group-only",
        "ferret_kernels/fl/server.py",
        "            groups.setdefault((m.seed, m.dist), []).append((m, s))\n        return [self._group_message(members, rnd) for members in groups.values()]\n",
        "            groups.setdefault((m.seed, m.dist, m.num_bases), []).append((m, s))\n        return [self._group_message(members, rnd) for members in groups.values()][:1]\n",
        "mixed K under the shared seed: only the first K's updates applied (the issue's erase bug)",
    ),
    Mutation(
        "step-no-round-check",
        "ferret_kernels/fl/server.py",
        "            if m.round != round:\n",
        "            if False:\n",
        "step applies updates of another round",
    ),
    Mutation(
        "strategy-arrival-order",
        "ferret_kernels/fl/flower/strategy.py",
        "        accepted.sort(key=lambda a: a[0])",
        "        pass",
        "aggregation order follows reply arrival (float sums differ)",
    ),
    Mutation(
        "strategy-unsampled-accepted",
        "ferret_kernels/fl/flower/strategy.py",
        "                if node not in sampled:\n",
        "                if False:\n",
        "replies from nodes not sampled this round accepted",
    ),
    Mutation(
        "strategy-metrics-unchecked",
        "ferret_kernels/fl/replies.py",
        "    if not (math.isfinite(v) and lo <= v <= hi):\n",
        "    if False:\n",
        "NaN / inf / negative metrics accepted",
    ),
    Mutation(
        "catchup-unbounded",
        "ferret_kernels/fl/sync.py",
        "    while catchup and sum(len(b) for e in catchup.values() for b, _ in e) > budget:\n",
        "    while False:\n",
        "the catch-up log grows without bound",
    ),
    Mutation(
        "checkpoint-no-digest",
        "ferret_kernels/fl/checkpoint.py",
        "    if _digest(state_json, tensors) != digest:\n",
        "    if False:\n",
        "a corrupted checkpoint is loaded",
    ),
    Mutation(
        "checkpoint-not-atomic",
        "ferret_kernels/fl/checkpoint.py",
        '    tmp = f"{path}.tmp-{os.getpid()}"\n',
        "    tmp = path\n",
        "the checkpoint is overwritten in place (a crash mid-write loses it)",
    ),
    Mutation(
        "loop-resume-loses-sampling-state",
        "ferret_kernels/fl/harness/loop.py",
        '    gen.bit_generator.state = state["gen"]\n',
        "",
        "a resumed loop samples other clients than the uninterrupted run",
    ),
]

# The kernels' owner adds mutations of csrc/ and ferret_kernels/{ops,backends,triton_kernels}.py here,
# e.g. Mutation("chunk-sum-float32", "csrc/cpu/kernel_impl.h", "double acc", "float acc", "...", ("tests/test_ops.py",)).
# Mutations of compiled sources need the extension rebuilt in the scratch copy: set `build` below.
KERNEL_MUTATIONS = [
    Mutation(
        "cpu-chunks-summed-in-float32",
        "csrc/cpu/kernel_impl.h",
        "for (int k = 0; k < kb; ++k) acc[k] += (double)dot_rademacher(xf, w0, (uint32_t)k, g, k0, k1, ng);",
        "for (int k = 0; k < kb; ++k) acc[k] = (double)((float)acc[k] + dot_rademacher(xf, w0, (uint32_t)k, g, k0, k1, ng));",
        "the CPU kernel adds a block's chunks in float32 (tolerances hid it)",
        ("tests/test_ops.py",),
        build=True,
    ),
    Mutation(
        "core-basis-value-wrong-bit",
        "csrc/ferret/core.h",
        "return (r.v[(j >> 5) & 3] >> (j & 31)) & 1u ? -1.0f : 1.0f;",
        "return (r.v[(j >> 5) & 3] >> (j & 30)) & 1u ? -1.0f : 1.0f;",
        "core.h's scalar basis_value reads the wrong sign bit (it was called by nothing)",
        ("tests/test_rng.py",),
    ),
    Mutation(
        "cpu-check-num-bases-zero",
        "csrc/binding_common.h",
        "TORCH_CHECK_VALUE(num_bases > 0,",
        "TORCH_CHECK_VALUE(num_bases >= 0,",
        "the native ops accept K = 0",
        ("tests/test_errors.py",),
        build=True,
    ),
    Mutation(
        "cpp-start-head-misplaced",
        "csrc/binding_common.h",
        "xb.narrow(0, p0, h).copy_(xf.narrow(0, 0, h));",
        "xb.narrow(0, 0, h).copy_(xf.narrow(0, 0, h));",
        "a shard's head lands at the start of its block, not at its offset",
        ("tests/test_start_offset.py",),
        build=True,
    ),
    Mutation(
        "py-start-head-misplaced",
        "ferret_kernels/ops.py",
        "    xb[p0:] = xf[:h]\n",
        "    xb[:h] = xf[:h]\n",
        "the Triton / reference paths put a shard's head at the start of its block",
        ("tests/test_start_offset.py",),
    ),
    Mutation(
        "cuda-reduce-drops-last-chunk",
        "csrc/cuda/kernels.cuh",
        "for (int64_t c = threadIdx.x & 31; c < chunks_per_block; c += 32)",
        "for (int64_t c = threadIdx.x & 31; c + 1 < chunks_per_block; c += 32)",
        "the CUDA second pass skips a block's last chunk",
        ("tests/test_cuda_emulation.py",),
    ),
    Mutation(
        "cuda-quad-sum-tree-reordered",
        "csrc/cuda/kernels.cuh",
        "  for (int o = 4; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);\n  return a;\n}",
        "  for (int o = 1; o < 8; o <<= 1) a += __shfl_xor_sync(0xffffffffu, a, o);\n  return a;\n}",
        # the same eight lanes' sum grouped otherwise: within float32 rounding of the old one, so only
        # the order model can tell (project is not bit-identical across backends, only within one)
        "the four-basis warp sum adds the last lanes in another tree than warp_sum: other bits",
        ("tests/test_cuda_emulation.py::test_rademacher_project_adds_in_its_documented_order",),
    ),
    Mutation(
        "cuda-quad-sum-wrong-lane-basis",
        "csrc/cuda/kernels.cuh",
        "const int j = (lane >> 3) & 3;  // the quad's basis whose warp sum this lane holds",
        "const int j = (lane >> 4) & 3;  // the quad's basis whose warp sum this lane holds",
        "a lane stores its warp sum as another basis of the quad than the one it holds",
        ("tests/test_cuda_emulation.py::test_project_and_reconstruct_vs_reference",),
    ),
    Mutation(
        "cuda-quad-kernel-wrong-lane-basis",
        "csrc/cuda/kernels.cuh",
        "const int j = (lane >> 3) & 3;  // the basis whose warp sum this lane holds",
        "const int j = (lane >> 4) & 3;  // the basis whose warp sum this lane holds",
        "the quad candidate's lane stores its warp sum as another basis than the one it holds",
        ("tests/test_cuda_emulation.py::test_quad_project_adds_in_its_documented_order",),
    ),
    Mutation(
        "cuda-chunk-pow2-shift",
        "csrc/cuda/kernels.cuh",
        "    b = c >> __popc(per - 1);\n",
        "    b = c >> (per >> 1);\n",
        # right for 1, 2 and 4 chunks a block, wrong from 8 (a second reader's mutation: it passed
        # every emulator test until a case with blocks of 2^16 elements was added)
        "the chunk's block for a power of two of chunks a block shifted by the wrong amount",
        ("tests/test_cuda_emulation.py::test_project_and_reconstruct_vs_reference",),
    ),
    Mutation(
        "cuda-umulhi-low-word",
        "csrc/ferret/core.h",
        "    *lo = a * b;\n    return;\n",
        "    *lo = __umulhi(a, b);\n    return;\n",
        "the device Philox multiply (kUmulhi, the rademacher words) takes the high word for the low one",
        ("tests/test_cuda_emulation.py::test_bases_match_contract_and_cpu_kernel",),
    ),
    Mutation(
        "cuda-chunks-unpack-order",
        "csrc/cuda/kernels.cuh",
        "for (int v = 0; v < RawRun<T, N>::kVec; ++v) widen16<T>(r.raw[v], out + v * kPer16);",
        "for (int v = 0; v < RawRun<T, N>::kVec; ++v) widen16<T>(r.raw[v], out + (v ^ 1) * kPer16);",
        "the four-chunks-a-CTA variant widens its prefetched vectors into each other's places",
        ("tests/test_cuda_emulation.py::test_four_chunks_a_cta_give_the_shipped_bits",),
    ),
    Mutation(
        "cuda-quad-negsum-restarts-each-run",
        "csrc/cuda/kernels.cuh",
        "neg[j] = rademacher_negsum(w[j], x, neg[j]);",
        "neg[j] += rademacher_negsum(w[j], x);",
        # the same sum in another order: a run's negsum from 0, then added (a wrong order, right values)
        "the quad candidate adds each run's negsum apart, not on from the last run's",
        ("tests/test_cuda_emulation.py::test_quad_project_adds_in_its_documented_order",),
    ),
    Mutation(
        "cuda-quad-run-stride",
        "csrc/cuda/kernels.cuh",
        "    const int64_t j0 = j00 + (int64_t)run * L::kChunk;\n",
        "    const int64_t j0 = j00 + (int64_t)run * L::kElems;\n",
        "the quad candidate's runs overlap (a run's stride an element run, not a chunk)",
        ("tests/test_cuda_emulation.py::test_quad_project_adds_in_its_documented_order",),
    ),
    Mutation(
        "cuda-quad-inactive-bases-stored",
        "csrc/cuda/kernels.cuh",
        "  if ((int)threadIdx.x < kb) {\n    float t = 0.0f;",
        "  if ((int)threadIdx.x < p.num_bases) {\n    float t = 0.0f;",
        "the quad candidate writes the partial sums of bases past the block's active count",
        ("tests/test_cuda_emulation.py::test_quad_project_adds_in_its_documented_order",),
    ),
    Mutation(
        "cuda-quad-division-remainder",
        "csrc/cuda/kernels.cuh",
        "  return c % per;\n",
        "  return (c + 1) % per;\n",
        # a second reader's: it passed the first quad tests, whose span counts were all powers of two
        "the quad candidate's span in its block, for a span count not a power of two, off by one",
        ("tests/test_cuda_emulation.py::test_quad_project_adds_in_its_documented_order",),
    ),
    Mutation(
        "cuda-fused-early-ticket-reduces",
        "csrc/cuda/kernels.cuh",
        "last = atomicAdd(tickets + b, 1u) == (unsigned)(chunks_per_block - 1);",
        "last = atomicAdd(tickets + b, 1u) == (unsigned)(chunks_per_block - 2);",
        # (== 0u is an equivalent mutant where CTAs run one at a time: every CTA then sums and
        # resets, and the block's last one sums all partials; on a GPU it would race)
        "the fused candidate adds a block's partials one chunk before the last is in",
        ("tests/test_cuda_emulation.py",),
    ),
    Mutation(
        "cuda-fused-ticket-not-reset",
        "csrc/cuda/kernels.cuh",
        "  if (threadIdx.x == 0) tickets[b] = 0;\n",
        "",
        "the fused candidate leaves its tickets set: the next launch's count starts wrong",
        ("tests/test_cuda_emulation.py",),
    ),
    Mutation(
        "cuda-prefetch-past-block-end",
        "csrc/cuda/kernels.cuh",
        "  const int64_t len = min((int64_t)L::kChunk, min(p.block_size, p.numel - b * p.block_size) - cs);\n",
        "  const int64_t len = L::kChunk;\n",
        "the prefetch candidate asks for a whole chunk where the block ends sooner: a range past the tensor",
        ("tests/test_cuda_emulation.py",),
    ),
    Mutation(
        "cuda-prefetch-empty-range",
        "csrc/cuda/kernels.cuh",
        "  if (e <= a) return;\n  const uint32_t n = (uint32_t)(e - a);\n",
        "  const uint32_t n = (uint32_t)(e - a);\n",
        "a range holding no whole 16-byte unit is asked for anyway: its size goes negative (4 GiB as uint32)",
        ("tests/test_cuda_emulation.py",),
    ),
    Mutation(
        "triton-prefetch-past-data",
        "ferret_kernels/triton_kernels.py",
        "    ln = tl.minimum(CHUNK, tl.minimum(block_size, numel - b * block_size) - cs)\n",
        "    ln = tl.minimum(CHUNK, block_size - cs)\n",
        "the Triton prefetch candidate's range ignores where the data ends: a range past the tensor",
        ("tests/test_triton_candidates.py",),
    ),
    Mutation(
        "triton-prefetch-empty-range",
        "ferret_kernels/triton_kernels.py",
        "(q >= 0) & (q < num_chunks) & (ln > 0) & (e > a), e - a, 0)",
        "(q >= 0) & (q < num_chunks) & (ln > 0), e - a, 0)",
        "the Triton prefetch asks for a range holding no whole 16-byte unit: a negative size",
        ("tests/test_triton_candidates.py",),
    ),
    Mutation(
        "triton-no-active-clamp",
        "ferret_kernels/triton_kernels.py",
        "kb = tl.minimum(tl.maximum(tl.load(act_ptr + b, mask=live, other=0).to(tl.int32), 0), K)",
        "kb = tl.load(act_ptr + b, mask=live, other=0).to(tl.int32)",
        "Triton project writes past a row of part for a count above K",
        ("tests/test_device_backends.py",),
    ),
    Mutation(
        "triton-sign-words-swapped",
        "ferret_kernels/triton_kernels.py",
        "tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), [ROWS])",
        "tl.reshape(tl.join(tl.join(r0, r1), tl.join(r2, r3)), [ROWS])",
        "Triton rademacher signs taken from the wrong Philox words",
        ("tests/test_device_backends.py",),
    ),
    Mutation(
        "triton-pair-sign-words-swapped",
        "ferret_kernels/triton_kernels.py",
        "words = tl.join(tl.join(r0, r2), tl.join(r1, r3))  # [q, basis, m, n]",
        "words = tl.join(tl.join(r0, r1), tl.join(r2, r3))  # [q, basis, m, n]",
        "Triton project's second basis of a pair from the wrong Philox words",
        ("tests/test_device_backends.py",),
    ),
    Mutation(
        "triton-pair-second-basis-unstored",
        "ferret_kernels/triton_kernels.py",
        "tl.store(row_ptr + k + 1, db, mask=k + 1 < kb)",
        "tl.store(row_ptr + k + 1, db, mask=k + 2 < kb)",
        "Triton project drops the last basis of an even count",
        ("tests/test_device_backends.py",),
    ),
    Mutation(
        "triton-recon-pair-second-coefficient",
        "ferret_kernels/triton_kernels.py",
        "gb = tl.load(c_row + k + 1, mask=k + 1 < kb, other=0.0)",
        "gb = tl.load(c_row + k, mask=k + 1 < kb, other=0.0)",
        "Triton reconstruct scales a pair's second basis by the first one's coefficient",
        ("tests/test_device_backends.py",),
    ),
    Mutation(
        "triton-recon-pair-past-active",
        "ferret_kernels/triton_kernels.py",
        "gb = tl.load(c_row + k + 1, mask=k + 1 < kb, other=0.0)",
        "gb = tl.load(c_row + k + 1)",
        "Triton reconstruct adds the basis past an odd active count",
        ("tests/test_device_backends.py",),
    ),
    Mutation(
        "triton-negsum-group-shift",
        "ferret_kernels/triton_kernels.py",
        "    sh = (tl.arange(0, 4) * 8).to(tl.uint32)[None, :] + z\n",
        "    sh = (tl.arange(0, 4) * 4).to(tl.uint32)[None, :] + z\n",
        "the negsum candidate tests the wrong byte of the sign word for a group of 8 columns",
        ("tests/test_triton_candidates.py",),
    ),
    Mutation(
        "triton-negsum-ptx-bit-order",
        "ferret_kernels/triton_kernels.py",
        'f"and.b32 m, t, {1 << i};',
        'f"and.b32 m, t, {1 << (7 - i)};',
        "the negsum candidate's inline PTX pairs element i with bit 7 - i (the interpreter runs the Triton form)",
        ("tests/test_triton_candidates.py",),
    ),
    Mutation(
        "triton-chunk-signed-division",
        "ferret_kernels/triton_kernels.py",
        "q = pid.to(tl.uint32)\n    c = cpb.to(tl.uint32)",
        "q = pid.to(tl.int32)\n    c = cpb.to(tl.int32)",
        "Triton chunk ids past 2^31 (the last program's, past the data) divided as negative numbers",
        ("tests/test_device_backends.py",),
    ),
    Mutation(
        "triton-bf16-unpack-swapped",
        "ferret_kernels/triton_kernels.py",
        '"shl.b32 $0, $2, 16;',
        '"shl.b32 $1, $2, 16;',
        "the bf16 unpack's inline PTX gives a packed pair's values to each other (the interpreter runs the shift)",
        ("tests/test_device_backends.py",),
    ),
    Mutation(
        "op-fake-ignores-start",
        "ferret_kernels/ops.py",
        "    return x.new_empty((num_blocks(x.numel(), block_size, start), num_bases), dtype=torch.float32)",
        "    return x.new_empty((num_blocks(x.numel(), block_size), num_bases), dtype=torch.float32)",
        "the fake kernel gives the wrong shape with an element offset",
        ("tests/test_start_offset.py",),
    ),
    Mutation(
        "inplace-no-version-bump",
        "ferret_kernels/ops.py",
        "        torch.autograd.graph.increment_version(args[0] if args else kwargs[op._schema.arguments[0].name])\n",
        "",
        "reconstruct_ writes without telling autograd: a backward through a saved tensor uses the new values",
        ("tests/test_ops.py",),
    ),
    Mutation(
        "inplace-coeffs-may-alias-out",
        "ferret_kernels/ops.py",
        '    check_apart(out, "out", coeffs, "coeffs")\n',
        "",
        "the reference / Triton reconstruct_ reads coefficients from memory it is writing",
        ("tests/test_errors.py",),
    ),
    Mutation(
        "triton-ptx-newline-escape",
        "ferret_kernels/triton_kernels.py",
        '_BF16X2_PTX = tl.constexpr("shl.b32 $0, $2, 16; and.b32 $1, $2, 0xffff0000;")',
        '_BF16X2_PTX = tl.constexpr("shl.b32 $0, $2, 16;\\n\\tand.b32 $1, $2, 0xffff0000;")',
        "a backslash escape in inline PTX: torch 2.11's inductor pastes it into a string literal unescaped",
        ("tests/test_triton_compile.py::test_kernel_sources_survive_inductors_copy_into_a_string_literal",),
    ),
    Mutation(
        "triton-project-pair-default",
        "ferret_kernels/triton_kernels.py",
        "                *head, num_bases, k0, k1, PAIR=True, enable_fp_fusion=_FP_FUSION, **common\n",
        "                *head, num_bases, k0, k1, enable_fp_fusion=_FP_FUSION, **common\n",
        "a constexpr left to its default at a launch: torch 2.11's inductor launches it one argument short",
        ("tests/test_device_backends.py",),
    ),
]


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "-C", ROOT, "ls-files", "-z"], capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def scratch_copy() -> str:
    dst = tempfile.mkdtemp(prefix="plant_bugs_")
    for rel in tracked_files() + [os.path.relpath(p, ROOT) for p in _extensions()]:
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dst, rel))
    return dst


def _extensions() -> list[str]:
    d = os.path.join(ROOT, "ferret_kernels")
    return [os.path.join(d, f) for f in os.listdir(d) if re.match(r"_C.*\.(so|pyd)$", f)]


def run_one(m: Mutation, repo: str, all_failures: bool, timeout: float, keep: str | None = None) -> dict:
    path = os.path.join(repo, m.path)
    original = open(path).read()
    n = original.count(m.old)
    if n != 1:
        return dict(
            id=m.id,
            result=f"NOT PLANTED (the text occurs {n} times in {m.path}: update the mutation)",
            tests="",
            seconds=0,
        )
    try:
        with open(path, "w") as f:
            f.write(original.replace(m.old, m.new))
        if path.endswith(".py"):
            try:
                py_compile.compile(path, doraise=True)
            except py_compile.PyCompileError as e:
                return dict(
                    id=m.id, result=f"NOT PLANTED (does not compile: {e.msg.strip()[:100]})", tests="", seconds=0
                )
        if m.build:  # the mutated extension, built in place in the scratch copy (restored afterwards)
            saved = {so: open(so, "rb").read() for so in _extensions_in(repo)}
            b = subprocess.run(
                [sys.executable, "setup.py", "-q", "build_ext", "--inplace", "--force"],
                cwd=repo,
                capture_output=True,
                text=True,
                env=dict(os.environ, FERRET_BUILD_CUDA="0"),
                timeout=timeout,
            )
            if b.returncode:
                _restore(saved)
                return dict(
                    id=m.id, result=f"NOT PLANTED (does not build: {b.stderr.strip()[-150:]})", tests="", seconds=0
                )
            m_saved = saved
        else:
            m_saved = None
        # a fresh hypothesis database per mutation: examples saved under one mutation would
        # otherwise be replayed under the next and blamed on it
        shutil.rmtree(os.path.join(repo, ".hypothesis"), ignore_errors=True)
        env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
        args = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rf",
            "-p",
            "no:cacheprovider",
            *([] if all_failures else ["-x"]),
            *m.tests,
        ]
        t0 = time.monotonic()
        try:
            r = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
            text, rc = r.stdout + r.stderr, r.returncode
        except subprocess.TimeoutExpired:
            text, rc = "", "timeout"
        if keep:
            with open(os.path.join(keep, f"{m.id}.log"), "w") as f:
                f.write(text)
        failed = sorted(set(re.findall(r"^FAILED (\S+)", text, re.M)))
        if rc == 0:
            result = "MISSED"
        elif failed:
            result = "caught"
        else:
            result = f"error (rc {rc}): {text.strip().splitlines()[-1][:120] if text.strip() else ''}"
        return dict(id=m.id, result=result, tests=" ".join(failed), seconds=round(time.monotonic() - t0, 1))
    finally:
        with open(path, "w") as f:
            f.write(original)
        if m.build and locals().get("m_saved"):
            _restore(m_saved)


def _extensions_in(repo: str) -> list[str]:
    d = os.path.join(repo, "ferret_kernels")
    return [os.path.join(d, f) for f in os.listdir(d) if re.match(r"_C.*\.(so|pyd)$", f)]


def _restore(saved: dict) -> None:
    for path, data in saved.items():
        with open(path, "wb") as f:
            f.write(data)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="mutation ids")
    ap.add_argument("--list", action="store_true")
    ap.add_argument(
        "--all", action="store_true", help="run every test (report every failing one), not stop at the first"
    )
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per mutation")
    ap.add_argument("--csv")
    ap.add_argument("--keep-output", metavar="DIR", help="write each mutation's pytest output to DIR/<id>.log")
    a = ap.parse_args(argv)
    muts = FL_MUTATIONS + KERNEL_MUTATIONS
    if a.only:
        unknown = set(a.only) - {m.id for m in muts}
        if unknown:
            ap.error(f"unknown mutation ids {sorted(unknown)}")
        muts = [m for m in muts if m.id in a.only]
    if a.list:
        for m in muts:
            print(f"{m.id:36s} {m.path:36s} {m.why}")
        return 0
    repo = scratch_copy()
    if a.keep_output:
        os.makedirs(a.keep_output, exist_ok=True)
    rows = []
    try:
        for m in muts:
            row = run_one(m, repo, a.all, a.timeout, a.keep_output)
            row["why"] = m.why
            rows.append(row)
            print(f"{row['id']:36s} {row['result']:8s} {row['seconds']:7.1f} s  {row['tests']}", flush=True)
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    caught = sum(r["result"] == "caught" for r in rows)
    print(f"\n{caught} of {len(rows)} planted bugs caught")
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
