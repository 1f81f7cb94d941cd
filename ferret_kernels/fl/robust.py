"""Byzantine-robust aggregation of update vectors: coordinate-wise median, trimmed mean,
Krum and multi-Krum (docs/privacy.md, "Robust aggregation").

Contract. Each function takes X, float64 [n, d] (one row per client: under the shared seed,
a client's scaled dense coefficients s_b gamma_b, zero-padded to the round's largest K, then
its full-tensor deltas; the rows live in one space because basis k of a block is the same
for every client) and returns one vector [d]. Rows are equally weighted: robust rules ignore
claimed example counts (a claim is not evidence). Deterministic: ties in Krum's scores go to
the lower row index. Bad parameters raise ValueError naming the problem.

- median: per coordinate, the middle value (the mean of the two middle ones for even n).
- trimmed_mean(trim): per coordinate, drop the `trim` smallest and `trim` largest values and
  average the rest (needs n > 2 trim).
- krum(f) (Blanchard et al. 2017): the row whose squared distances to its n - f - 2 nearest
  other rows have the smallest sum; multi_krum(f, m): the mean of the m best-scored rows
  (default m = n - f). The guarantee needs n >= 2f + 3; with fewer rows the neighbour
  count is clamped to at least 1 (and with one or two rows the rule degenerates to picking
  the first best score), which the server logs.
"""

from __future__ import annotations

import torch

AGGREGATORS = ("mean", "median", "trimmed_mean", "krum", "multi_krum")


def _check(X: torch.Tensor) -> None:
    if X.dim() != 2 or X.shape[0] < 1:
        raise ValueError(f"robust aggregation needs a non-empty [n, d] matrix, got shape {tuple(X.shape)}")


def median(X: torch.Tensor) -> torch.Tensor:
    _check(X)
    s, n = X.sort(0).values, X.shape[0]
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def trimmed_mean(X: torch.Tensor, trim: int) -> torch.Tensor:
    _check(X)
    n = X.shape[0]
    if trim < 0 or n - 2 * trim < 1:
        raise ValueError(f"trimmed mean of {n} updates cannot drop {trim} from each end")
    return X.sort(0).values[trim : n - trim].mean(0)


def krum_scores(X: torch.Tensor, f: int) -> torch.Tensor:
    """Krum's score of every row: the sum of squared distances to its n - f - 2 nearest
    other rows (at least 1 when n >= 2)."""
    _check(X)
    n = X.shape[0]
    if f < 0:
        raise ValueError(f"krum's f (assumed Byzantine clients) must be >= 0, got {f}")
    if n == 1:
        return torch.zeros(1, dtype=X.dtype)
    d2 = torch.cdist(X, X).square()  # float64: exact enough to rank
    d2.fill_diagonal_(float("inf"))
    k = min(max(n - f - 2, 1), n - 1)
    return d2.sort(1).values[:, :k].sum(1)


def multi_krum(X: torch.Tensor, f: int, m: int | None = None) -> torch.Tensor:
    n = X.shape[0] if X.dim() == 2 else 0
    scores = krum_scores(X, f)
    m = max(n - f, 1) if m is None else m
    if not 1 <= m <= n:
        raise ValueError(f"multi-Krum selects m in [1, {n}] updates, got m={m}")
    # stable sort: equal scores keep row order, so ties go to the lower index
    pick = torch.sort(scores, stable=True).indices[:m]
    return X[pick].mean(0)


def krum(X: torch.Tensor, f: int) -> torch.Tensor:
    return multi_krum(X, f, 1)
