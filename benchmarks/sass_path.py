"""One thread's instruction count along a chosen path through a kernel's SASS, without a GPU.

    python benchmarks/sass_path.py --list                       # the bf16 rademacher project kernel's branches
    python benchmarks/sass_path.py --take 0x50 0x3a0 0x1b10 0x3f60
    python benchmarks/sass_path.py --kernel 'reconstruct_kernelI13__nv_bfloat16Li0E' --list

Compiles csrc/cuda/compile_check.cu for sm_90 (nvcc), disassembles the kernel whose mangled name
matches --kernel, and walks it from its first instruction: unconditional branches are followed,
conditional ones only where their address is given with --take, backward ones never (every loop runs
one trip: the K = 4 project's loops over bases do), and it stops at the first unpredicated EXIT.
Which branches a path takes is read off the listing (--list prints each branch with the
instructions before it); the addresses change with every change of the kernel. Prints the count
and the instructions by opcode. Why: the H200's ncu run found the K = 4 project issue bound
(results/gpu_check/2026-11-27T2107-h200-summary.md), so the instructions a thread issues model its
time better than the per-basis loop alone (sass_cost.py): 607 on that run's kernel, about 660 from
ncu's cycles and issue rate. A model, not a measurement.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

DEFAULT = r"project_kernelI13__nv_bfloat16Li0ELi4ELi1E"  # bf16, rademacher, 4 CTAs an SM, one chunk a CTA


def _sass_cost():
    """benchmarks/sass_cost.py (imported here, not at the top: it imports triton, which walk does not need)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import sass_cost

    return sass_cost


def kernel_sass(pattern: str, arch: int = 90) -> tuple[str, list[tuple[int, str]]]:
    funcs = _sass_cost().cuda_functions(arch)
    if funcs is None:
        sys.exit("nvcc not found")
    names = [n for n in funcs if re.search(pattern, n)]
    if len(names) != 1:
        sys.exit(f"--kernel {pattern!r} matches {len(names)} kernels: {names[:5]}")
    return names[0], funcs[names[0]]


def walk(ins: list[tuple[int, str]], take: set[int]) -> list[tuple[int, str]]:
    """The instructions (address, text) met from the first one: unconditional branches followed,
    conditional forward ones where their address is in take, backward ones never; up to the first
    unpredicated EXIT."""
    where = {a: i for i, (a, _) in enumerate(ins)}
    path, i = [], 0
    while i < len(ins) and len(path) < 100000:
        a, txt = ins[i]
        path.append((a, txt))
        if re.match(r"EXIT\b", txt):
            break
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", txt)
        if m:
            tgt, cond = int(m.group(1), 16), txt.startswith("@")
            if tgt in where and (not cond or (a in take and tgt > a)):
                i = where[tgt]
                continue
        i += 1
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", default=DEFAULT, help="a regular expression matching one mangled kernel name")
    ap.add_argument("--take", nargs="*", default=[], help="addresses (hex) of the conditional branches taken")
    ap.add_argument("--list", action="store_true", help="print the kernel's branches and exits")
    args = ap.parse_args(argv)
    name, ins = kernel_sass(args.kernel)
    print(f"# {name}: {len(ins)} instructions")
    if args.list:
        for i, (a, txt) in enumerate(ins):
            if re.search(r"\bBRA\b|\bEXIT\b", txt):
                before = "; ".join(t for _, t in ins[max(0, i - 2) : i])
                print(f"{a:#06x}  {txt:40s}  after: {before}")
        return
    path = walk(ins, {int(t, 16) for t in args.take})
    ops = _sass_cost().opcodes(t for _, t in path)
    taken = [f"{a:#x}" for a, t in path if re.search(r"\bBRA\b", t)]
    print(f"path: {len(path)} instructions; branches on it: {' '.join(taken)}")
    print(" ".join(f"{k}:{v}" for k, v in ops.most_common(16)))


if __name__ == "__main__":
    main()
