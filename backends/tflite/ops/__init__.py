"""Op lowerings, one module per family; importing this package fills the lowering table."""

from . import attention, conv, elementwise, matmul, reduce, shape  # noqa: F401
from . import arith, index, order  # noqa: F401
from . import int8, quantize  # noqa: F401  (int8 forms of the lowerings above; quantize/dequantize)
