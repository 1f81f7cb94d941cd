"""Client-level differential privacy in Ferret's coefficient space (docs/privacy.md).

Contract. Under the shared seed every client's update is a vector in one space: its message's
coefficients gamma_i (uniform K, each block's K coefficients, which carry the block scale
1/sqrt(K) once: gamma_b = V_b^T delta_b / sqrt(K), so E||gamma_i||^2 = ||delta_i||^2) followed
by the deltas of the tensors sent in full. Call that x_i; `UpdateMessage.norm()` is ||x_i||.

- Clipping: x_i <- x_i * min(1, C / ||x_i||) (`clip_message`), so every client contributes a
  vector of norm at most C whatever it sends.
- Release (`dp_aggregate`): y = (sum_i clip_C(x_i) + N(0, sigma^2 C^2 I)) / m over *every*
  coordinate of the round's aggregate (all blocks, all K bases, every full tensor element),
  with a fixed denominator m (the expected number of clients per round), not the number that
  replied, so one client changes the noisy sum by at most C (add / remove) or 2C (replace).
  y is the round's one broadcast message (active count K in every block, weight 1); the model
  update, momentum and server learning rate are post-processing of the y's.
- Guarantee: client-level (user-level) (epsilon, delta)-DP of the sequence of released
  aggregates, for the sampling the deployment really uses: Poisson sampling with rate q
  (add / remove one client) or a uniform sample of m of N clients without replacement
  (replace one client) over T rounds, computed by `epsilon` with dp-accounting's RDP or PLD
  accountant. It assumes the sampling and the noise are secret from the adversary.
- Client mode (`privatize_update`): each client clips its own x_i to C and adds
  N(0, sigma^2 C^2 / m); the sum of m honest clients' noise is the central mechanism's. It
  protects a client against the server only if the server sees the sum alone (secure
  aggregation) and at least m clients add their noise; the server cannot re-clip a noisy
  update, so it trusts clients' clipping.

Not covered: floating-point side channels of the Gaussian sampler (Mironov 2012: torch's
normal sampler is not a discrete Gaussian), and the per-round noise seed is 64 bits of OS
entropy (`secrets`), or a fixed `dp_seed` for experiments, which gives no privacy against
anyone who knows it.
"""

from __future__ import annotations

import dataclasses
import math
import secrets

import torch

from .message import UpdateMessage

SAMPLINGS = ("poisson", "fixed")
ACCOUNTANTS = ("rdp", "pld")


def clip_message(msg: UpdateMessage, bound: float) -> tuple[UpdateMessage, float]:
    """(msg scaled to norm <= bound, the factor used): coefficients and full deltas together."""
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"clip bound must be positive and finite, got {bound}")
    n = msg.norm()
    f = bound / n if n > bound else 1.0
    if f >= 1.0:
        return msg, 1.0
    return dataclasses.replace(msg, coeffs=msg.coeffs * f, full={k: v * f for k, v in msg.full.items()}), f


