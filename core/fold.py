"""Constant folding at export: compute once what depends only on weights and literals.

Models compute values that never change between calls: an attention mask built from
``arange``/``full``/``ge``/``bitwise_and``, position embeddings gathered at fixed
positions, a transposed weight. Left in the graph, each such node is a portable step on
every call (a backend cannot take a node whose value it would have to output as a
constant). `fold_constants` computes every such subgraph once, with torch, and replaces
it by one stored constant (a lifted ``CONSTANT_TENSOR`` input), so the nodes that read
it see a constant like any weight.

What folds: an ``aten`` op that is functional and deterministic (no random tag, no
mutable schema) whose inputs are all parameters, buffers the program never mutates,
lifted constants or other folding nodes; ``full_like``-style ops read only their
input's (static) shape. A value with a symbolic (dynamic) dim never folds, nor does a
value the method returns. A quantize of such a value to int8 (a per-tensor or per-channel
``quantized_decomposed`` quantize with literal parameters: a rotary table the int8 graph
multiplies by, which PT2E's convert leaves computed since the table is no weight) folds
too, into the integer constant a backend stores; dequantize ops never fold, so a
quantized weight stays quantized.

The size rule (`SIZE_ALLOWANCE`): only the frontier of a constant subgraph is stored
(the values its non-constant readers use). A frontier value folds if its bytes are at
most the bytes of the stored tensors that become unread once it folds (it replaces
them) plus `SIZE_ALLOWANCE`. So a transposed weight replaces its weight, but expanding
a scalar to a 64 MB tensor, or transposing a weight another node still reads (tied
embeddings), stays computed at run time; its smaller constant inputs may fold instead.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import ExportGraphSignature, InputKind, InputSpec, TensorArgument
from torch.fx import Node
from torch.fx.node import map_arg

from .backend import SupportContext
from .subprogram import copy_graph

# How many bytes a folded value may add to the program beyond the stored tensors it
# replaces: enough for the masks and position tables of a 512-token encoder
# ([1, 1, 512, 512] bool is 256 KiB), small next to any model that has them.
SIZE_ALLOWANCE = 1 << 20

# Ops whose value depends only on their first input's shape, never its contents.
SHAPE_ONLY = frozenset({torch.ops.aten.full_like.default, torch.ops.aten.zeros_like.default,
                        torch.ops.aten.ones_like.default})

FOLDED_PREFIX = "_folded_constant_"
# A folded constant's placeholder meta: the parameters, buffers and constants it was
# computed from ("l.weight" of a transposed weight), for messages that name it.
FOLDED_FROM = "folded_from"


@dataclass(frozen=True)
class FoldResult:
    """What `fold_constants` did: the folded program and, per stored constant, the
    node it replaced."""

    program: ExportedProgram
    folded: dict[str, str]  # new constant name -> name of the node it replaced

    @property
    def changed(self) -> bool:
        return bool(self.folded)


def fold_constants(program: ExportedProgram) -> FoldResult:
    """``program`` with every constant subgraph folded (see the module docstring): a new
    program when something folds (the input is left as it was: backends cache facts
    about a graph), else ``program`` itself."""
    graph = program.graph_module.graph
    values = _stored_values(program)
    refused: set[Node] = {n for n in graph.output_node().all_input_nodes}
    while True:
        const = _constant_nodes(graph, values, refused)
        frontier = _frontier(graph, const)
        too_big = _too_big(frontier, const, values)
        if not too_big:
            break
        refused |= too_big
    if not frontier:
        return FoldResult(program, {})
    computed = _evaluate(graph, const, values, frontier)
    return _replace(program, computed)


def constant_nodes(program: ExportedProgram) -> set[Node]:
    """The op nodes whose value depends only on weights and literals: what
    `fold_constants` folds, whatever its size."""
    values = _stored_values(program)
    return _constant_nodes(program.graph_module.graph, values, refused=set()) - set(values)


def constant_values(program: ExportedProgram, nodes: list[Node]) -> dict[Node, torch.Tensor]:
    """The values of those ``nodes`` that depend only on weights and literals (what
    `fold_constants` would fold, whatever their size), computed with torch; a node whose
    value is not known at export is left out."""
    graph = program.graph_module.graph
    values = _stored_values(program)
    const = _constant_nodes(graph, values, refused=set())
    known = {n: values[n] for n in nodes if n in values}
    return {**known, **_evaluate(graph, const, values, [n for n in nodes if n in const and n not in known])}


def module_value(node: Node) -> torch.Tensor | None:
    """``node``'s value when it depends only on its module's attributes and literals
    (the get_attr nodes of a captured module, before export lifts them to inputs),
    computed with torch; None when it reads an input or an op that is not pure.

    For rewrites of a captured module whose form depends on a value known at export:
    the qualcomm quantizer reads an attention's float mask to split what it masks from
    what it adds."""
    needed, stack = {node}, [node]
    while stack:
        current = stack.pop()
        if current.op == "get_attr":
            continue
        if current.op != "call_function" or not pure(current) or not _static(current):
            return None
        for read in _read_nodes(current):
            if read not in needed:
                needed.add(read)
                stack.append(read)
    module = node.graph.owning_module
    env: dict[Node, Any] = {}
    with torch.no_grad():
        for current in (n for n in node.graph.nodes if n in needed):
            env[current] = (functools.reduce(getattr, current.target.split("."), module) if current.op == "get_attr"
                            else _run(current, env))
    value = env[node]
    return value if isinstance(value, torch.Tensor) else None


def _stored_values(program: ExportedProgram) -> dict[Node, torch.Tensor]:
    """Placeholders whose value is known at export: weights, unmutated buffers, constants."""
    ctx = SupportContext(program, None)
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    return {n: value for n in placeholders if (value := ctx.constant(n)) is not None}


# Quantize ops whose integer value is all they do, with their scale and zero point literals
# (or constant inputs): computed once, as a weight's quantize is at convert. Only to int8
# (the cpu's and mediatek's activations): qualcomm's a16w8 LLM, its tables folded to uint16
# constants, came out of HTP 0.37 off its fake-quantized reference's logits (largest 0.52;
# tests/llm/test_llm_qualcomm_a16w8.py), and qualcomm takes those quantizes in its graph.
QUANTIZE_OPS = frozenset({"quantize_per_tensor.default", "quantize_per_channel.default"})


def pure(node: Node) -> bool:
    """A functional, deterministic aten op (or a getitem of one's outputs, or a quantize
    of `QUANTIZE_OPS`): its value is all it does."""
    target = node.target
    if target is operator.getitem:
        return True
    if isinstance(target, torch._ops.OpOverload) and target.namespace == "quantized_decomposed":
        dtype = node.kwargs.get("dtype", node.args[-1] if node.args else None)
        return f"{target._opname}.{target._overloadname}" in QUANTIZE_OPS and dtype == torch.int8
    if not isinstance(target, torch._ops.OpOverload) or target.namespace != "aten":
        return False
    if torch.Tag.nondeterministic_seeded in target.tags or target._schema.is_mutable:
        return False
    return not target._opname.startswith(("empty", "new_empty"))  # uninitialized memory: no value to store


def _static(node: Node) -> bool:
    """The node's value is tensors of static shape (no symbolic dim to fold away)."""
    val = node.meta.get("val")
    leaves = val if isinstance(val, (tuple, list)) else [val]
    return bool(leaves) and all(isinstance(v, torch.Tensor) and all(isinstance(d, int) for d in v.shape)
                                for v in leaves)


