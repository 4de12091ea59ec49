"""The BERT family as users call it, with an attention mask (and segment ids): BERT,
DistilBERT and ALBERT from tiny configs, exported to cpu, mediatek and qualcomm (issue
13: "BERT-family encoders are one partition on cpu and mediatek"); and GPT-2 with its
padding mask, which it ANDs with its causal mask (written as float arithmetic on every
TFLite backend, so mediatek takes it).

- cpu and qualcomm take the whole model: one partition, every node. (qualcomm declines
  GatherND; the mask's index reads every element in order, so export writes it as a
  view, core/index_views.py: before, BERT ran in two qualcomm partitions around it.)
- mediatek takes everything after the inputs' first steps in one NeuroPilot partition.
  Left portable, each with its rule: the embedding lookups (GATHER: LiteRT's MediaTek
  plugin does not legalize it) and the int64 mask's cast to bool (NeuroPilot has no
  int64 tensor at run time); in GPT-2 also the int64 position ids' view. They run
  before the partition: nothing portable follows.
- Outputs equal eager within the backend's declared tolerance, on the padded example
  and on a batch with no padding.
- With a dynamic sequence length (what users export), still one partition with nothing
  portable after it, equal to eager at several lengths. The mask's constant positions
  are then stored at the largest length and narrowed at run time (GATHERs), so on
  mediatek the mask's index and AND join the portable front (docs/coverage.md).
"""

from __future__ import annotations

import pytest
import torch

import edgeport
from edgeport.backend import options_from_dict
from edgeport.testing import compare, registry_for
from models import MASKED_FAMILIES
from zoo_export import BACKENDS as ZOO_BACKENDS
from zoo_export import Exported, export_family

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

BACKENDS = {name: ZOO_BACKENDS[name] for name in ("cpu", "mediatek", "qualcomm")}
PAIRS = [(family, backend) for family in MASKED_FAMILIES for backend in BACKENDS]
# What mediatek leaves portable (rule text each reason must hold).
FRONT = {
    "aten.embedding.default": "(written as GATHER) is not legalized by the compiler plugin",
    "aten._to_copy.default": "dtype int64 at run time has no Neuron tensor type",
}
# ... and, in GPT-2, the int64 position ids' view before their lookup.
FRONT_ALSO = {"aten.view.default": "dtype int64 at run time has no Neuron tensor type"}


@pytest.fixture(scope="module", params=PAIRS, ids=[f"{f}-{b}" for f, b in PAIRS])
def exported(request) -> Exported:
    family, backend = request.param
    return export_family(MASKED_FAMILIES[family], backend)


def test_one_partition_and_nothing_portable_after_it(exported):
    steps = [(s.kind, s.backend) for s in exported.program.manifest.methods["forward"].steps]
    assert exported.fallbacks == []
    assert exported.partitions == 1
    assert steps[-1] == ("delegate", exported.backend), steps
    if exported.backend != "mediatek":
        assert exported.share == 1.0, exported.declined


def test_mediatek_leaves_only_the_lookups_and_the_masks_cast_each_with_its_rule(exported):
    if exported.backend != "mediatek":
        pytest.skip(f"{exported.backend} leaves nothing portable")
    assert set(FRONT) <= set(exported.declined) <= set(FRONT) | set(FRONT_ALSO), exported.declined
    for op, reason in exported.declined.items():
        assert {**FRONT, **FRONT_ALSO}[op] in reason, reason


def test_the_output_equals_eager_with_and_without_padding(exported):
    if not exported.can_run:
        pytest.skip(f"{exported.backend} compiles here but cannot run: {exported.why_not_run}")
    unpadded = (exported.example[0], torch.ones_like(exported.example[1]), *exported.example[2:])
    with torch.no_grad():
        for inputs in (exported.example, unpadded):
            error = compare(exported.program(*inputs), exported.module(*inputs))
            assert error <= exported.tolerance, f"relative error {error:.3g} > {exported.tolerance:g}"



@pytest.mark.parametrize("backend", ["cpu", "mediatek"])
def test_a_dynamic_sequence_length_stays_one_partition_and_equals_eager(backend):
    family = MASKED_FAMILIES["bert_masked"]
    module, example = family.module(), family.example()
    length = torch.export.Dim("length", min=2, max=32)
    program = edgeport.export(module, example, [backend], registry=registry_for(BACKENDS[backend]),
                              dynamic_shapes=tuple({1: length} for _ in example))
    steps = [(s.kind, s.backend) for s in program.manifest.methods["forward"].steps]
    assert sum(kind == "delegate" for kind, _ in steps) == 1 and steps[-1] == ("delegate", backend), steps
    tolerance = BACKENDS[backend].tolerance(options_from_dict(BACKENDS[backend], {}))
    with torch.no_grad():
        for size in (3, 8, 21):
            inputs = tuple(x.repeat(1, 3)[:, :size] for x in example)
            assert compare(program(*inputs), module(*inputs)) <= tolerance
