"""8- and 4-bit weights for the LLM decoder, quantized straight from its fp32 weights.

Both schemes (`int8-dynamic`, `int4-weight`) quantize activations per token at run time
inside the kernel and the weights ahead of time: `quantize_decoder` rounds every linear
weight once and the decoder's forward then reads each one through a dequantize op. One
short pass of a built-in text (calibration.py) finds each linear's outlier input
channels, which stay out of the per-token quantization, in float (`OutlierChannels`):
on SmolLM2 the per-token scale is what costs most agreement with fp32, not the weights.
`int8-dynamic` weights are symmetric per output channel; `int4-weight` groups of 32
inputs are asymmetric (a scale and a float offset each, as GGUF's Q4_1), the offsets
applied beside the kernel (see `QuantizedWeight`). The graph is the one PT2E's convert would produce:

    x ─ choose_qparams_affine ─ quantize_affine ─ dequantize_affine ─┐
    weight ints + scales ─ dequantize_per_channel | dequantize_affine ┴ linear
    (4-bit:  + linear(group sums of x, offsets))

which the cpu backend writes as one FULLY_CONNECTED with a float input and int8
per-channel (XNNPACK qd8-f32-qc8w) or int4 blockwise (qd8-f32-qb4w) weights, plus for
4 bits a SUM and a small float FULLY_CONNECTED, and for outlier channels a MUL and two
small float FULLY_CONNECTEDs (8 bits: the MUL merged with an RMSNorm's gamma before it,
and for the down projection a slice instead of the first FULLY_CONNECTED).

The token embedding is stored as int8 rows with a scale each, and read with a gather of
the rows and of their scales. When embedding and lm_head are tied (SmolLM2), that one
int8 table is also the lm_head weight: both read the same constant, so its 28M values
are stored once. It stays int8 under `int4-weight` too: TFLite's GATHER reads int8
tables but not 4-bit blockwise ones, so one shared copy has to be int8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..quantize.scheme import Scheme
from .calibration import Observed, run_text
from .rotation import rotate_decoder

INT8_WEIGHT_RANGE = (-127, 127)  # symmetric: zero point 0, as TFLite's int8 weights
INT4_WEIGHT_RANGE = (-8, 7)
ACTIVATION_RANGE = (-128, 127)  # per-token asymmetric int8, as XNNPACK's qd8 inputs
EPS = torch.finfo(torch.float32).eps
FP16_TINY = 2.0**-14  # LiteRT stores 4-bit group scales as float16: keep them normal


class OutlierChannels(nn.Module):
    """A linear's few input channels with outliers, kept out of its quantized product.

    The quantized product reads ``x * keep`` (those channels zeroed, so they no longer
    set the per-token scale); the float product ``(x @ pickᵀ) @ columnsᵀ`` adds them
    back: ``pick`` selects the channels (one-hot rows), ``columns`` are the weight's
    float columns for them. Two float FULLY_CONNECTEDs of ``channels`` width each.

    ``tail``: the channels are ``x``'s last ones (`quantize_decoder` moves the down
    projection's there), so a slice picks them: no ``pick`` weights, no FULLY_CONNECTED.

    When ``x`` is an RMSNorm's output, its gamma can be taken into ``keep`` and ``pick``
    (`fold_gamma`): both parts then read the norm before its gamma, and the graph runs
    one MUL by a constant where it ran two (gamma, then keep). Exact: ``keep`` is 0 or 1
    and ``pick``'s rows one-hot.
    """

    def __init__(self, channels: torch.Tensor, columns: torch.Tensor, inputs: int, tail: bool = False) -> None:
        super().__init__()
        keep = torch.ones(inputs)
        keep[channels] = 0.0
        self.register_buffer("keep", keep)
        self.tail = len(channels) if tail else 0
        if tail and not torch.equal(channels, torch.arange(inputs - self.tail, inputs)):
            raise ValueError("tail outlier channels must be the input's last ones")
        self.register_buffer("pick", None if tail else F.one_hot(channels, inputs).float())
        self.register_buffer("columns", columns.contiguous())
        self.folds_gamma = False

    def fold_gamma(self, gamma: torch.Tensor) -> None:
        """Take the gamma of the RMSNorm that feeds ``x`` in: from now on ``x`` is the
        norm's output before its gamma (`reads_norm_before_gamma`)."""
        self.keep = self.keep * gamma
        self.pick = self.pick * gamma
        self.folds_gamma = True

    def quantized_part(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.keep

    def float_part(self, x: torch.Tensor) -> torch.Tensor:
        picked = x[..., -self.tail :] if self.tail else F.linear(x, self.pick)
        return F.linear(picked, self.columns)


class QuantizedWeight(nn.Module):
    """A 2-d weight as integers (int8 storage) and scales: one scale per row (``group``
    None, 8 bits, symmetric) or per ``group`` consecutive inputs of a row (4 bits).

    4-bit groups are asymmetric, as GGUF's Q4_1: each group is ``scale * (q - 8) +
    offset`` with its own float ``offset`` (the group's minimum plus 8 steps), which
    XNNPACK's blockwise INT4 cannot hold (one zero point for the whole tensor). So the
    offsets are applied beside the kernel: ``x @ Wᵀ = x @ (scale·(q - 8))ᵀ +
    group_sums(x) @ offsetᵀ``, a float FULLY_CONNECTED over the ``in / group`` sums of
    each row's groups of inputs, 1/``group`` of the main product. For weights that came
    from a Q4_1 file (SmolLM2's), this grid is the file's own: the rounding is exact.
    """

    def __init__(self, values: torch.Tensor, scale: torch.Tensor, group: int | None,
                 offset: torch.Tensor | None = None) -> None:
        super().__init__()
        self.group = group
        self.register_buffer("values", values)
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", torch.zeros(scale.shape, dtype=torch.int8))
        self.register_buffer("offset", offset)
        self.outliers: OutlierChannels | None = None

    @classmethod
    def of(cls, weight: torch.Tensor, bits: int, group: int | None = None) -> "QuantizedWeight":
        """``weight`` (out, in) rounded to ``bits`` (8 per row, or 4 in groups of ``group``)."""
        w = weight.detach().float()
        qmin, qmax = INT8_WEIGHT_RANGE if bits == 8 else INT4_WEIGHT_RANGE
        if group is None:
            scale = w.abs().amax(dim=1).clamp(min=EPS) / qmax
            values = torch.round(w / scale[:, None])
            return cls(values.clamp(qmin, qmax).to(torch.int8), scale, group)
        blocks = w.reshape(w.shape[0], -1, group)
        low = blocks.amin(dim=2)
        scale = ((blocks.amax(dim=2) - low) / (qmax - qmin)).clamp(min=FP16_TINY).half().float()
        steps = torch.round((blocks - low[..., None]) / scale[..., None]).clamp(0, qmax - qmin)
        values = (steps + qmin).reshape(w.shape)
        return cls(values.to(torch.int8), scale, group, offset=low - qmin * scale)

    @classmethod
    def blank(cls, weight: torch.Tensor, group: int | None = None) -> "QuantizedWeight":
        """Zeros shaped as ``weight`` quantized: for a decoder that is only traced."""
        rows, cols = weight.shape
        if group is None:
            return cls(torch.zeros(rows, cols, dtype=torch.int8), torch.ones(rows), group)
        return cls(torch.zeros(rows, cols, dtype=torch.int8), torch.ones(rows, cols // group), group,
                   offset=torch.zeros(rows, cols // group))

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    def split_outliers(self, channels: torch.Tensor, weight: torch.Tensor, tail: bool = False) -> None:
        """Keep input ``channels`` out of the quantized product, read in float from
        ``weight`` (the float weight: less its group offsets, which cover every channel);
        ``tail``: they are the last ones (`OutlierChannels`)."""
        if self.offset is not None:
            weight = weight - self.offset.repeat_interleave(self.group, dim=1)
        self.outliers = OutlierChannels(channels, weight[:, channels], weight.shape[1], tail)

    @property
    def stored_bytes(self) -> int:
        """Bytes the weight takes in the program: 4-bit values pack two to a byte; group
        scales are float16; row scales, group offsets and outlier parts float32."""
        if self.group is None:
            size = self.values.numel() + 4 * self.scale.numel()
        else:
            size = self.values.numel() // 2 + 2 * self.scale.numel() + 4 * self.offset.numel()
        if self.outliers is None:
            return size
        return size + 4 * sum(b.numel() for b in self.outliers.buffers() if b is not None)

    def dequantized(self) -> torch.Tensor:
        """The float weight without its group offsets, as a dequantize op of the constant
        integers (in a graph)."""
        if self.group is None:
            return torch.ops.quantized_decomposed.dequantize_per_channel(
                self.values, self.scale, self.zero_point, 0, *INT8_WEIGHT_RANGE, torch.int8)
        return torch.ops.torchao.dequantize_affine(
            self.values, [1, self.group], self.scale, self.zero_point, torch.int8, *INT4_WEIGHT_RANGE)


Weight = torch.Tensor | QuantizedWeight


def linear(x: torch.Tensor, weight: Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, with ``x`` quantized per token at run time when the weight is quantized."""
    if isinstance(weight, Observed):
        weight.see(x)
        weight = weight.weight
    if not isinstance(weight, QuantizedWeight):
        return F.linear(x, weight, bias)
    outliers = weight.outliers
    out = F.linear(_per_token(x if outliers is None else outliers.quantized_part(x)), weight.dequantized(), bias)
    if weight.offset is not None:
        group_sums = x.reshape(*x.shape[:-1], -1, weight.group).sum(-1)  # float: exact
        out = out + F.linear(group_sums, weight.offset)
    return out if outliers is None else out + outliers.float_part(x)


def reads_norm_before_gamma(weight: Weight) -> bool:
    """Whether the linear of ``weight`` takes its RMSNorm's gamma in (`OutlierChannels.fold_gamma`)."""
    return isinstance(weight, QuantizedWeight) and weight.outliers is not None and weight.outliers.folds_gamma


def embedding(tokens: torch.Tensor, table: Weight) -> torch.Tensor:
    """The rows of ``table`` for ``tokens``: gathered as int8 and scaled when quantized."""
    if isinstance(table, Observed):
        table = table.weight
    if isinstance(table, QuantizedWeight):
        rows = F.embedding(tokens, table.values).to(torch.float32)
        return rows * F.embedding(tokens, table.scale.unsqueeze(1))
    return F.embedding(tokens, table)


def _per_token(x: torch.Tensor) -> torch.Tensor:
    """x through an asymmetric int8 round trip with a scale per row (the kernel does this
    itself on the float input; the graph says so)."""
    ops = torch.ops.torchao
    block = [1] * (x.dim() - 1) + [x.shape[-1]]
    scale, zero_point = ops.choose_qparams_affine(x, "ASYMMETRIC", block, torch.int8, *ACTIVATION_RANGE, EPS,
                                                  torch.float32, torch.int8)
    q = ops.quantize_affine(x, block, scale, zero_point, torch.int8, *ACTIVATION_RANGE)
    return ops.dequantize_affine(q, block, scale, zero_point, torch.int8, *ACTIVATION_RANGE)


LINEARS = ("qkv", "o", "gate_up", "down")  # a layer's linear weights
OUTLIER_CHANNELS = 8  # per linear, kept in float: more gains nothing on SmolLM2 (32 measured)
# Which linears keep outlier channels, by weight bits. Each costs small operators per token
# (a float FULLY_CONNECTED of the channels, one of their columns, an ADD; and a MUL or one
# fewer: `OutlierChannels.fold_gamma`). 8-bit programs take them everywhere but the
# attention output `o`, whose per-token rounding costs least (98.5% alone, bench/README.md
# "Where edgeport's loss came from"; without its split the agreement stays 94.3%, decode
# about 4% faster); 4-bit ones where they pay most (qkv, down and the head: all five kinds
# cost +45%, these about half).
OUTLIER_LINEARS = {8: ("qkv", "gate_up", "down", "lm_head"), 4: ("qkv", "down", "lm_head")}
# With the residual stream rotated (rotation.py) only the down projection's input, which no
# offline rotation reaches, keeps outlier channels: one split per layer instead of four.
ROTATED_OUTLIER_LINEARS = ("down",)


def quantize_decoder(decoder: nn.Module, scheme: Scheme, *, calibration: list[int] | None = None,
                     traced_only: bool = False, rotate: bool = False) -> None:
    """Replace the decoder's linear weights (and its embedding, and an untied lm_head)
    with `QuantizedWeight`s for ``scheme``, in place.

    ``calibration``: token ids (`calibration.TEXT`) run through the float decoder first,
    to find the `OUTLIER_CHANNELS` largest input channels of the `OUTLIER_LINEARS`, which
    then stay out of their quantized product (`OutlierChannels`); None quantizes every
    channel.
    ``traced_only``: the decoder is a prototype whose weights are never read, so they are
    not rounded, just shaped (with outlier parts when ``calibration`` is given).
    ``rotate`` (8-bit weights only: a rotation would move 4-bit weights off the Q4_1 grid
    they hold): rotate the residual stream first (`rotation.rotate_decoder`), and keep
    outlier channels only in `ROTATED_OUTLIER_LINEARS`.
    """
    from ..quantize.flow import quant_ops

    quant_ops()  # registers the quantize/dequantize ops the forward calls
    outlier_linears = OUTLIER_LINEARS[scheme.weight_bits]
    if rotate and scheme.weight_bits == 8:
        rotate_decoder(decoder, traced_only=traced_only)
        outlier_linears = ROTATED_OUTLIER_LINEARS
    slots = [(layer, name) for layer in decoder.layers for name in LINEARS] + [(decoder, "embed")]
    slots += [(decoder, "lm_head")] if decoder.lm_head is not None else []
    head = "lm_head" if decoder.lm_head is not None else "embed"  # the slot the logits read
    split = {head if name == "lm_head" else name for name in outlier_linears}
    observed = [(module, name) for module, name in slots if name in split] if calibration is not None else []
    # 8-bit rows hold any order of inputs: the down projection's outlier channels can be moved last
    tail = scheme.weight_bits == 8 and "down" in split
    if observed and not traced_only:
        for module, name in observed:
            _replace(module, name, Observed(getattr(module, name)))
        run_text(decoder, calibration)
        if tail:
            for layer in decoder.layers:
                _move_down_outliers_last(layer)
    with torch.no_grad():
        for module, name in slots:
            weight = getattr(module, name)
            peak = weight.peak if isinstance(weight, Observed) else None
            weight = weight.weight if isinstance(weight, Observed) else weight
            # the embedding is read by GATHER: int8 rows (see above), also when it is the lm_head
            bits, group = (8, None) if name == "embed" else (scheme.weight_bits, scheme.group_size)
            in_tail = tail and name == "down"
            if traced_only:
                quantized = QuantizedWeight.blank(weight, group)
                order = torch.arange(weight.shape[1]).float()  # the largest peaks last or first
                peak = (order if in_tail else order.flip(0)) if (module, name) in observed else None
            else:
                quantized = QuantizedWeight.of(weight, bits, group)
            if peak is not None:
                quantized.split_outliers(_outlier_channels(peak, in_tail), weight.float(), in_tail)
                gamma = _norm_gamma(decoder, module, name)
                if gamma is not None and quantized.offset is None:  # 4-bit group sums read the gamma'd input
                    quantized.outliers.fold_gamma(gamma.detach().float())
            _replace(module, name, quantized)


def _move_down_outliers_last(layer: nn.Module) -> None:
    """Reorder the MLP's hidden channels (gate and up rows, down columns: the layer
    computes the same) so the down projection's `OUTLIER_CHANNELS` largest input channels
    come last, in the order they had; a slice then picks them (`OutlierChannels` tail)."""
    gate_up, down = layer.gate_up, layer.down  # `Observed`: the float weights and input peaks
    hidden = down.peak.numel()
    last = down.peak.topk(OUTLIER_CHANNELS).indices.sort().values
    rest = torch.ones(hidden, dtype=torch.bool)
    rest[last] = False
    order = torch.cat([torch.arange(hidden)[rest], last])
    gate_up_weight = gate_up.weight if isinstance(gate_up, Observed) else gate_up
    with torch.no_grad():
        gate_up_weight.data = gate_up_weight.data[torch.cat([order, hidden + order])]
        down.weight.data = down.weight.data[:, order]
    down.peak = down.peak[order]


def _outlier_channels(peak: torch.Tensor, in_tail: bool) -> torch.Tensor:
    """The `OUTLIER_CHANNELS` input channels of largest peak, ascending; the last ones
    where `_move_down_outliers_last` put them (``in_tail``): asking the peaks again could
    pick other channels among equal peaks (a silent MLP channel's are all 0)."""
    if in_tail:
        return torch.arange(peak.numel() - OUTLIER_CHANNELS, peak.numel())
    return peak.topk(OUTLIER_CHANNELS).indices.sort().values


def _norm_gamma(decoder: nn.Module, module: nn.Module, name: str) -> torch.Tensor | None:
    """The gamma of the RMSNorm whose output is the input of slot ``name`` of ``module``,
    if that linear reads the norm directly (model.py), else None."""
    if name in ("qkv", "gate_up"):
        return module.attn_norm if name == "qkv" else module.mlp_norm
    if module is decoder and name in ("embed", "lm_head") and decoder.head_mix is None:
        return decoder.norm  # the head (a rotated decoder mixes the norm's output first)
    return None


def _replace(module: nn.Module, name: str, weight: QuantizedWeight) -> None:
    delattr(module, name)  # a parameter's slot takes only parameters
    setattr(module, name, weight)


def weight_bytes(decoder: nn.Module) -> int:
    """Bytes of the decoder's weights as the program stores them (each tensor once)."""
    quantized = sum(m.stored_bytes for m in decoder.modules() if isinstance(m, QuantizedWeight))
    return quantized + sum(p.numel() * p.element_size() for p in decoder.parameters())