def _read_nodes(node: Node) -> list[Node]:
    inputs = list(node.all_input_nodes)
    if node.target in SHAPE_ONLY and isinstance(node.args[0], Node) and _static(node.args[0]):
        inputs.remove(node.args[0])
    return inputs


def _constant_nodes(graph: torch.fx.Graph, values: dict[Node, torch.Tensor], refused: set[Node]) -> set[Node]:
    const: set[Node] = set(values)
    for node in graph.nodes:
        if node.op != "call_function" or node in refused or not pure(node) or not _static(node):
            continue
        if all(n in const for n in _read_nodes(node)):
            const.add(node)
    return const


def _frontier(graph: torch.fx.Graph, const: set[Node]) -> list[Node]:
    """Computed constant values that a non-constant node reads, in graph order."""
    return [n for n in graph.nodes if n.op == "call_function" and n in const
            and isinstance(n.meta.get("val"), torch.Tensor) and any(u not in const for u in n.users)]


def _nbytes(value: Any) -> int:
    return value.numel() * value.element_size()


def _too_big(frontier: list[Node], const: set[Node], values: dict[Node, torch.Tensor]) -> set[Node]:
    """Frontier nodes whose value would grow the program by more than `SIZE_ALLOWANCE`.

    A stored tensor is freed when every node that reads it is constant (so it is read
    only while folding); its bytes are credited to the first frontier node that reaches it.
    """
    credited: set[Node] = set()
    too_big = set()
    for node in frontier:
        freed = 0
        for leaf in _leaves(node, const, values):
            if leaf not in credited and all(u in const for u in leaf.users):
                credited.add(leaf)
                freed += _nbytes(values[leaf])
        if _nbytes(node.meta["val"]) > freed + SIZE_ALLOWANCE:
            too_big.add(node)
    return too_big


def _leaves(node: Node, const: set[Node], values: dict[Node, torch.Tensor]) -> list[Node]:
    """The stored tensors ``node``'s value is computed from."""
    seen, stack, leaves = {node}, [node], []
    while stack:
        for n in _read_nodes(stack.pop()):
            if n in seen or n not in const:
                continue
            seen.add(n)
            if n in values:
                leaves.append(n)
            else:
                stack.append(n)
    return leaves


