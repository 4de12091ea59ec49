"""Capture one decoder layer, run it N times: an N-layer program from a one-layer capture.

torch.export traces every op of every layer, twice (export, then decomposition), which
makes capture the slowest part of exporting an LLM: about a second per layer per method
here. All layers of a decoder are the same ops on different weights, so the LLM export
captures a one-layer decoder and `repeat_layers` copies that layer's captured nodes
N - 1 times, each copy reading its own weights and cache and the previous copy's hidden
state. The result is the program torch.export would have produced for N layers (the
tests compare both), built in milliseconds.
"""

from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import ExportGraphSignature, InputKind, InputSpec, OutputKind, OutputSpec, TensorArgument
from torch.fx import Node

from ..errors import EdgeportError

LAYER_PREFIX = "decoder.layers."


def repeat_layers(program: ExportedProgram, layers: int, values: Mapping[str, torch.Tensor]) -> ExportedProgram:
    """``program`` (captured with one layer, ``decoder.layers.0``) with ``layers`` layers.

    ``values`` maps every parameter and buffer name of the N-layer module to its tensor
    (its ``named_parameters`` and ``named_buffers``).
    """
    graph = program.graph
    signature = program.graph_signature
    first = f"{LAYER_PREFIX}0."
    body = [n for n in graph.nodes if n.op == "call_function" and _layer_of(n) == f"{LAYER_PREFIX}0"]
    members = set(body)
    owned = [s for s in signature.input_specs if s.target and s.target.startswith(first)]
    owned_nodes = {s.arg.name for s in owned}
    outside = [a for n in body for a in n.all_input_nodes if a not in members and a.name not in owned_nodes]
    h_out = _hidden_output(body, members)
    h_in = _hidden_input(outside, h_out)
    readers_after = [u for u in h_out.users if u not in members]

    placeholders = {n.name: n for n in graph.nodes if n.op == "placeholder"}
    last_of_kind = {s.kind: placeholders[s.arg.name] for s in signature.input_specs}
    input_specs = list(signature.input_specs)
    mutation_outputs = [n for n in graph.output_node().args[0] if n in members]
    new_outputs: list[Node] = []
    output_specs = [s for s in signature.output_specs if s.kind == OutputKind.BUFFER_MUTATION]
    user_specs = [s for s in signature.output_specs if s.kind != OutputKind.BUFFER_MUTATION]
    anchor = readers_after[0] if readers_after else graph.output_node()
    previous = h_out
    for layer in range(1, layers):
        env: dict[Node, Node] = {h_in: previous}
        for spec in owned:
            old = placeholders[spec.arg.name]
            with graph.inserting_after(last_of_kind[spec.kind]):
                new = graph.placeholder(old.name.replace("layers_0_", f"layers_{layer}_", 1))
            new.meta = copy.copy(old.meta)
            last_of_kind[spec.kind] = new
            env[old] = new
            target = spec.target.replace(first, f"{LAYER_PREFIX}{layer}.", 1)
            input_specs.insert(input_specs.index(_last_spec(input_specs, spec.kind)) + 1,
                               InputSpec(spec.kind, TensorArgument(name=new.name), target, spec.persistent))
        with graph.inserting_before(anchor):
            for node in body:
                env[node] = graph.node_copy(node, lambda a: env.get(a, a))
        previous = env[h_out]
        for node in mutation_outputs:
            spec = next(s for s in signature.output_specs if s.arg.name == node.name)
            target = spec.target.replace(first, f"{LAYER_PREFIX}{layer}.", 1)
            output_specs.append(OutputSpec(OutputKind.BUFFER_MUTATION, TensorArgument(name=env[node].name), target))
            new_outputs.append(env[node])
    for reader in readers_after:
        reader.replace_input_with(h_out, previous)
    output = graph.output_node()
    old = list(output.args[0])
    mutations = [n for n in old if n in members] + new_outputs
    output.args = (tuple(mutations + old[len(mutation_outputs):]),)
    program.graph_module.recompile()
    return _rebuilt(program, ExportGraphSignature(input_specs, output_specs + user_specs), values)


def _layer_of(node: Node) -> str | None:
    """The innermost ``decoder.layers.i`` module a node was traced in, if any."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [path for path, _ in stack.values() if path.startswith(LAYER_PREFIX)]
    return ".".join(paths[-1].split(".")[:3]) if paths else None


def _hidden_output(body: list[Node], members: set[Node]) -> Node:
    """The layer's output hidden state: the one value read outside the layer besides the
    cache writes (which only the graph output reads)."""
    out = [n for n in body if any(u not in members and u.op != "output" for u in n.users)]
    if len(out) != 1:
        raise EdgeportError(f"cannot repeat the captured layer: it has {len(out)} outputs besides its cache writes")
    return out[0]


def _hidden_input(outside: list[Node], h_out: Node) -> Node:
    """The layer's input hidden state: the one outside value shaped like its output."""
    shape = h_out.meta["val"].shape
    found = {n for n in outside if isinstance(n.meta.get("val"), torch.Tensor) and n.meta["val"].shape == shape}
    if len(found) != 1:
        raise EdgeportError(f"cannot repeat the captured layer: {len(found)} inputs look like its hidden state")
    return found.pop()


def _last_spec(specs: list[InputSpec], kind: InputKind) -> InputSpec:
    """Where a new spec of ``kind`` goes: after the last one of that kind so far (the
    same place its placeholder goes in the graph)."""
    return [s for s in specs if s.kind == kind][-1]


def _rebuilt(program: ExportedProgram, signature: ExportGraphSignature, values: Mapping[str, torch.Tensor]) -> ExportedProgram:
    """The edited program as a new ExportedProgram on a new graph: what was learnt about
    the captured graph (backends cache which nodes are constants per graph object) must
    not carry over to the repeated one."""
    state_dict, constants = {}, {}
    for spec in signature.input_specs:
        if spec.kind == InputKind.PARAMETER or (spec.kind == InputKind.BUFFER and spec.persistent):
            state_dict[spec.target] = values[spec.target]
        elif spec.kind in (InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            constants[spec.target] = values.get(spec.target, program.constants.get(spec.target))
    graph = torch.fx.Graph()
    graph.output(graph.graph_copy(program.graph, {}))
    return ExportedProgram(
        root=torch.fx.GraphModule(program.graph_module, graph),
        graph=graph,
        graph_signature=signature,
        state_dict=state_dict,
        range_constraints=dict(program.range_constraints),
        module_call_graph=list(program.module_call_graph),
        constants=constants,
        verifiers=list(program.verifiers),
    )
