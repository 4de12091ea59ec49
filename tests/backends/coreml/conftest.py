"""Fixtures for the Core ML backend tests; helpers are in coreml_helpers.py."""

import pytest

from edgeport.backends.coreml import CoreMLBackend


@pytest.fixture(scope="session")
def backend() -> CoreMLBackend:
    """One backend for the session: its coremltools registry is built once."""
    return CoreMLBackend()
