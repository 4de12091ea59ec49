"""Developer tools: why a model was split the way it was, whether each delegated piece
computes the right numbers, and where the time goes.

- `render_program` — the placement report as a self-contained page (``edgeport explain --html``);
- `check_program` / `check_model` — each delegated partition against its torch reference,
  and the first op that diverges (``edgeport check``);
- `check_quantization` — a quantized program's SQNR per partition against its
  fake-quantized reference and the float model, and the first op losing more than a
  threshold, to below a floor (``edgeport check --quantize``), against the float model as
  `float_program` captures it;
- `time_runs` / `summarize_profile` — time per step and per backend, and the bytes that
  cross delegate boundaries (``edgeport run --profile``).

The checks need torch (they run torch references) and are imported on first use; the
rest runs where torch is not installed.
"""

from ..lazy import imported_on_first_use
from .html import render_html, render_program
from .profile import Profile, summarize_profile, time_runs

# name -> the module defining it, imported on first use (it imports torch)
_NEEDS_TORCH = {
    **dict.fromkeys(("CheckReport", "Divergence", "PartitionCheck", "check_model", "check_program"), ".check"),
    **dict.fromkeys(("QuantizationCheck", "check_quantization", "float_program"), ".quant_check"),
}


__getattr__ = imported_on_first_use(__name__, _NEEDS_TORCH)


__all__ = [
    "CheckReport",
    "Divergence",
    "PartitionCheck",
    "Profile",
    "QuantizationCheck",
    "check_model",
    "check_program",
    "check_quantization",
    "float_program",
    "render_html",
    "render_program",
    "summarize_profile",
    "time_runs",
]
