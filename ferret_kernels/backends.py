"""Backend selection and the registry of implementations.

Two layers, one direction of dependency (this module imports nothing from the package):

- ``torch.ops.ferret.project`` etc. always run the native kernel of their tensors' device
  (the C++ CPU kernel, the CUDA kernel), chosen by the dispatcher; for a device without one
  they run a fallback (:func:`fallback`: Triton on a GPU, else the pure-PyTorch reference).
  That is what C++, TorchScript and AOTInductor callers get.
- ``ferret_kernels.project`` etc. add the choice: ``auto`` (default) calls the dispatcher;
  ``cpu`` / ``cuda`` also call it, after checking that the native kernel exists for the
  tensors' device; ``triton`` and ``reference`` call those implementations directly. Forced
  by FERRET_BACKEND or :func:`set_backend` / :func:`use_backend`. Under torch.compile the
  choice is made when the function is traced (a constant of the graph), so the Triton kernels
  are traced into the graph rather than hidden behind an opaque op.

Implementations register here: ops.py registers "native" and "reference" (and says which
devices have native kernels), triton_kernels.py registers "triton" when imported; a name can
also be registered lazily, as the module that registers it (imported on first use).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import threading
import warnings
from typing import Any, Callable

import torch

NAMES = ("auto", "cpu", "cuda", "triton", "reference")
_state = threading.local()
_warned: set = set()
_factories: dict[str, Callable[[], Any]] = {}  # name -> () -> object with project/reconstruct/reconstruct_/philox
_impls: dict[str, Any] = {}
_lazy: dict[str, str] = {}  # name -> module whose import registers it
_native = {"keys": frozenset(), "error": "ferret_kernels.ops was not imported"}


def register(name: str, factory: Callable[[], Any]) -> None:
    """Register an implementation: `factory()` returns an object with the four op methods."""
    _factories[name] = factory
    _impls.pop(name, None)


def register_lazy(name: str, module: str) -> None:
    """`name` is registered by importing `module` (imported the first time it is needed)."""
    _lazy[name] = module


def set_native(keys, error: str | None) -> None:
    """Which dispatch keys ("CPU", "CUDA") have native kernels, and why the extension failed to load."""
    _native["keys"], _native["error"] = frozenset(keys), error


def implementation(name: str):
    """The registered implementation `name` ("native", "triton", "reference")."""
    impl = _impls.get(name)
    if impl is None:
        if name not in _factories and name in _lazy:
            importlib.import_module(_lazy[name])
        if name not in _factories:
            raise RuntimeError(f"ferret: no implementation named {name!r} is registered")
        impl = _impls[name] = _factories[name]()
    return impl


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


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """None if backend `name` can run on `device`, else a sentence saying why not."""
    device = torch.device(device)
    if name == "reference":
        return None
    if name == "cpu":
        if device.type != "cpu":
            return f"the cpu backend runs on CPU tensors, not {device.type}"
        if "CPU" not in _native["keys"]:
            return f"ferret_kernels._C is not built or failed to load ({_native['error']})"
        return None
    if name == "cuda":
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors, not {device.type}"
        if "CUDA" not in _native["keys"]:
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


@torch.compiler.assume_constant_result
def select(device_type: str) -> str:
    """The implementation the Python functions call for tensors on `device_type` under the
    current selection: "native" (the dispatcher), "triton" or "reference". A forced backend that
    cannot run there raises a RuntimeError saying why. A constant under torch.compile."""
    req = get_backend()
    if req == "auto":
        return "native"
    why = unavailable_reason(req, torch.device(device_type))
    if why is not None:
        raise RuntimeError(f"ferret backend {req!r} was requested but cannot run here: {why}")
    name = "native" if req in ("cpu", "cuda") else req
    implementation(name)  # import and build it now, not while a graph is traced
    return name


def fallback(device: torch.device):
    """The implementation the dispatcher's fallback kernel uses on a device without a native
    kernel: Triton on a GPU, else the reference; says so once per device type."""
    device = torch.device(device)
    for name in ("triton", "reference") if device.type == "cuda" else ("reference",):
        if unavailable_reason(name, device) is None:
            key = (device.type, name)
            if key not in _warned and name == "reference":
                _warned.add(key)
                why = "ferret_kernels._C is not built" if _native["error"] else "no native kernel for this device"
                warnings.warn(f"ferret: {why}; {device.type} tensors use the {name} implementation", stacklevel=3)
            return implementation(name)
    raise AssertionError("unreachable: the reference implementation always runs")


def available(device: str | torch.device = "cpu") -> list[str]:
    """Backends that can run on `device` now."""
    device = torch.device(device)
    return [n for n in NAMES[1:] if unavailable_reason(n, device) is None]
