"""Write an edge ExportedProgram (one partition) as a TFLite flatbuffer.

Three passes over the graph, in order:

1. check: every live node against the lowering table (the same question
   `writer_support` answers); refusals become one `DeclineNodes`;
2. plan: fold batch norms into the convs before them and fuse RELU/RELU6 into
   their producers, where nothing else reads the intermediate value;
3. emit: constants are computed with torch at compile time, every other node is
   written by its lowering. Inputs and outputs keep torch's layout and dtypes; NHWC
   and int32 live only inside the artifact.
"""

from __future__ import annotations

import functools
import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.export import ExportedProgram
from torch.fx import Graph, Node

from edgeport import BackendError, DeclineNodes, Support, SupportContext

from . import dynamic, int8_plan, layout, lowering, qdq
from .emitter import Emitter, Plan, Value
from .flatbuffer import ModelBuilder
from .lowering import SHAPE_ONLY, Constants, check_node, foldable, lookup
from .schema import tensor_type, tfl

aten = torch.ops.aten


@dataclass(frozen=True)
class TfliteModel:
    """A written model and the facts a runner or report needs about it."""

    data: bytes
    inputs: list[str]  # user input names, in subgraph input order
    outputs: list[str]  # output node names, in subgraph output order
    transposed_inputs: list[str]  # inputs the model transposes (e.g. NCHW -> NHWC) right away
    transposed_outputs: list[str]  # outputs transposed back to torch's layout at the end
    ops: dict[str, int] = field(default_factory=dict)  # TFLite operator counts
    int4_weights: int = 0  # blockwise INT4 weight tensors (only XNNPACK runs them)
    float_ops: frozenset[str] = frozenset()  # nodes written in float (`int8_plan.float_ops`)

    @property
    def transposes(self) -> int:
        return self.ops.get("TRANSPOSE", 0)


# -- what support knows about a whole program ---------------------------------------------


def constant_nodes(program: ExportedProgram) -> frozenset[Node]:
    """Nodes whose value is known at compile time: constant inputs and what folds from them."""
    ctx = SupportContext(program, None)
    consts: set[Node] = set()
    for node in program.graph_module.graph.nodes:
        if node.op == "placeholder":
            if ctx.constant(node) is not None:
                consts.add(node)
        elif foldable(node, consts.__contains__):
            consts.add(node)
    return frozenset(consts)


def constants(program: ExportedProgram) -> Constants:
    """`constant_nodes` as the lowering table's checks see them, with constant inputs' values."""
    return Constants(constant_nodes(program), SupportContext(program, None).constant)


class WriterContext:
    """What the writer's support answers need to know about one whole program, worked
    out once, when first asked: what a backend's `prepare` returns (``ctx.prepared``).

    With dynamic dims, questions are answered on the program's concrete copy at one
    size (`dynamic.static_program`), so no check specializes a symbolic size.
    """

    def __init__(self, program: ExportedProgram) -> None:
        self.program = program

    @classmethod
    def of(cls, ctx: SupportContext) -> WriterContext:
        """The context a backend prepared, or a new one (for a caller that did not prepare)."""
        return ctx.prepared if isinstance(ctx.prepared, WriterContext) else cls(ctx.program)

    @functools.cached_property
    def _static(self) -> tuple[ExportedProgram, dict[str, Node]]:
        return dynamic.static_program(self.program)

    def static_view(self, node: Node) -> tuple[ExportedProgram, Node]:
        """The program and ``node`` as the writer sees them (at static sizes)."""
        view, by_name = self._static
        return view, by_name.get(node.name, node)

    @functools.cached_property
    def view_constants(self) -> Constants:
        """`constants` of the static view."""
        return constants(self._static[0])

    @functools.cached_property
    def constant_nodes(self) -> frozenset[Node]:
        """`constant_nodes` of the program itself (its own nodes, not the view's)."""
        view = self._static[0]
        return self.view_constants.nodes if view is self.program else constant_nodes(self.program)

    @functools.cached_property
    def plan(self) -> Plan:
        """The fusion and folding plan of the whole (static) program."""
        graph = self._static[0].graph_module.graph
        return make_plan(graph, _live(graph), self.view_constants)


