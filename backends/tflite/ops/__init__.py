"""Op lowerings, one module per family; importing this package fills the lowering table."""

from . import attention, conv, elementwise, matmul, reduce, shape  # noqa: F401
