"""GPTQ rounding of per-channel int8 weights: each column's rounding error pushed onto the
columns not yet rounded, weighted by how the linear's inputs correlate.

Rounding every weight to its nearest int8 step (`QuantizedWeight.of`) minimises the error
of each weight, not of the linear's output. GPTQ (Frantar et al., 2022) rounds one input
column at a time and corrects the remaining columns so that ``x·Wᵀ`` stays closest on the
inputs it saw: the inputs' second moment ``H = Σ xᵀx``, gathered on the built-in
calibration text (calibration.py, never a test passage), says how. The grid (one scale
per output row, the row's largest |w| / 127) and so the kernels are unchanged; only which
integer each weight gets.
"""

from __future__ import annotations

import torch

DAMPING = 0.01  # of H's mean diagonal, added to it: the text is short, H is near singular
BLOCK = 128  # columns rounded together before the rest are updated (lazy batch updates)


def round_int8_rows(weight: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor,
                    qmax: int = 127) -> torch.Tensor:
    """The int8 values (as float) of ``weight`` (out, in) on ``scale`` (one per row),
    rounded column by column with GPTQ's error feedback under ``hessian`` (in, in)."""
    w = weight.double().clone()
    h = hessian.double().clone()
    dead = torch.diagonal(h) == 0  # channels the text never excited: their weights do not matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += DAMPING * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    s = scale.double()[:, None]
    values = torch.zeros_like(w)
    for start in range(0, w.shape[1], BLOCK):
        end = min(start + BLOCK, w.shape[1])
        block, errors = w[:, start:end].clone(), torch.zeros(w.shape[0], end - start, dtype=w.dtype)
        for i in range(end - start):
            column, pivot = block[:, i : i + 1], inverse[start + i, start + i]
            q = torch.round(column / s).clamp(-qmax, qmax)
            values[:, start + i : start + i + 1] = q
            error = (column - q * s) / pivot
            block[:, i:] -= error @ inverse[start + i : start + i + 1, start + i : end]
            errors[:, i : i + 1] = error
        w[:, end:] -= errors @ inverse[start:end, end:]
    return values.float()