def writer_support(node: Node, ctx: SupportContext) -> Support:
    """Whether `write_tflite` can write `node`: the lowering table's answer, with its
    reason. With dynamic dims, asked of the graph at one size (dynamic.py); what does not
    resize is found when the partition is written. Fast with a `WriterContext` as
    ``ctx.prepared`` (a backend's `prepare`)."""
    try:
        reason = _reads_runtime_size(node)
        if reason is None:
            writer = WriterContext.of(ctx)
            _, node = writer.static_view(node)
            reason = check_node(node, writer.view_constants)
    except Exception as e:  # noqa: BLE001 - support must never raise
        reason = f"{node.target}: could not check ({type(e).__name__}: {e})"
    return Support.no(reason) if reason else Support.yes()


def _reads_runtime_size(node: Node) -> str | None:
    """A size computed by torch (``sym_size``) would reach the model as an input: none can."""
    if any(isinstance(n.meta.get("val"), torch.SymInt) for n in node.all_input_nodes):
        return "it reads a size computed at run time (a dynamic dim the TFLite model cannot take as an input)"
    return None


def written_ops(node: Node, ctx: SupportContext) -> frozenset[str]:
    """The TFLite builtins `write_tflite` may write for `node` (a node `writer_support`
    accepts), from its lowering's own declaration: none for a node folded to a constant,
    or (as planned on the whole program) fused into its producer or folded into a conv.
    Layout TRANSPOSEs, RESHAPEs, CASTs and fp16 DEQUANTIZEs (`PLUMBING`) may come on top
    of any node."""
    writer = WriterContext.of(ctx)
    _, node = writer.static_view(node)
    plan = writer.plan
    if node in plan.alias or node in plan.bn_fold.values() or node in plan.unwritten:
        return frozenset()
    return lowering.written_ops(node, writer.view_constants)


# -- planning -----------------------------------------------------------------------------


def _live(graph: Graph) -> set[Node]:
    """Nodes an output depends on."""
    out = graph.output_node()
    live, stack = {out}, [out]
    while stack:
        for n in stack.pop().all_input_nodes:
            if n not in live:
                live.add(n)
                stack.append(n)
    return live


def make_plan(graph: Graph, live: set[Node], consts: frozenset[Node] | Constants, xnnpack_only: bool = False) -> Plan:
    """Batch norms to fold into convs and activations to fuse into their producers; with
    `Constants` (which know weights' values), also the ops of a quantized graph written
    in int8 (int8_plan.py), only those XNNPACK runs in int8 if `xnnpack_only`."""
    plan = Plan(xnnpack_only=xnnpack_only)
    outputs = set(graph.output_node().all_input_nodes)
    users = {n: [u for u in n.users if u in live] for n in live}

    def readers(src: Node) -> set[Node]:
        group = {src} | {a for a, t in plan.alias.items() if t is src}
        bn = plan.bn_fold.get(src)
        if bn is not None:
            group.add(bn)
        if group & outputs:
            return {graph.output_node()}
        return {u for g in group for u in users[g]} - group

    for n in graph.nodes:
        if n not in live or n in consts or n.op != "call_function":
            continue
        src = n.args[0] if n.args and isinstance(n.args[0], Node) else None
        src = plan.alias.get(src, src)
        if src is None or src in consts or src.op != "call_function":
            continue
        if n.target == aten._native_batch_norm_legit_no_training.default and src.target == aten.convolution.default:
            takes = [u for u in users[n]]
            if readers(src) == {n} and all(u.target is operator.getitem and u.args[1] == 0 for u in takes):
                if not any(isinstance(a, Node) and a not in consts for a in n.args[1:5]):
                    plan.bn_fold[src] = n
                    plan.alias.update({u: src for u in takes})
            continue
        entry = lookup(n.target)
        act = entry.as_activation(n) if entry is not None and entry.as_activation else None
        src_entry = lookup(src.target)
        if act and src_entry is not None and src_entry.fuses_activation and src not in plan.fused:
            if src.meta["val"].dtype == torch.float32 and readers(src) == {n}:
                plan.fused[src] = act
                plan.alias[n] = src
    if isinstance(consts, Constants):
        int8_plan.plan_int8(graph, live, consts, plan)
    return plan


# -- emitting -----------------------------------------------------------------------------


