"""Client splits for simulations: Dirichlet over labels (non-IID) and natural groups."""

from __future__ import annotations

import numpy as np


def dirichlet_split(labels, num_clients: int, alpha: float, seed: int = 0, min_size: int = 1) -> list[np.ndarray]:
    """Split example indices among clients: for each label, client shares ~ Dirichlet(alpha).
    Small alpha gives skewed (non-IID) clients; retries until every client has min_size examples."""
    labels = np.asarray(labels)
    if num_clients <= 0 or alpha <= 0:
        raise ValueError("num_clients and alpha must be positive")
    if len(labels) < num_clients * min_size:
        raise ValueError(f"{len(labels)} examples cannot give {num_clients} clients {min_size} each")
    rng = np.random.default_rng(seed)
    for _ in range(100):
        parts = [[] for _ in range(num_clients)]
        for lab in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == lab))
            p = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for c, chunk in enumerate(np.split(idx, cuts)):
                parts[c].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"could not give every client {min_size} examples with alpha={alpha}; raise alpha")


def group_split(groups) -> tuple[list[np.ndarray], list]:
    """One client per distinct group value (e.g. the outlet of a tweet). Returns (indices, names)."""
    groups = np.asarray(groups)
    names = sorted(set(groups.tolist()))
    return [np.flatnonzero(groups == g) for g in names], names
