"""The four example models on the mediatek backend: lowered whole or with a remainder
whose every node says which NeuroPilot rule kept it off, and matching eager."""

from __future__ import annotations


import pytest
import torch

import edgeport
from edgeport.backends.mediatek import MediatekBackend
from edgeport.testing import compare, registry_for
from example_models import load_example


# What each model leaves to portable torch, by op: the plugin does not legalize GATHER
# (the embeddings). (Position ids and the rotary tables' slices are folded to constants
# at export; repeat_interleave's rank-5 expand is written at rank 4 (core/permute_rank.py).
# Layer norm, RMSNorm's x.pow(2) and the rotary embedding's neg are written as MULs,
# which the plugin takes.)
REMAINDER = {
    "mobilenet_v2": set(),
    "resnet18": set(),
    "transformer_encoder": {"aten.embedding.default"},
    "tiny_llama": {"aten.embedding.default"},
}  # fmt: skip
# Why, by op: every remaining node carries its rule.
REASONS = {
    "aten.embedding.default": ("(written as GATHER) is not legalized", "a constant"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REMAINDER))
def test_example_lowers_with_an_explained_remainder_and_matches_eager(name):
    model, inputs = load_example(name)
    program = edgeport.export(model, inputs, ["mediatek"], registry=registry_for(MediatekBackend()))
    left = [n for n in program.report()["nodes"] if n["backend"] != "mediatek"]
    assert {n["op"] for n in left} == REMAINDER[name]
    unexplained = {n["name"]: n["reasons"].get("mediatek") for n in left
                   if not any(w in (n["reasons"].get("mediatek") or "") for w in REASONS[n["op"]])}
    assert unexplained == {}
    with torch.no_grad():
        assert compare(program(*inputs), model(*inputs)) <= 1e-4
    for artifact in program.manifest.artifacts.values():
        assert artifact.backend == "mediatek" and artifact.metadata["soc"] == "MT6989"