def write_tflite(program: ExportedProgram, *, fp16: bool = False, winograd: bool = False,
                 xnnpack_only: bool = False) -> TfliteModel:
    """Write `program` (an edge-dialect partition) as a TFLite model.

    Raises DeclineNodes naming every node the writer cannot write, with its reason.
    `fp16` stores weights as float16 (dequantized at load time by the runtime).
    `winograd` writes large 3x3 convolutions as Winograd F(2x2, 3x3) for XNNPACK
    (ops/winograd.py); an NPU compiler wants them as plain CONV_2D, so it is off by default.
    `xnnpack_only` writes in float the int8 ops LiteRT's XNNPACK delegate leaves to
    TFLite's kernels (`Int8.xnnpack`): a standalone int8 HARD_SWISH between two convs
    split the cpu's delegate, though its quantizer had left the op float.
    With dynamic dims, the model's shape_signature has -1 for them (dynamic.py).
    """
    if dynamic.symbols(program):
        return dynamic.write_resizable(program, lambda p, hook: _write(p, fp16, winograd, xnnpack_only, hook))
    return _write(program, fp16, winograd, xnnpack_only)


def _write(program: ExportedProgram, fp16: bool, winograd: bool, xnnpack_only: bool,
           before_finish: Callable[[ModelBuilder], None] | None = None) -> TfliteModel:
    """`write_tflite` of a program of static shapes; ``before_finish`` sees the pruned
    model before it is serialized."""
    graph = program.graph_module.graph
    consts = constants(program)
    live = _live(graph)
    reasons = {}
    for n in graph.nodes:
        if n in live and (reason := check_node(n, consts)):
            reasons[n.name] = reason
    for n in graph.output_node().all_input_nodes:
        if n in consts:
            reasons[n.name] = "its value is a constant: nothing to compute in the TFLite model"
        elif qdq.dynamic_source(n) is not None:
            reasons[n.name] = "activations quantized at run time leave the model (only a FULLY_CONNECTED reads them)"
    if reasons:
        raise DeclineNodes(reasons)

    plan = make_plan(graph, live, consts, xnnpack_only)
    em = Emitter(ModelBuilder(), plan, fp16, winograd)
    ctx = SupportContext(program, None)
    inputs: list[tuple[Node, int]] = []
    with torch.no_grad():
        for n in graph.nodes:
            if n not in live:
                continue
            if n.op == "placeholder":
                value = ctx.constant(n)
                if value is not None:
                    em.env[n] = value
                else:
                    em.env[n], boundary = _input(em, n)
                    inputs.append((n, boundary))
            elif n.op == "call_function":
                em.env[n] = _node_value(em, n, consts)
    outputs, out_names = _outputs(em, graph.output_node(), [t for _, t in inputs])

    transposes = [rec for rec in em.builder.ops if rec.code == tfl().BuiltinOperator.TRANSPOSE]
    transposed_in = {rec.inputs[0] for rec in transposes}
    transposed_out = {rec.outputs[0] for rec in transposes}
    boundary = ([n.name for n, _ in inputs if em.env[n].tensor in transposed_in],
                [name for name, t in zip(out_names, outputs) if t in transposed_out])
    input_tensors, outputs = em.builder.prune([t for _, t in inputs], outputs)
    if before_finish is not None:
        before_finish(em.builder)
    names = {v: k for k, v in vars(tfl().BuiltinOperator).items() if not k.startswith("_")}
    ops = dict(Counter(names[rec.code] for rec in em.builder.ops))
    signature = ([n.name for n, _ in inputs], out_names)
    data = em.builder.finish(input_tensors, outputs, "edgeport TFLite writer", _metadata(fp16), signature)
    int4 = sum(1 for rec in em.builder.tensors if rec.quantization is not None and rec.quantization.blockwise)
    return TfliteModel(data, [n.name for n, _ in inputs], out_names, *boundary, ops, int4,
                       int8_plan.float_ops(graph, live, consts, plan))


def _node_value(em: Emitter, n: Node, consts: Constants) -> Any:
    if n in em.plan.alias:
        return em.env[em.plan.alias[n]]
    if n in em.plan.bn_fold.values() or n in em.plan.unwritten:
        return None  # folded into its conv (only its getitem 0 is read, as an alias), or read only in int8
    if n.target is operator.getitem:
        return em.env[n.args[0]][n.args[1]]
    if n in consts:
        return _evaluate(em, n)
    entry = lookup(n.target)
    if n in em.plan.int8:  # int8 where torch computes float: the plan's own decision
        value = entry.int8.emit(em, n, em.plan.int8[n])
    elif n in em.plan.hybrid:
        from .ops.int8 import hybrid_linear  # the table's own module; imported with it

        value = hybrid_linear(em, n)
    else:
        value = entry.emit(em, n)
        _check_dtypes(n, value)
    act = em.plan.fused.get(n)
    if act is not None and n not in em.fused_written:
        value = _apply_activation(em, n, value, act)
    return value


