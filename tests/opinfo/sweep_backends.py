"""The backends the OpInfo sweep lowers to: those that compile and run here."""

from edgeport.backends.cpu import CpuBackend
from edgeport.backends.mediatek import MediatekBackend
from edgeport.backends.qualcomm import QualcommBackend

SWEPT_BACKENDS = {b.name: b for b in (CpuBackend(), QualcommBackend(), MediatekBackend())}
