"""Backend selection for the ferret ops.

Every backend implements the same op schemas (ferret_kernels/ops.py). The public ops
(torch.ops.ferret.project / reconstruct / reconstruct_ / philox) pick one per call:

- ``auto`` (default): CPU tensors -> ``cpu`` (the compiled C++ kernels); CUDA tensors ->
  ``cuda`` (compiled CUDA kernels), else ``triton``; when the preferred backend is missing
  it falls back (finally to ``reference``) and says so once.
- ``cpu``, ``cuda``, ``triton``, ``reference``: forced, by the FERRET_BACKEND environment
  variable or by :func:`set_backend` / :func:`use_backend`. A forced backend that cannot run
  the call raises a RuntimeError that says why.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

NAMES = ("auto", "cpu", "cuda", "triton", "reference")
_state = threading.local()
_warned: set = set()


@dataclass(frozen=True)
class Backend:
    name: str
    project: Callable
    reconstruct: Callable
    reconstruct_: Callable
    philox: Callable


def _check_name(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"unknown ferret backend {name!r}; expected one of {', '.join(NAMES)}")
    return name


def get_backend() -> str:
    """The requested backend name: set_backend() wins over FERRET_BACKEND, default 'auto'."""
    forced = getattr(_state, "name", None)
    if forced is not None:
        return forced
    return _check_name(os.environ.get("FERRET_BACKEND", "auto").strip().lower() or "auto")


def set_backend(name: str | None) -> None:
    """Force a backend for this thread (None restores FERRET_BACKEND / auto)."""
    _state.name = None if name is None else _check_name(name)


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager form of set_backend."""
    prev = getattr(_state, "name", None)
    set_backend(name)
    try:
        yield
    finally:
        _state.name = prev


def _has_kernel(op: str, key: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(op, key)
    except RuntimeError:
        return False


def _ops_backend(prefix: str) -> Backend:
    ns = torch.ops.ferret
    return Backend(
        prefix,
        getattr(ns, f"_{prefix}_project").default,
        getattr(ns, f"_{prefix}_reconstruct").default,
        getattr(ns, f"_{prefix}_reconstruct_").default,
        getattr(ns, f"_{prefix}_philox").default,
    )


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """None if backend `name` can run on `device`, else a sentence saying why not."""
    from . import ops

    if name == "reference":
        return None
    if name == "cpu":
        if device.type != "cpu":
            return f"the cpu backend runs on CPU tensors, not {device.type}"
        if not _has_kernel("ferret::_cpu_project", "CPU"):
            return f"ferret_kernels._C is not built or failed to load ({ops.native_load_error()})"
        return None
    if name == "cuda":
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors, not {device.type}"
        if not _has_kernel("ferret::_cuda_project", "CUDA"):
            return "ferret_kernels._C was built without CUDA kernels (rebuild with a CUDA torch and nvcc)"
        return None
    if name == "triton":
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed (pip install 'ferret_kernels[triton]')"
        interp = os.environ.get("TRITON_INTERPRET", "0") == "1"
        if device.type == "cpu" and not interp:
            return "Triton kernels need a GPU tensor, or TRITON_INTERPRET=1 to run on the CPU"
        if device.type not in ("cpu", "cuda"):
            return f"Triton kernels do not run on {device.type}"
        return None
    return f"unknown backend {name!r}"


def _load(name: str) -> Backend:
    if name == "reference":
        from . import reference as r

        return Backend("reference", r.project, r.reconstruct, r.reconstruct_, r.philox)
    if name == "triton":
        from . import triton_kernels as t

        return t.BACKEND
    return _ops_backend(name)


def resolve(device: torch.device) -> Backend:
    """The backend that runs a call on `device` under the current selection."""
    req = get_backend()
    if req != "auto":
        why = unavailable_reason(req, device)
        if why is not None:
            raise RuntimeError(f"ferret backend {req!r} was requested but cannot run here: {why}")
        return _load(req)
    prefs = ("cpu", "reference") if device.type == "cpu" else ("cuda", "triton", "reference")
    for name in prefs:
        why = unavailable_reason(name, device)
        if why is None:
            return _load(name)
        key = (device.type, name)
        if key not in _warned:
            _warned.add(key)
            warnings.warn(f"ferret: backend {name!r} unavailable for {device.type} tensors ({why}); falling back", stacklevel=3)
    raise AssertionError("unreachable: the reference backend always runs")


def available(device: str | torch.device = "cpu") -> list[str]:
    """Backends that can run on `device` now."""
    device = torch.device(device)
    return [n for n in NAMES[1:] if unavailable_reason(n, device) is None]