def _evaluate(graph: torch.fx.Graph, const: set[Node], values: dict[Node, torch.Tensor],
              frontier: list[Node]) -> dict[Node, torch.Tensor]:
    """Compute the frontier values with torch (only the constant nodes they need)."""
    needed = set(frontier)
    for node in reversed(list(graph.nodes)):
        if node in needed:
            needed.update(n for n in _read_nodes(node) if n in const)
    env: dict[Node, Any] = dict(values)
    with torch.no_grad():
        for node in graph.nodes:
            if node in needed and node not in env:
                env[node] = _run(node, env)
    return {n: env[n] for n in frontier}


def _run(node: Node, env: dict[Node, Any]) -> Any:
    if node.target in SHAPE_ONLY and node.args[0] not in env:
        val = node.args[0].meta["val"]
        env = {**env, node.args[0]: torch.empty(tuple(val.shape), dtype=val.dtype)}
    args = map_arg(node.args, env.__getitem__)
    kwargs = map_arg(node.kwargs, env.__getitem__)
    return node.target(*args, **kwargs)


# How a replaced node's readers read its stored value: (graph, the stored value's
# placeholder, the replaced node, original -> copied nodes) -> the node they read instead.
Read = Callable[[torch.fx.Graph, Node, Node, dict[Node, Node]], Node]


def _replace(program: ExportedProgram, computed: dict[Node, torch.Tensor], read: Read | None = None) -> FoldResult:
    """A copy of ``program`` where each computed value is a lifted constant input (read
    directly, or through what `read` inserts) and what no one reads any more is gone."""
    graph, copies, copied_signature = copy_graph(program)
    specs = list(copied_signature.input_specs)
    first_user = next((i for i, s in enumerate(specs) if s.kind == InputKind.USER_INPUT), len(specs))
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    anchor = placeholders[first_user] if first_user < len(placeholders) else _first_op(graph)
    constants, state_dict = dict(program.constants), dict(program.state_dict)
    taken = set(constants) | {n.name for n in graph.nodes}
    folded: dict[str, str] = {}
    new_specs = []
    for node, value in computed.items():
        name = _fresh(FOLDED_PREFIX + node.name, taken)
        with graph.inserting_before(anchor):
            placeholder = graph.placeholder(name)
        placeholder.meta = {"val": _fake(node.meta["val"], value), FOLDED_FROM: _stored_sources(program, node)}
        copies[node].replace_all_uses_with(read(graph, placeholder, node, copies) if read else placeholder)
        constants[name] = value.detach().contiguous()
        new_specs.append(InputSpec(InputKind.CONSTANT_TENSOR, TensorArgument(name=placeholder.name), target=name))
        folded[name] = node.name
    specs[first_user:first_user] = new_specs
    graph.eliminate_dead_code()
    specs = _drop_unread(graph, specs, state_dict, constants, set(program.graph_signature.buffers_to_mutate.values()))
    signature = ExportGraphSignature(specs, list(copied_signature.output_specs))
    module = torch.fx.GraphModule(program.graph_module, graph)
    folded_program = ExportedProgram(
        root=module,
        graph=graph,
        graph_signature=signature,
        state_dict=state_dict,
        range_constraints=program.range_constraints,
        module_call_graph=program.module_call_graph,
        example_inputs=program.example_inputs,
        constants=constants,
        verifiers=program.verifiers,
    )
    return FoldResult(folded_program, folded)


def _stored_sources(program: ExportedProgram, node: Node) -> tuple[str, ...]:
    """The names of the stored values (their signature targets) that ``node`` is computed from."""
    targets = {spec.arg.name: spec.target for spec in program.graph_signature.input_specs}
    seen, stack, sources = {node}, [node], []
    while stack:
        current = stack.pop()
        if current.op == "placeholder":
            sources.append(targets.get(current.name) or current.name)
        for read in current.all_input_nodes:
            if read not in seen:
                seen.add(read)
                stack.append(read)
    return tuple(sorted(sources))


def _fake(val: Any, value: torch.Tensor) -> Any:
    """The placeholder's metadata: the node's own when the stored value has its shape
    (a static one: comparing a symbolic size would add a guard to the program)."""
    if all(isinstance(d, int) for d in val.shape) and tuple(val.shape) == tuple(value.shape):
        return val
    with val.fake_mode:
        return torch.empty(tuple(value.shape), dtype=value.dtype)


def _drop_unread(graph: torch.fx.Graph, specs: list[InputSpec], state_dict: dict, constants: dict,
                 mutated: set[str]) -> list[InputSpec]:
    """Erase stored-tensor placeholders nothing reads any more (user inputs always stay)."""
    by_name = {n.name: n for n in graph.nodes if n.op == "placeholder"}
    kept = []
    for spec in specs:
        node = by_name.get(spec.arg.name)
        stored = spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)
        if node is not None and stored and not node.users and spec.target not in mutated:
            graph.erase_node(node)
            constants.pop(spec.target, None)
            state_dict.pop(spec.target, None)
            continue
        kept.append(spec)
    return kept


def _fresh(name: str, taken: set[str]) -> str:
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    taken.add(candidate)
    return candidate


def _first_op(graph: torch.fx.Graph) -> Node:
    return next(n for n in graph.nodes if n.op != "placeholder")
