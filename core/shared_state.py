"""A buffer one method of a program changes is state in every method that reads it.

torch.export records a buffer as state (a mutated buffer) only in the method that
writes it. In a method that only reads it, the same buffer looks like a weight: constant
folding and the backends took its export-time value, so `read` after `write` returned
zeros while the program's state held the new values. `read_state_as_state` marks such a
buffer as written back unchanged, the program torch.export itself makes of
``buffer.copy_(buffer)``: every later stage (folding, support, partitioning, the plan's
state reads) then treats it as the program state it is. The write-back is of the value
read, so running the method changes nothing.
"""

from __future__ import annotations

from typing import Iterable

from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind, OutputSpec, TensorArgument


def read_state_as_state(programs: Iterable[ExportedProgram]) -> None:
    """In place: in each program, every buffer another program mutates and this one
    only reads becomes a buffer it writes back unchanged."""
    programs = list(programs)
    state = {fqn for program in programs for fqn in program.graph_signature.buffers_to_mutate.values()}
    for program in programs:
        signature = program.graph_signature
        written = set(signature.buffers_to_mutate.values())
        placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        read = [(placeholders[spec.arg.name], spec.target) for spec in signature.input_specs
                if spec.kind == InputKind.BUFFER and spec.target in state and spec.target not in written]
        if not read:
            continue
        output = program.graph.output_node()
        output.args = ((*(node for node, _ in read), *output.args[0]),)  # mutations come first
        signature.output_specs[:0] = [OutputSpec(OutputKind.BUFFER_MUTATION, TensorArgument(node.name), fqn)
                                      for node, fqn in read]
        program.graph_module.recompile()
