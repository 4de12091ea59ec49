"""Fixtures for the qualcomm backend tests; helpers are in qualcomm_helpers.py.

Tests that compile or run need onnxruntime + onnxruntime-qnn; they use the `backend`
fixture, which skips them where the toolchain is missing.
"""

import pytest

from edgeport.backends.qualcomm import QualcommBackend


@pytest.fixture(scope="session")
def backend() -> QualcommBackend:
    """The backend under test, its QNN toolchain present (else the test is skipped)."""
    pytest.importorskip("onnxruntime_qnn")
    pytest.importorskip("onnxscript")
    return QualcommBackend()
