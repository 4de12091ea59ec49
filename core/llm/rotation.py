"""Rotating the decoder's residual stream (QuaRot / SpinQuant style), folded into its weights.

Per-token int8 activations (XNNPACK's qd8) lose most on a few input channels far larger
than the rest: one scale per token, set by them, rounds every other channel coarsely.
An orthogonal ``Q`` spreads those channels over all of them. RMSNorm commutes with it
(``‖x·Q‖ = ‖x‖``) once its gamma is folded into the linears that read it, so the whole
residual stream can live rotated, at no run-time cost:

    embedding rows  E → E·Q            readers (qkv, gate_up)  W → W·diag(γ)·Q
    writers (o, down)  W → Qᵀ·W        v rows / o columns: a per-head rotation ``H`` too

and every norm's gamma becomes 1. The tied embedding stays one table (``E·Q``) that the
head reads too; the final norm's gamma then needs ``Qᵀ·diag(γ)·Q`` before the head, one
small float ``hidden × hidden`` matrix (`Decoder.head_mix`). The down projection's input
(after SiLU·up) cannot be rotated offline. The float program computes the same function
(to fp32 rounding); only the quantized ones gain.

``Q`` is a Hadamard matrix with random signs when the hidden size allows one (12^a·2^b:
SmolLM2's 576 = 12·12·4), else a random orthogonal matrix; both come from a fixed seed,
so an export is reproducible and downloads nothing.
"""

from __future__ import annotations

import torch
from torch import nn

SEED = 0


def orthogonal(n: int, seed: int = SEED) -> torch.Tensor:
    """A deterministic n x n orthogonal matrix: a signed, normalized Hadamard matrix if one
    of order n is built here, else the Q of a seeded Gaussian's QR."""
    generator = torch.Generator().manual_seed(seed)
    hadamard = _hadamard(n)
    if hadamard is None:
        q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
        return q * torch.sign(torch.diagonal(r))
    signs = torch.randint(0, 2, (n,), generator=generator, dtype=torch.float64) * 2 - 1
    return signs[:, None] * hadamard / n**0.5


def _hadamard(n: int) -> torch.Tensor | None:
    """A ±1 Hadamard matrix of order n = 12^a·2^b (Kronecker products of Paley's order 12
    and Sylvester's order 2), or None."""
    for twelves in range(4):
        rest, remainder = divmod(n, 12**twelves)
        if remainder == 0 and rest & (rest - 1) == 0:
            h = torch.ones(1, 1, dtype=torch.float64)
            for _ in range(twelves):
                h = torch.kron(h, _paley12())
            sylvester = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
            while h.shape[0] < n:
                h = torch.kron(h, sylvester)
            return h
    return None


def _paley12() -> torch.Tensor:
    """Paley's construction I for q = 11: the Hadamard matrix of order 12."""
    q = 11
    squares = {(i * i) % q for i in range(1, q)}
    chi = [0] + [1 if i in squares else -1 for i in range(1, q)]
    jacobsthal = torch.tensor([[chi[(j - i) % q] for j in range(q)] for i in range(q)], dtype=torch.float64)
    s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, jacobsthal
    return s + torch.eye(q + 1, dtype=torch.float64)


def rotate_decoder(decoder: nn.Module, seed: int = SEED, *, traced_only: bool = False) -> None:
    """Rotate ``decoder``'s residual stream by `orthogonal` (and each head's values by a
    per-head one), folding every RMSNorm gamma into the linears that read it, in place.

    The decoder's float function is unchanged (up to fp32 rounding); its weights and
    activations are what quantization then sees. ``traced_only``: a prototype whose
    weights are never read only gets the head's matrix, shaped."""
    c = decoder.config
    if traced_only:
        if decoder.lm_head is None:
            decoder.head_mix = torch.zeros(c.hidden_size, c.hidden_size)
        return
    q = orthogonal(c.hidden_size, seed)
    head = orthogonal(c.head_dim, seed + 1)
    v_start = (c.heads + c.kv_heads) * c.head_dim
    with torch.no_grad():
        _set(decoder, "embed", decoder.embed.double() @ q)
        for layer in decoder.layers:
            qkv = layer.qkv.double() * layer.attn_norm.double() @ q
            v_rows = qkv[v_start:].reshape(c.kv_heads, c.head_dim, -1)
            qkv[v_start:] = (head.T @ v_rows).reshape(-1, qkv.shape[1])
            _set(layer, "qkv", qkv)
            if layer.qkv_bias is not None:  # Qwen2: the values' bias turns with them
                bias = layer.qkv_bias.double()
                bias[v_start:] = (bias[v_start:].reshape(c.kv_heads, c.head_dim) @ head).reshape(-1)
                _set(layer, "qkv_bias", bias)
            o_columns = layer.o.double().reshape(-1, c.heads, c.head_dim) @ head
            _set(layer, "o", q.T @ o_columns.reshape(layer.o.shape))
            _set(layer, "gate_up", layer.gate_up.double() * layer.mlp_norm.double() @ q)
            _set(layer, "down", q.T @ layer.down.double())
            layer.attn_norm.data = torch.ones_like(layer.attn_norm)
            layer.mlp_norm.data = torch.ones_like(layer.mlp_norm)
        gamma = decoder.norm.double()
        if decoder.lm_head is None:  # tied: the head reads E·Q, so γ goes in a matrix before it
            decoder.head_mix = (q.T * gamma @ q).float()
        else:
            _set(decoder, "lm_head", decoder.lm_head.double() * gamma @ q)
        decoder.norm.data = torch.ones_like(decoder.norm)


def _set(module: nn.Module, name: str, value: torch.Tensor) -> None:
    getattr(module, name).data = value.float().contiguous()
