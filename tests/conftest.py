import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests import torch_backend, the test-only plugin

from torch_backend import TorchOpsBackend, registry_with  # noqa: E402


@pytest.fixture
def torchops():
    """A fresh test backend claiming relu/add/mul, in a registry of its own."""
    backend = TorchOpsBackend()
    return backend, registry_with(backend)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
