"""The example models of examples/models.py, loaded by path exactly as the CLI loads a
SPEC (not registered in sys.modules). Every test that needs them imports this."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch

MODELS_PATH = Path(__file__).resolve().parents[1] / "examples" / "models.py"


def load_models() -> ModuleType:
    spec = importlib.util.spec_from_file_location("edgeport_example_models", MODELS_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_example(name: str) -> tuple[torch.nn.Module, tuple]:
    """(model, example inputs) from the factory called ``name``."""
    return load_models().FACTORIES[name]()
