"""``edgeport check --quantize``: where a quantized program loses precision against float.

`check` compares each delegated partition with its torch reference; for a quantized
program that reference is the fake-quantized graph, so it answers "does the backend
compute the quantized program?". The question users ask next is "where does
quantization cost accuracy?": that needs the float model too.

Every op of a quantized graph names the float graph's node it stands for (the
`FLOAT_NODE` entry of its "custom" meta, set before annotation and kept in program
files). The float model is captured as the export captured it and run once; then, per
delegated partition:

- SQNR of the backend's outputs against the fake-quantized reference and against float;
- for every op of the reference, in graph order: the SQNR (against float) of what it
  reads, after its inputs' dequantize, and of what it hands on, after its output's
  quantize/dequantize. The first op whose SQNR falls by more than `threshold_db` from
  its inputs' to its output's, to below `floor_db`, is named with its source line: the
  op quantization hurt. When no op is, a partition input that loses that much at its
  own quantize is named (`INPUT_QUANTIZE`): one beyond the range the calibration
  measured, clipped to it. Ops come first: an input quantized to 29.9 dB read by a
  linear with an outlier weight that ends at 17 dB named the input, not the linear.
  An op that would have stayed above the floor reading one of its inputs exact hands
  the blame to that input's producer (`_blame_what_it_reads`).

Why a floor: a drop alone also named healthy ops. Under a16w8 a model's inputs measure
~90-105 dB (16-bit), so its first 8-bit-weight op always "lost" 40-55 dB (the digits
CNN's first conv: 104.6 -> 49.5 dB on qualcomm), and was named in a healthy model; in a
broken one that op was named instead of the one where SQNR collapsed (51 -> 3 dB, two
ops on). MobileNetV2 int8 on cpu had eight hardtanhs "losing" 10.5-20.8 dB, to
44.5-48.5 dB. Healthy 8-bit ops end at 36 dB or more (digits CNN: 40-49 int8 on cpu,
46-51 a16w8 on qualcomm; MobileNetV2 int8, random weights and calibration: 36-65);
30 dB, an error of 3% RMS, is below all of them, and above what the ops quantization
really hurt ended at (exp over a wide range: 26.8; a linear with an outlier weight:
17.0).

SQNR = 10 log10(sum float^2 / sum (value - float)^2), in dB; inf when exact.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import operator
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch.export import ExportedProgram
from torch.fx import Node
from torch.fx.node import map_arg

from ..delegates import executable_of, load_step, run_label
from ..errors import InputError
from ..plugins import Registry, registry_or_default
from ..program import Program
from ..quantize.flow import FLOAT_NODE
from ..quantize.node_dtypes import is_quantization_node
from ..report import op_name, source_of
from ..support import DATA_MOVEMENT, QUANTIZE, SLICING, qualified_name
from .check import (_finite, _module, _start_values, _tensor, _torch_program, input_labels, require_ids_in_range,
                    require_references)
from .rounding import output_nodes, values_of

DEFAULT_THRESHOLD_DB = 10.0
DEFAULT_FLOOR_DB = 30.0
INPUT_QUANTIZE = "input, at its quantize"  # `OpDrop.op` when a partition input loses at its own quantize


@dataclass(frozen=True)
class OpDrop:
    """An op whose output's SQNR against float is `drop_db` below its inputs', at
    `output_db` below the floor.

    With `reader`, the loss shows in that op, which reads this one's quantized output:
    `output_db` is the reader's SQNR as it ran, `input_db` what it would have been
    reading this value exact (the whole-tensor SQNR of the value itself hid the loss)."""

    node: str
    op: str
    source: str
    module: str  # the innermost module that made it, as `Divergence.module`
    input_db: float
    output_db: float
    reader: str = ""
    # the share of the op's output beyond the range calibration measured for it, clipped
    # at its quantize, and that range: 0.0 and None where its output is not quantized per
    # tensor (`_FloatWalk.clipped`)
    clipped: float = 0.0
    calibrated_range: tuple[float, float] | None = None

    @property
    def drop_db(self) -> float:
        return self.input_db - self.output_db


@dataclass
class QuantizedPartition:
    partition: int
    backend: str
    vs_reference_db: float | None  # the backend against the fake-quantized reference (None: cannot run here)
    vs_float_db: float | None  # the backend against the float model
    reference_vs_float_db: float  # the scheme's own error: fake-quantized reference against float
    first_drop: OpDrop | None = None
    why: str = ""
    label: str = ""  # how it ran here, as `check` labels it: "cpu", "qualcomm: simulator"


@dataclass
class QuantizationCheck:
    method: str
    threshold_db: float
    floor_db: float
    partitions: list[QuantizedPartition] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return _finite(asdict(self))


def float_program(model: torch.nn.Module, example_inputs: tuple[Any, ...], backends: Sequence[str], *,
                  options: Mapping[str, Any] | None = None, registry: Registry | None = None) -> ExportedProgram:
    """The float model as `edgeport.export(model, example_inputs, backends, options=...)`
    captured it: what `check_quantization` compares with (the quantized graph names this
    program's nodes; `torch.export.export` alone decomposes differently)."""
    from ..api import resolve_backends
    from ..quantize.flow import capture_float

    selected, parsed = resolve_backends(list(backends), dict(options or {}), registry_or_default(registry))
    return capture_float(model, example_inputs, selected, parsed)


def sqnr_db(values: Sequence[Any], floats: Sequence[torch.Tensor]) -> float:
    """SQNR of `values` against `floats` over all of them, in dB."""
    signal = noise = 0.0
    for value, reference in zip(values, floats):
        value, reference = torch.as_tensor(_tensor(value)).double(), reference.detach().double()
        # an infinity both hold (a causal mask's -inf, added to float scores) is exact, and
        # no signal: counted, inf - inf made the SQNR -inf, and check named the mask's add
        same_infinity = (value == reference) & reference.isinf()
        reference, value = reference[~same_infinity], value[~same_infinity]
        signal += float((reference * reference).sum())
        noise += float(((value - reference) ** 2).sum())
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 and math.isfinite(noise) else -math.inf


def check_quantization(program: Program, float_program: ExportedProgram, inputs: Sequence[Any], *,
                       method: str | None = None, threshold_db: float = DEFAULT_THRESHOLD_DB,
                       floor_db: float = DEFAULT_FLOOR_DB, registry: Registry | None = None) -> QuantizationCheck:
    """SQNR per delegated partition of a quantized `program` against its fake-quantized
    reference and against `float_program` (the float model as export captured it), and
    each partition's first op losing more than `threshold_db`, to below `floor_db`."""
    threshold, floor = _decibels(threshold_db), _decibels(floor_db)
    if threshold is None or threshold <= 0:
        raise InputError(f"threshold_db is a drop in dB greater than 0, got {threshold_db!r}",
                         hint=f"e.g. the default, {DEFAULT_THRESHOLD_DB}")
    if floor is None:
        raise InputError(f"floor_db is an SQNR in dB, a finite number, got {floor_db!r}",
                         hint=f"e.g. the default, {DEFAULT_FLOOR_DB}; a high one (200) names any large drop")
    name = method or program.default_method
    plan = program.plan(name)
    require_references(plan, name)
    registry = registry_or_default(registry)
    values = _start_values(program, plan, inputs)  # checks the inputs before the float model runs on them
    labels = input_labels(plan)
    require_ids_in_range(float_program, [values[v] for v in plan.input_values], [labels[v] for v in plan.input_values])
    floats = values_of(float_program, list(inputs))
    float_of_value = dict(zip(plan.input_values, [_tensor(x) for x in inputs]))  # inputs are float on both sides
    result = QuantizationCheck(name, threshold, floor)
    for step in plan.steps:
        args = [values[v] for v in step.inputs]
        reference = _torch_program(program, step.program or step.reference)
        env = values_of(reference, args)
        walk = _FloatWalk(reference, env, floats, dict(zip(_user_inputs(reference), step.inputs)), float_of_value)
        outputs = [env[n.name] for n in output_nodes(reference)]
        if step.kind == "delegate":
            result.partitions.append(_check_partition(program, step, walk, args, outputs, registry, result))
        values.update(zip(step.outputs, outputs))
        for value, node in zip(step.outputs, output_nodes(reference)):
            counterpart = walk.float_of(node)
            if counterpart is not None:
                float_of_value[value] = counterpart
    return result


def _decibels(value: Any) -> float | None:
    """`value` as a finite float if it is a real number (numpy's too), else None (a bool,
    NaN, infinity, or an int too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _check_partition(program: Program, step: Any, walk: "_FloatWalk", args: list[Any], outputs: list[Any],
                     registry: Registry, check: QuantizationCheck) -> QuantizedPartition:
    strangers = walk.strangers()
    if strangers:  # another model's capture: its SQNRs would compare unrelated values
        raise InputError(f"the float program given is not this program's model: {len(strangers)} op(s) of partition "
                         f"{step.partition} have no counterpart in it (e.g. {', '.join(strangers[:3])})",
                         hint="pass the float model this program was exported from, as edgeport captured it: "
                              "edgeport.devtools.float_program(model, example_inputs, backends)")
    out_nodes = output_nodes(walk.reference)
    pairs = [(o, walk.float_of(n)) for o, n in zip(outputs, out_nodes)]
    pairs = [(o, f) for o, f in pairs if f is not None]
    if not pairs:  # an SQNR over nothing would read as inf, a perfect match
        raise InputError(f"no output of partition {step.partition} has a counterpart in the float program given",
                         hint="pass the float model as edgeport captured it: "
                              "edgeport.devtools.float_program(model, example_inputs, backends), not torch.export's")
    result = QuantizedPartition(step.partition, step.backend, None, None,
                                sqnr_db([o for o, _ in pairs], [f for _, f in pairs]))
    result.first_drop = walk.first_drop(check.threshold_db, check.floor_db)
    try:
        entry = registry.entry(step.backend)
        result.label = run_label(step.backend, entry.availability())
        if not entry.availability().can_run:
            result.why = entry.availability().why or f"{step.backend} cannot run here"
            return result
        loaded = load_step(program.manifest, program.files, step, entry.backend)
        actual = list(executable_of(loaded, step).run(args))
    except Exception as exc:  # report what the backend raised, go on with the others
        result.why = f"{type(exc).__name__}: {exc}"
        return result
    result.vs_reference_db = sqnr_db(actual, outputs)
    kept = [a for a, n in zip(actual, out_nodes) if walk.float_of(n) is not None]
    result.vs_float_db = sqnr_db(kept, [f for _, f in pairs])
    return result


class _FloatWalk:
    """A partition's fake-quantized values next to their float counterparts."""

    def __init__(self, reference: ExportedProgram, env: dict[str, Any], floats: dict[str, Any],
                 placeholder_value: dict[str, str], float_of_value: dict[str, Any]) -> None:
        self.reference, self.env, self.floats = reference, env, floats
        self.placeholder_value, self.float_of_value = placeholder_value, float_of_value
        self.user_inputs = set(_user_inputs(reference))

    def float_of(self, node: Node) -> torch.Tensor | None:
        """The float model's value that `node`'s value approximates, if known."""
        while is_quantization_node(node) and node.args and isinstance(node.args[0], Node):
            node = node.args[0]
        if node.op == "placeholder":
            return self.float_of_value.get(self.placeholder_value.get(node.name, ""))
        tag = node.meta.get("custom", {}).get(FLOAT_NODE)
        value = self.floats.get(tag) if tag else None
        if isinstance(value, (tuple, list)) and node.target is operator.getitem:
            value = value[node.args[1]]  # it carries its multi-output op's tag (a layer norm's)
        return value if isinstance(value, torch.Tensor) else None

    def strangers(self) -> list[str]:
        """The float ops this partition's ops name as their counterparts (the capture
        tagged each) that the float program does not have: it is another model's."""
        tags = (node.meta.get("custom", {}).get(FLOAT_NODE) for node in self.reference.graph.nodes)
        return [tag for tag in tags if tag and tag not in self.floats]

    def first_drop(self, threshold_db: float, floor_db: float) -> OpDrop | None:
        """The first op losing more than `threshold_db`, to below `floor_db`; if none,
        the first input that loses that much at its own quantize."""
        ops = (self._op_drop(node) for node in self.reference.graph.nodes)
        inputs = (self._input_drop(node) for node in self.reference.graph.nodes
                  if node.op == "placeholder" and node.name in self.user_inputs)
        for drop in itertools.chain(ops, inputs):
            if drop is not None and drop.drop_db > threshold_db and drop.output_db < floor_db:
                return drop if drop.op == INPUT_QUANTIZE else self.clipped(self._blame_what_it_reads(drop, floor_db))
        return None

    def clipped(self, drop: OpDrop) -> OpDrop:
        """`drop` with the share of its op's output that its quantize clips: values beyond
        the range calibration measured. A loss from rounding and one from a range too
        narrow for this input look alike in dB; the fix differs (more representative
        calibration data, not another scheme). An attention's output beyond its
        calibrated range on 0.8% of its values was named at 28.2 dB out, with no word why."""
        if drop.op == INPUT_QUANTIZE:  # an input: it says so already
            return drop
        node = _output_of(self._node(drop.node))
        chain = _quantize_chain(node)
        if not chain or qualified_name(chain[0]) != QUANTIZE or not isinstance(self.env.get(node.name), torch.Tensor):
            return drop
        scale, zero_point, qmin, qmax = chain[0].args[1:5]
        if not all(isinstance(a, numbers.Real) for a in (scale, zero_point, qmin, qmax)):
            return drop
        value = self.env[node.name].detach().double()
        low, high = scale * (qmin - zero_point), scale * (qmax - zero_point)
        beyond = (value < low - scale / 2) | (value > high + scale / 2)  # rounds to no step within the range
        share = float(beyond.double().mean()) if value.numel() else 0.0
        return dataclasses.replace(drop, clipped=share, calibrated_range=(float(low), float(high)))

    def _blame_what_it_reads(self, drop: OpDrop, floor_db: float) -> OpDrop:
        """The op whose quantized output `drop`'s op reads, when reading that value exact
        would have kept it above the floor; else `drop` itself.

        The SQNR of a whole tensor can hide the loss: a value quantized per tensor
        where one channel is far larger than the others keeps a high SQNR while the
        small channels round to a few steps. The op reading those channels lost, and
        was named (Linear -> ReLU with one channel 3000x -> Linear that reads the
        others: the second linear, 28.8 dB in, 3.3 dB out)."""
        node = self._node(drop.node)
        if op_name(node) in DATA_MOVEMENT | SLICING:
            return self._blame_what_it_moves(drop, node)
        best: tuple[float, Node] | None = None
        for arg in node.all_input_nodes:
            if not (self._is_activation(arg) and is_quantization_node(arg)):
                continue
            exact = self.float_of(arg)
            db = self._sqnr_of(self._rerun(node, arg, exact), _output_of(node)) if exact is not None else None
            if db is not None and db >= floor_db and (best is None or db > best[0]):
                best = (db, arg)
        if best is None:
            return drop
        db, arg = best
        producer = _producer(arg)
        if producer.op == "placeholder":
            name = self.placeholder_value.get(producer.name, producer.name)
            return OpDrop(name, INPUT_QUANTIZE, "", "", db, drop.output_db, reader=node.name)
        return OpDrop(producer.name, op_name(producer), source_of(producer), _module(producer), db, drop.output_db,
                      reader=node.name)

    def _blame_what_it_moves(self, drop: OpDrop, node: Node) -> OpDrop:
        """A slice or view loses nothing itself: what it hands on is part of what it
        reads, requantized to the same steps where its backend shares them (qualcomm),
        so reading its input exact does not help it past that requantize. The loss is
        that input's quantize: blame its producer, with what the op would hand on
        reading it exact (qualcomm named the slice, "35.4 dB in, 0.0 dB out", of a value
        whose one channel set the range the others round to)."""
        for arg in node.all_input_nodes:
            exact = self.float_of(arg) if self._is_activation(arg) and is_quantization_node(arg) else None
            if exact is None:
                continue
            db = self._sqnr_of(self._rerun(node, arg, exact, handed_on=False), node)
            producer = _producer(arg)
            if db is None or producer.op == "placeholder":
                return drop
            return OpDrop(producer.name, op_name(producer), source_of(producer), _module(producer), db,
                          drop.output_db, reader=node.name)
        return drop

    def _node(self, name: str) -> Node:
        return next(n for n in self.reference.graph.nodes if n.name == name)

    def _rerun(self, node: Node, arg: Node, value: torch.Tensor, handed_on: bool = True) -> Any:
        """`node`'s value, as handed on (through its output's quantize/dequantize; not
        with ``handed_on=False``), had it read `value` for `arg`."""
        env = {arg: value}
        output = _output_of(node)
        taken = (output,) if output is not node else ()  # a multi-output op's value read on
        for step in (node, *taken, *(_quantize_chain(output) if handed_on else ())):
            args = map_arg(step.args, lambda n: env.get(n, self.env.get(n.name)))
            kwargs = map_arg(step.kwargs, lambda n: env.get(n, self.env.get(n.name)))
            with torch.no_grad():
                env[step] = step.target(*args, **kwargs)
        return env[step]

    def _sqnr_of(self, value: Any, float_node: Node) -> float | None:
        reference = self.float_of(float_node)
        if not isinstance(value, torch.Tensor) or not isinstance(reference, torch.Tensor):
            return None
        if reference.shape != value.shape or not reference.is_floating_point():
            return None
        return sqnr_db([value], [reference])

    def _op_drop(self, node: Node) -> OpDrop | None:
        """What `node` loses between what it reads and what it hands on."""
        tagged = FLOAT_NODE in node.meta.get("custom", {})
        if node.op != "call_function" or is_quantization_node(node) or not tagged:
            return None
        output = _output_of(node)
        output_db = self._sqnr(_handed_on(output), output)
        activations = [arg for arg in node.all_input_nodes if self._is_activation(arg)]
        read = [db for db in (self._sqnr(arg, arg) for arg in activations) if db is not None]
        if not read and any(self._integers(arg) for arg in activations):
            # a lookup of token ids reads them exact: its table's quantization is its own loss (a
            # table stored per tensor whose one outlier row set the steps: 6 dB, and nothing named)
            read = [math.inf]
        if output_db is None or not read:
            return None
        return OpDrop(node.name, op_name(node), source_of(node), _module(node), min(read), output_db)

    def _input_drop(self, node: Node) -> OpDrop | None:
        """What a partition input loses at its own quantize (inputs beyond the range the
        calibration measured are clipped to it), as an `OpDrop` of the input."""
        handed_on = _handed_on(node)
        if handed_on is node:
            return None
        raw, quantized = self._sqnr(node, node), self._sqnr(handed_on, node)
        if raw is None or quantized is None:
            return None
        return OpDrop(self.placeholder_value.get(node.name, node.name), INPUT_QUANTIZE, "", "", raw, quantized)

    def _integers(self, arg: Node) -> bool:
        """Whether `arg`'s value is a tensor of integers (token ids), which no scheme rounds."""
        value = self.env.get(arg.name)
        return isinstance(value, torch.Tensor) and not value.is_floating_point() and value.dtype != torch.bool

    def _is_activation(self, arg: Node) -> bool:
        """A value computed at run time, not a weight (a dequantize of a constant)."""
        while is_quantization_node(arg) and arg.args and isinstance(arg.args[0], Node):
            arg = arg.args[0]
        return arg.op != "placeholder" or arg.name in self.user_inputs

    def _sqnr(self, value_node: Node, float_node: Node) -> float | None:
        return self._sqnr_of(self.env.get(value_node.name), float_node)


def _quantize_chain(node: Node) -> tuple[Node, ...]:
    """The quantize and dequantize readers of `node` see its value through, if any."""
    for user in node.users:
        if is_quantization_node(user) and len(user.users) == 1:
            (dequantize,) = user.users
            if is_quantization_node(dequantize):
                return (user, dequantize)
    return ()


def _output_of(node: Node) -> Node:
    """The node holding `node`'s value: for a multi-output op (a layer norm: output, mean,
    rstd), the first of its outputs read on; else `node`. A layer norm's loss was never
    measured (its value is a tuple), so a model losing 25 dB there (DeiT's cls token, tiny
    beside its patches) had nothing named."""
    outputs = sorted((u for u in node.users if u.target is operator.getitem and u.users), key=lambda u: u.args[1])
    return outputs[0] if outputs and all(u.target is operator.getitem for u in node.users) else node


def _handed_on(node: Node) -> Node:
    """What readers of `node` see: its value after a quantize -> dequantize, if it has one."""
    chain = _quantize_chain(node)
    return chain[-1] if chain else node


def _producer(node: Node) -> Node:
    """The op (or input) a dequantized value comes from."""
    while is_quantization_node(node) and node.args and isinstance(node.args[0], Node):
        node = node.args[0]
    return node


def _user_inputs(reference: ExportedProgram) -> list[str]:
    from torch.export.graph_signature import InputKind

    return [s.arg.name for s in reference.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]

