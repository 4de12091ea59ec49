"""Cutting a set of nodes out of an ExportedProgram as a standalone ExportedProgram.

Backends receive exactly what `torch.export` would give them for the partition alone:
lifted constants first (parameters, buffers, tensor constants, with their values), then
user inputs, and only user outputs. Node names are kept, so a backend's complaint about
a node can be traced back to the whole program.

Program state (buffers a method mutates) never becomes a constant: the runtime owns it
and passes it in as an ordinary input.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.utils._pytree as pytree
from torch.export import ExportedProgram
from torch.export.exported_program import ModuleCallEntry, ModuleCallSignature
from torch.export.graph_signature import (
    ConstantArgument,
    ExportGraphSignature,
    InputKind,
    InputSpec,
    OutputKind,
    OutputSpec,
    SymIntArgument,
    TensorArgument,
)
from torch.fx import Graph, Node


@dataclass(frozen=True)
class Subprogram:
    """A partition as a program, and the names of the values it reads and writes."""

    program: ExportedProgram
    inputs: tuple[str, ...]  # user inputs, in order: names of values in the whole program
    outputs: tuple[str, ...]


def constant_specs(ep: ExportedProgram) -> dict[str, InputSpec]:
    """Placeholders that hold constants: parameters, tensor constants, and the buffers
    that no output mutates."""
    mutated = set(ep.graph_signature.buffers_to_mutate.values())
    return {
        spec.arg.name: spec
        for spec in ep.graph_signature.input_specs
        if spec.kind in (InputKind.PARAMETER, InputKind.CONSTANT_TENSOR, InputKind.CUSTOM_OBJ)
        or (spec.kind == InputKind.BUFFER and spec.target not in mutated)
    }


def copy_graph(ep: ExportedProgram) -> tuple[Graph, dict[Node, Node], ExportGraphSignature]:
    """A copy of ``ep``'s graph to rewrite, each original node's copy, and ``ep``'s
    signature naming the copies (a placeholder named ``input`` becomes ``input_1``)."""
    graph = Graph()
    copies: dict[Node, Node] = {}
    graph.output(graph.graph_copy(ep.graph, copies))
    names = {old.name: new.name for old, new in copies.items()}

    def renamed(spec: Any) -> Any:
        arg = spec.arg
        if hasattr(arg, "name") and arg.name in names:
            arg = dataclasses.replace(arg, name=names[arg.name])
        return dataclasses.replace(spec, arg=arg)

    signature = ExportGraphSignature([renamed(s) for s in ep.graph_signature.input_specs],
                                     [renamed(s) for s in ep.graph_signature.output_specs])
    return graph, copies, signature


def _argument(node: Node) -> Any:
    val = node.meta.get("val")
    if isinstance(val, torch.SymInt):
        return SymIntArgument(name=node.name)
    if isinstance(val, torch.Tensor) or val is None:
        return TensorArgument(name=node.name)
    return ConstantArgument(name=node.name, value=val)


def extract_subprogram(ep: ExportedProgram, nodes: Sequence[Node]) -> Subprogram:
    """Build the ExportedProgram of ``nodes`` (a cycle-free set, in graph order)."""
    members = set(nodes)
    constants = constant_specs(ep)
    const_inputs: dict[Node, None] = {}  # dicts as ordered sets: same input, same bytes
    user_inputs: dict[Node, None] = {}
    for node in nodes:
        for arg in node.all_input_nodes:
            if arg in members:
                continue
            (const_inputs if arg.name in constants else user_inputs)[arg] = None
    outputs = [n for n in nodes if any(u not in members for u in n.users)]
    if not outputs and user_inputs:
        # Only runtime assertions (torch._check on a data-dependent value): nothing later
        # reads them, but they must still run. torch's serializer needs one output, so
        # the step hands its first input back unchanged.
        outputs = [next(iter(user_inputs))]

    graph = Graph()
    env: dict[Node, Node] = {}
    for arg in (*const_inputs, *user_inputs):
        placeholder = graph.placeholder(arg.name)
        placeholder.meta = copy.copy(arg.meta)
        env[arg] = placeholder
    for node in nodes:
        env[node] = graph.node_copy(node, lambda a: env[a])
    graph.output(tuple(env[n] for n in outputs))
    _check_names_kept(env)

    input_specs = [_constant_input_spec(constants[a.name], env[a].name) for a in const_inputs]
    input_specs += [InputSpec(InputKind.USER_INPUT, _argument(env[a]), target=None) for a in user_inputs]
    output_specs = [OutputSpec(OutputKind.USER_OUTPUT, _argument(n), target=None) for n in outputs]
    state_dict, tensor_constants = {}, {}
    for arg in const_inputs:
        spec = constants[arg.name]
        if spec.target in ep.state_dict:
            state_dict[spec.target] = ep.state_dict[spec.target]
        else:
            tensor_constants[spec.target] = ep.constants[spec.target]

    program = ExportedProgram(
        root=ep.graph_module,
        graph=graph,
        graph_signature=ExportGraphSignature(input_specs, output_specs),
        state_dict=state_dict,
        range_constraints=dict(ep.range_constraints),
        module_call_graph=[_call_entry(len(user_inputs), len(outputs))],
        constants=tensor_constants,
        verifiers=list(ep.verifiers),
    )
    return Subprogram(
        program,
        tuple(a.name for a in user_inputs),
        tuple(n.name for n in outputs),
    )


def _constant_input_spec(spec: InputSpec, name: str) -> InputSpec:
    return InputSpec(spec.kind, TensorArgument(name=name), spec.target, spec.persistent)


def _call_entry(n_inputs: int, n_outputs: int) -> ModuleCallEntry:
    """The calling convention of the subprogram: flat positional tensors in and out."""
    _, in_spec = pytree.tree_flatten((tuple(range(n_inputs)), {}))
    _, out_spec = pytree.tree_flatten(tuple(range(n_outputs)))
    return ModuleCallEntry("", ModuleCallSignature([], [], in_spec, out_spec))


def _check_names_kept(env: dict[Node, Node]) -> None:
    """Compute nodes keep their names (a backend may refuse one by name); placeholders
    may not, when a user named an input after a Python builtin such as ``input``."""
    for old, new in env.items():
        if old.op != "placeholder" and old.name != new.name:
            raise RuntimeError(f"node {old.name} was renamed {new.name} while cutting a partition")