def noise_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded from `seed`, or from 63 bits of OS entropy when None."""
    return torch.Generator().manual_seed(secrets.randbits(63) if seed is None else int(seed) & ((1 << 63) - 1))


def _gauss(shape, std: float, gen: torch.Generator) -> torch.Tensor:
    # sampled in float64 and rounded once: float32 sampling would lose nothing that matters,
    # but the sum and the noise are added in float64 so a clipped sum of many clients is exact
    return torch.randn(shape, generator=gen, dtype=torch.float64) * std


def dp_aggregate(
    messages: list[UpdateMessage],
    *,
    template: UpdateMessage,
    clip: float | None,
    noise_std: float,
    denominator: int,
    generator: torch.Generator,
    round: int,
) -> UpdateMessage:
    """(sum_i clip(x_i) + N(0, noise_std^2 I)) / denominator as one message shaped like
    `template` (the round's seed, dist and K, every block active), weight 1.

    `clip` None sums the messages as they are (client mode: the clients clipped and noised).
    Every message must have the template's fingerprint, seed, dist, K and all blocks active
    (the server checks that in `receive`); anything else raises ValueError before summing."""
    if denominator < 1:
        raise ValueError(f"the fixed denominator must be >= 1, got {denominator}")
    if not (math.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"noise std must be finite and >= 0, got {noise_std}")
    K, nb = template.num_bases, template.active.numel()
    for m in messages:
        if (m.fingerprint, m.seed, m.dist, m.num_bases) != (template.fingerprint, template.seed, template.dist, K):
            raise ValueError(f"update of client {m.client!r} is not in the round's coefficient space (seed, dist, K)")
        if m.coeffs.numel() != nb * K or int(m.active.min()) != K:
            raise ValueError(f"update of client {m.client!r} does not use K={K} in every block")
    acc = torch.zeros(nb * K, dtype=torch.float64)
    full = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in template.full.items()}
    for m in messages:
        x = clip_message(m, clip)[0] if clip is not None else m
        acc += x.coeffs.double()
        for k in full:
            full[k] += x.full[k].double()
    if noise_std > 0:
        acc += _gauss(acc.shape, noise_std, generator)
        for k in sorted(full):  # sorted: the draw order does not depend on dict insertion
            full[k] += _gauss(full[k].shape, noise_std, generator)
    return UpdateMessage(
        template.fingerprint,
        template.seed,
        template.dist,
        K,
        template.block_size,
        torch.full((nb,), K, dtype=torch.int32),
        (acc / denominator).float(),
        {k: (v / denominator).float() for k, v in full.items()},
        1.0,
        round,
        "server",
        "float32",
    )


def privatize_update(msg: UpdateMessage, clip: float, noise_std: float, generator: torch.Generator) -> UpdateMessage:
    """Client mode: the client's own message clipped to `clip` with N(0, noise_std^2) added to
    every coefficient and full-tensor element (for the central mechanism's noise from m
    clients: noise_std = client_noise_std(...))."""
    if msg.active.numel() and int(msg.active.min()) != msg.num_bases:
        raise ValueError("a private update must use K bases in every block (adaptive K leaks the block norms)")
    if not (math.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"noise std must be finite and >= 0, got {noise_std}")
    x, _ = clip_message(msg, clip)
    coeffs = x.coeffs.double() + _gauss(x.coeffs.shape, noise_std, generator)
    full = {k: x.full[k].double() for k in x.full}
    for k in sorted(full):
        full[k] = full[k] + _gauss(full[k].shape, noise_std, generator)
    return dataclasses.replace(
        x, coeffs=coeffs.float(), full={k: v.float() for k, v in full.items()}, wire_dtype="float32"
    )


def client_noise_std(clip: float, noise_multiplier: float, expected_clients: int) -> float:
    """Each of m clients adds this much so that their sum carries sigma * C: sigma C / sqrt(m)."""
    return noise_multiplier * clip / math.sqrt(expected_clients)


def epsilon(
    noise_multiplier: float,
    sample_rate: float,
    rounds: int,
    delta: float,
    *,
    sampling: str = "poisson",
    population: int | None = None,
    accountant: str = "rdp",
) -> float:
    """Client-level epsilon after `rounds` releases of the clipped, noised aggregate (noise
    std = noise_multiplier x clip on the sum), at `delta`, from dp-accounting.

    - sampling "poisson": each client joins a round independently with probability
      sample_rate; adjacency: add or remove one client; sensitivity C.
    - sampling "fixed": exactly m = sample_rate x population clients drawn uniformly without
      replacement (what the harness loop does); adjacency: replace one client, whose
      sensitivity is 2C, so the accountant's multiplier is noise_multiplier / 2 (RDP only:
      dp-accounting's PLD accountant has no sampling without replacement).
    noise_multiplier 0 gives inf; rounds 0 gives 0."""
    try:
        import dp_accounting
    except ImportError as e:  # pragma: no cover - the extra is in the Makefile and pyproject
        raise ImportError("epsilon() needs dp-accounting: pip install dp-accounting==0.6.0") from e
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if int(rounds) != rounds or rounds < 0:
        raise ValueError(f"rounds must be a non-negative integer, got {rounds}")
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    rel = dp_accounting.NeighboringRelation
    if sampling == "poisson":
        event = dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
        relation = rel.ADD_OR_REMOVE_ONE
    else:
        if population is None or population < 1:
            raise ValueError("sampling 'fixed' needs the population size (number of clients)")
        m = round(sample_rate * population)
        if abs(m - sample_rate * population) > 1e-9 * population or not 1 <= m <= population:
            raise ValueError(
                f"sample_rate x population must be a whole number of clients, got {sample_rate * population}"
            )
        if accountant == "pld":
            raise ValueError("the PLD accountant has no sampling without replacement: use accountant='rdp'")
        event = dp_accounting.SampledWithoutReplacementDpEvent(
            population, m, dp_accounting.GaussianDpEvent(noise_multiplier / 2)
        )
        relation = rel.REPLACE_ONE
    if accountant == "rdp":
        acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
    else:
        acc = dp_accounting.pld.PLDAccountant(neighboring_relation=relation)
    acc.compose(dp_accounting.SelfComposedDpEvent(event, int(rounds)))
    return float(acc.get_epsilon(delta))


def noise_multiplier_for(
    target_epsilon: float,
    sample_rate: float,
    rounds: int,
    delta: float,
    *,
    sampling: str = "poisson",
    population: int | None = None,
    accountant: str = "rdp",
    tol: float = 1e-3,
) -> float:
    """The smallest noise multiplier (to relative `tol`) whose `epsilon` is at most
    `target_epsilon` for these parameters: bisection on epsilon, which decreases in sigma."""
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target_epsilon must be positive and finite, got {target_epsilon}")
    kw = dict(sampling=sampling, population=population, accountant=accountant)
    eps = lambda s: epsilon(s, sample_rate, rounds, delta, **kw)
    lo, hi = 0.0, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ValueError(f"no noise multiplier up to 1e6 reaches epsilon {target_epsilon}")
    while hi - lo > tol * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if eps(mid) > target_epsilon else (lo, mid)
    return hi
