"""The BERT family as users call it, with an attention mask (and segment ids): BERT,
DistilBERT and ALBERT from tiny configs, exported to cpu and mediatek (issue 13: "BERT-
family encoders are one partition on cpu and mediatek").

- cpu takes the whole model: one partition, every node.
- mediatek takes everything after the inputs' first steps in one NeuroPilot partition.
  Left portable, each with its rule: the embedding lookups (GATHER: LiteRT's MediaTek
  plugin does not legalize it) and the int64 mask's cast to bool (NeuroPilot has no
  int64 tensor at run time). They run before the partition: nothing portable follows.
- Outputs equal eager within the backend's declared tolerance, on the padded example
  and on a batch with no padding.
"""

from __future__ import annotations

import pytest
import torch

from edgeport.testing import compare
from models import MASKED_FAMILIES
from zoo_export import Exported, export_family

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

BACKENDS = ("cpu", "mediatek")
PAIRS = [(family, backend) for family in MASKED_FAMILIES for backend in BACKENDS]
# What mediatek leaves portable (rule text each reason must hold).
FRONT = {
    "aten.embedding.default": "(written as GATHER) is not legalized by the compiler plugin",
    "aten._to_copy.default": "dtype int64 at run time has no Neuron tensor type",
}


@pytest.fixture(scope="module", params=PAIRS, ids=[f"{f}-{b}" for f, b in PAIRS])
def exported(request) -> Exported:
    family, backend = request.param
    return export_family(MASKED_FAMILIES[family], backend)


def test_one_partition_and_nothing_portable_after_it(exported):
    steps = [(s.kind, s.backend) for s in exported.program.manifest.methods["forward"].steps]
    assert exported.fallbacks == []
    assert exported.partitions == 1
    assert steps[-1] == ("delegate", exported.backend), steps
    if exported.backend == "cpu":
        assert exported.share == 1.0, exported.declined


def test_mediatek_leaves_only_the_lookups_and_the_masks_cast_each_with_its_rule(exported):
    if exported.backend != "mediatek":
        pytest.skip("cpu leaves nothing portable")
    assert set(exported.declined) == set(FRONT), exported.declined
    for op, reason in exported.declined.items():
        assert FRONT[op] in reason, reason


def test_the_output_equals_eager_with_and_without_padding(exported):
    if not exported.can_run:
        pytest.skip(f"{exported.backend} compiles here but cannot run: {exported.why_not_run}")
    unpadded = (exported.example[0], torch.ones_like(exported.example[1]), *exported.example[2:])
    with torch.no_grad():
        for inputs in (exported.example, unpadded):
            error = compare(exported.program(*inputs), exported.module(*inputs))
            assert error <= exported.tolerance, f"relative error {error:.3g} > {exported.tolerance:g}"

