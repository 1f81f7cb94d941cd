"""Crash-safe checkpoints of a federated run: one safetensors file per run directory,
replaced atomically after every round.

Contract:
- `save_checkpoint(directory, tensors, state, blobs)` writes `directory/checkpoint.safetensors`
  so that at every instant the file is either the previous complete checkpoint or the new
  complete one: the new file is written beside it, flushed and fsync'ed, renamed over the
  old one (rename is atomic on POSIX) and the directory is fsync'ed so the rename itself
  survives a power cut. Leftover temporary files of an earlier crash are removed.
- The file is a plain safetensors file (any safetensors tool reads the model): the model's
  tensors under "model.<name>", byte blobs (encoded updates) as uint8 tensors under
  "blob.<sha256 prefix>", and the JSON `state` in the metadata together with a SHA-256 over
  the state and every tensor's name, dtype, shape and bytes.
- `load_checkpoint(directory)` returns (tensors, state, blobs) or raises CheckpointError
  saying what is wrong (truncated, not safetensors, digest mismatch, wrong kind or
  version); it never returns partly read or unverified data. No checkpoint: None.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch

CHECKPOINT_NAME = "checkpoint.safetensors"
CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded; the text says why (it is never partly loaded)."""


def _digest(state_json: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(state_json.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"\0{name}\0{str(t.dtype)}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """tensors (detached, contiguous, on the CPU) with each one that shares memory with an earlier
    one copied: safetensors refuses shared memory, and a model with tied weights (an LLM's input
    and output embeddings) has two state-dict entries for one tensor, so saving it failed. Loading
    the file into the tied model writes the same values through both names."""
    out, storages = {}, set()
    for k, v in tensors.items():
        t = v.detach().contiguous().cpu()
        key = t.untyped_storage().data_ptr() if t.numel() else None
        if key is not None and key in storages:
            t = t.clone()
        elif key is not None:
            storages.add(key)
        out[k] = t
    return out


def blob_name(data: bytes) -> str:
    return "blob." + hashlib.sha256(data).hexdigest()[:32]


def checkpoint_path(directory: str) -> str:
    return os.path.join(directory, CHECKPOINT_NAME)


def save_checkpoint(
    directory: str, tensors: dict[str, torch.Tensor], state: dict, blobs: dict[str, bytes] | None = None
) -> str:
    """Atomically replace directory/checkpoint.safetensors; returns its path."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    path = checkpoint_path(directory)
    out = {f"model.{k}": v for k, v in unshared(tensors).items()}
    for name, data in (blobs or {}).items():
        out[name] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)
    state_json = json.dumps({"version": CHECKPOINT_VERSION, **state}, sort_keys=True, separators=(",", ":"))
    meta = {"state": state_json, "sha256": _digest(state_json, out)}
    for f in os.listdir(directory):  # an earlier crash mid-write leaves a temporary file: disk stays bounded
        if f.startswith(CHECKPOINT_NAME + ".tmp-"):
            try:
                os.remove(os.path.join(directory, f))
            except OSError:
                pass
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file(out, tmp, metadata=meta)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def load_checkpoint(directory: str) -> tuple[dict[str, torch.Tensor], dict, dict[str, bytes]] | None:
    """(model tensors, state, blobs) of directory's checkpoint, verified; None if there is none."""
    from safetensors.torch import load

    path = checkpoint_path(directory)
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        data = f.read()
    try:
        tensors = load(data)
        hlen = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + hlen])["__metadata__"]
        state_json, digest = meta["state"], meta["sha256"]
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - SafetensorError, pyo3 panics, JSON and key errors alike
        raise CheckpointError(
            f"checkpoint {path} ({len(data)} bytes) is truncated or not a checkpoint "
            f"({type(e).__name__}: {str(e)[:200]}); refusing to load it"
        ) from None
    if _digest(state_json, tensors) != digest:
        raise CheckpointError(
            f"checkpoint {path} is corrupted (its SHA-256 does not match its contents); refusing to load it"
        )
    state = json.loads(state_json)
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has version {state.get('version')!r}; this library reads {CHECKPOINT_VERSION}"
        )
    model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    blobs = {k: v.numpy().tobytes() for k, v in tensors.items() if k.startswith("blob.")}
    return model, state, blobs
