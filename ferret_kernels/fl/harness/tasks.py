"""Small synthetic federated tasks (no downloads): smoke tests, sweeps, and the tests."""

import torch

from .data import dirichlet_split


class BlobTask:
    """10-class Gaussian blobs in 64 dimensions, split non-IID (Dirichlet 0.5) over clients."""

    def __init__(self, n=4000, d=64, classes=10, clients=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        centers = torch.randn(classes, d, generator=g)
        y = torch.randint(0, classes, (n,), generator=g)
        x = centers[y] + 1.5 * torch.randn(n, d, generator=g)
        cut = n * 3 // 4
        self.x, self.y, self.xt, self.yt = x[:cut], y[:cut], x[cut:], y[cut:]
        self.parts = dirichlet_split(self.y.numpy(), clients, 0.5, seed)

    def num_clients(self):
        return len(self.parts)

    def client_size(self, c):
        return len(self.parts[c])

    def batch(self, c, gen, bs):
        idx = self.parts[c][gen.integers(len(self.parts[c]), size=bs)]
        return self.x[idx], self.y[idx]

    def loss(self, model, batch):
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])

    @torch.no_grad()
    def evaluate(self, model):
        out = model(self.xt)
        return {
            "loss": float(torch.nn.functional.cross_entropy(out, self.yt)),
            "metric": float((out.argmax(1) == self.yt).float().mean()),
        }


def mlp(seed=0):
    """The MLP BlobTask is meant for: 64 -> 512 -> 512 -> 10 (301k parameters)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)
    )


def tiny_gpt2(seed=0):
    """A 2-layer GPT-2 built from a config (needs transformers; no weights are downloaded)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=97, n_positions=16)
    return GPT2LMHeadModel(cfg)
