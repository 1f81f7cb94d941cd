"""scripts/gpu_check.py's test stage, on stand-in test files: counts of passed / failed / skipped
read from pytest's output, and a budget that runs out says which file it stopped part way and
which it never started (the remote run's summary is all a GPU session gets back)."""

import importlib.util
import os
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "scripts", "gpu_check.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(tmp_path, name, body):
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return str(p)


def test_stage_tests_counts_and_budget(tmp_path, monkeypatch):
    gc = _gpu_check()
    mixed = _write(
        tmp_path,
        "test_mixed.py",
        """
        import pytest
        def test_a(): pass
        def test_b(): pass
        def test_c(): assert 1 == 2
        @pytest.mark.skip(reason="stand-in")
        def test_d(): pass
        """,
    )
    slow = _write(
        tmp_path,
        "test_slow.py",
        """
        import time
        def test_first(): pass
        def test_sleeps(): time.sleep(120)
        """,
    )
    never = _write(tmp_path, "test_never.py", "def test_x(): pass\n")

    # one file at a time: the budget runs out in the second, the third never starts
    monkeypatch.setattr(gc, "test_workers", lambda gpu: 1)
    run = gc.Run(budget=600, out=None)
    run.env = {"pytest_timeout": "missing"}
    ok = gc.stage_tests(run, 25, gpu=False, files=[mixed, slow, never])
    assert not ok
    name, status, seconds, note = run.stages[-1]
    assert status == "FAIL"  # a failing test outranks the budget
    # test_first of the slow file ran before the budget stopped it
    assert note.startswith("3 passed, 1 failed, 0 errors, 1 skipped"), note
    assert "test_mixed.py::test_c" in note
    assert f"not run (budget): {slow} (stopped part way), {never}" in note
    assert seconds < 60

    # two at a time (the rehearsal on 2 cores): the short file finishes beside the hung one
    monkeypatch.setattr(gc, "test_workers", lambda gpu: 2)
    run = gc.Run(budget=600, out=None)
    run.env = {"pytest_timeout": "missing"}
    assert not gc.stage_tests(run, 15, gpu=False, files=[slow, never])
    _, status, _, note = run.stages[-1]
    assert status == "TIMEOUT" and note.startswith("2 passed, 0 failed"), note
    assert note.endswith(f"2 files at a time; not run (budget): {slow} (stopped part way)"), note
