"""scripts/plant_bugs.py stays usable: every planted bug's target text is in its file exactly
once (a refactor that moves code must move the mutation with it, or the script would report
a bug as caught that was never planted)."""

import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mutations():
    spec = importlib.util.spec_from_file_location("plant_bugs", os.path.join(ROOT, "scripts", "plant_bugs.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["plant_bugs"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return [m for name in dir(mod) if name.endswith("MUTATIONS") for m in getattr(mod, name)]


MUTATIONS = _mutations()


def test_there_are_mutations_of_kernels_and_of_the_federated_layer():
    paths = {m.path for m in MUTATIONS}
    assert any(p.startswith("csrc/") for p in paths) and any(p.startswith("ferret_kernels/fl/") for p in paths)
    assert len({m.id for m in MUTATIONS}) == len(MUTATIONS)


@pytest.mark.parametrize("m", MUTATIONS, ids=lambda m: m.id)
def test_each_mutation_target_is_in_its_file_once(m):
    with open(os.path.join(ROOT, m.path)) as f:
        text = f.read()
    assert text.count(m.old) == 1, f"{m.id}: the text to mutate occurs {text.count(m.old)} times in {m.path}"
    assert m.new != m.old
