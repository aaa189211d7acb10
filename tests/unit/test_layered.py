"""Layered, the versioned mapping behind the DNS zone, the node view's ports and the rendered rules:
every version reads as the plain dict it stands for, an older version is never changed by a newer
one, and a version that only replaced values iterates in its base's order (the rules' order)."""

from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyproxy.layered import Layered

KEYS = st.sampled_from([f"k{i}" for i in range(12)])
STEPS = st.lists(st.dictionaries(KEYS, st.one_of(st.none(), st.integers(0, 9)), max_size=4), max_size=25)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(KEYS, st.integers(0, 9)), STEPS, st.booleans())
def test_every_version_reads_as_its_dict_and_old_versions_stand(base, steps, small):
    with patch.object(Layered, "TOP", 2 if small else Layered.TOP), patch.object(Layered, "MID", 3 if small else Layered.MID):
        versions = [(Layered(dict(base)), dict(base), list(base))]
        for changes in steps:
            layered, model, kept = versions[-1]
            model = {**model, **changes}
            model = {k: v for k, v in model.items() if v is not None}
            kept = [k for k in kept if changes.get(k, 0) is not None]  # a key removed and added again is new
            versions.append((layered.updated(changes), model, kept))
        for layered, model, kept in versions:
            assert dict(layered.items()) == model and layered == model and len(layered) == len(model)
            assert all(layered[k] == v and k in layered for k, v in model.items())
            assert all(k not in layered and layered.get(k) is None for k in ("k99", *(k for k in base if k not in model)))
            with pytest.raises(KeyError):
                layered["k99"]
            assert [k for k in layered if k in kept] == kept, "the base's keys keep their order"