def _check_dtypes(n: Node, value: Any) -> None:
    """Every value a lowering wrote is stored as torch's result dtype is.

    A lowering that computes in the wrong dtype (a float mean of int64 values, reduced in
    integers) would otherwise run and return a wrong answer silently; this turns it into
    a failed compile, which falls back to portable with the reason.
    """
    expected = n.meta.get("val")
    several = isinstance(expected, (tuple, list)) and isinstance(value, (tuple, list))
    for want, got in zip(expected, value) if several else [(expected, value)]:
        if not (isinstance(got, Value) and isinstance(want, torch.Tensor)):
            continue
        if tensor_type(got.dtype) != tensor_type(want.dtype):
            raise BackendError(
                f"TFLite writer: the lowering of {n.target} wrote {got.dtype} for {n.name}, "
                f"where torch computes {want.dtype}",
                hint="a bug in edgeport's TFLite writer: please report it with the model",
            )


def _evaluate(em: Emitter, n: Node) -> Any:
    """Compute a constant node with torch."""
    args = list(n.args)
    if n.target in SHAPE_ONLY:  # only the shape of the first argument matters
        val = args[0].meta["val"]
        args[0] = torch.empty(tuple(val.shape), dtype=val.dtype)
    args = [a if isinstance(a, torch.Tensor) else em.arg(a) for a in args]
    kwargs = {k: em.arg(v) for k, v in n.kwargs.items()}
    return n.target(*args, **kwargs)


def _apply_activation(em: Emitter, n: Node, value: Value, act: str) -> Value:
    """An activation the plan fused into `n` but whose lowering wrote no fused slot."""
    out = em.new(value.shape, value.dtype, n.name + "/" + act.lower(), value.perm)
    em.op(act, [value.tensor], [out])
    return out


def _input(em: Emitter, n: Node) -> tuple[Value, int]:
    """A user input: its boundary tensor (declared dtype) and the Value used inside. An
    int8 input (quantized in another partition) takes the parameters its dequantizes read."""
    val = n.meta["val"]
    shape = tuple(val.shape)
    params = {qdq.dequantizes_from(u) for u in n.users} if val.dtype == torch.int8 else set()
    quant = params.pop() if len(params) == 1 else None
    quantization = quant.tflite() if quant is not None else None
    index = em.builder.tensor(shape, tensor_type(val.dtype, boundary=True), n.name, quantization=quantization)
    value = Value(index, shape, val.dtype, layout.identity(len(shape)), quant)
    if tensor_type(val.dtype, boundary=True) != tensor_type(val.dtype):
        inner = em.new(shape, val.dtype, n.name + "/inner")
        em.op("CAST", [index], [inner])
        value = inner
    return value, index


def _outputs(em: Emitter, out: Node, input_tensors: list[int]) -> tuple[list[int], list[str]]:
    """Boundary output tensors: torch layout and declared dtypes, each a distinct tensor."""
    tensors, names = [], []
    taken = set(input_tensors)
    for arg in out.args[0]:
        v = em.to_identity(em.env[arg])
        val = arg.meta["val"]
        boundary_type = tensor_type(val.dtype, boundary=True)
        if boundary_type != tensor_type(val.dtype) or v.tensor in taken:
            copy = em.builder.tensor(v.shape, boundary_type, arg.name + "/out")
            if boundary_type != tensor_type(val.dtype):
                em.builder.op(tfl().BuiltinOperator.CAST, [v.tensor], [copy])
            else:
                em.builder.op(tfl().BuiltinOperator.RESHAPE, [v.tensor, em.int_const(v.shape)], [copy])
            index = copy
        else:
            index = v.tensor
        taken.add(index)
        tensors.append(index)
        names.append(arg.name)
    return tensors, names


def _metadata(fp16: bool) -> dict[str, bytes]:
    """Model metadata. With fp16 weights, also let XNNPACK compute in fp16 (with fp16
    accumulation) on CPUs with native fp16 arithmetic; elsewhere it keeps fp32."""
    return {"reduced_precision_support": b"fp16accfp16"} if fp16 else {}
