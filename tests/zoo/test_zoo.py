"""The model zoo: thirteen Hugging Face architectures nobody here wrote, each exported to
every backend that compiles here, held to eager PyTorch and to a delegated-share floor.

Each (family, backend) pair is exported once per run (a module-scoped fixture), then:
no partition the backend accepted fell back to portable torch (a compile that fails is a
bug, not a decline), the program's output equals eager within the backend's declared
tolerance (`Backend.tolerance`) where the backend runs here, and the share of compute
nodes the backend took is at least the floor below.

The floors are the shares measured when the zoo was written, rounded down; raise them as
coverage grows (`python tests/zoo/shares.py` prints the table, docs/coverage.md keeps it).
"""

from __future__ import annotations

import pytest
import torch

from models import FAMILIES
from zoo_export import BACKENDS, Exported, export_family

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

# family -> backend -> the least share of compute nodes the backend must take. What is
# left portable, and why, is in docs/coverage.md.
FLOORS = {
    "bert":            {"cpu": 1.00, "qualcomm": 1.00, "mediatek": 0.98, "coreml": 1.00},
    "gpt2":            {"cpu": 1.00, "qualcomm": 1.00, "mediatek": 0.97, "coreml": 1.00},
    "llama":           {"cpu": 1.00, "qualcomm": 1.00, "mediatek": 0.99, "coreml": 1.00},
    "qwen2":           {"cpu": 1.00, "qualcomm": 1.00, "mediatek": 0.99, "coreml": 1.00},
    "t5_encoder":      {"cpu": 1.00, "qualcomm": 1.00, "mediatek": 0.98, "coreml": 1.00},
    "vit":             {"cpu": 1.00, "qualcomm": 1.00, "mediatek": 1.00, "coreml": 1.00},
    "swin":            {"cpu": 1.00, "qualcomm": 1.00, "mediatek": 1.00, "coreml": 1.00},
    "convnext":        {"cpu": 1.00, "qualcomm": 1.00, "mediatek": 1.00, "coreml": 1.00},
    "mobilevit":       {"cpu": 1.00, "qualcomm": 1.00, "mediatek": 1.00, "coreml": 1.00},
    "whisper_encoder": {"cpu": 1.00, "qualcomm": 1.00, "mediatek": 1.00, "coreml": 1.00},
    "wav2vec2":        {"cpu": 1.00, "qualcomm": 1.00, "mediatek": 1.00, "coreml": 1.00},
    "clip_vision":     {"cpu": 1.00, "qualcomm": 1.00, "mediatek": 1.00, "coreml": 1.00},
    "clip_text":       {"cpu": 1.00, "qualcomm": 1.00, "mediatek": 0.96, "coreml": 1.00},
}
PAIRS = [(family, backend) for family in FAMILIES for backend in BACKENDS]


def test_every_family_has_a_floor_on_every_backend():
    assert {(f, b) for f, floors in FLOORS.items() for b in floors} == set(PAIRS)


@pytest.fixture(scope="module", params=PAIRS, ids=[f"{f}-{b}" for f, b in PAIRS])
def exported(request) -> Exported:
    family, backend = request.param
    return export_family(FAMILIES[family], backend)


def test_no_partition_the_backend_accepted_fell_back(exported):
    assert exported.fallbacks == []


def test_the_delegated_share_is_at_least_the_floor(exported):
    floor = FLOORS[exported.family][exported.backend]
    assert exported.share >= floor, f"{exported.share:.3f} < {floor}; left portable: {exported.declined}"


def test_the_output_equals_eager_within_the_backend_tolerance(exported):
    if not exported.can_run:
        pytest.skip(f"{exported.backend} compiles here but cannot run: {exported.why_not_run}")
    with torch.no_grad():
        error = exported.error()
    assert error <= exported.tolerance, f"relative error {error:.3g} > {exported.tolerance:g}"
