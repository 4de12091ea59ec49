"""The Core ML backend: partitions become Core ML ML programs, converted by coremltools.

coremltools converts anywhere; Core ML runs only on macOS. Here on Linux the backend
compiles, and says plainly that it cannot run (`availability`, `load`).

Quantized, it compresses weights at compile time (compress.py: int8 through coremltools'
`linear_quantize_weights`, palettize4/6 through `palettize_weights`, per-block int4 by
edgeport's own pass, int4_blocks.py), and for int8 also quantizes activations: its PT2E quantizer
(quantize.py) annotates where Core ML's activation quantization goes, the core
calibrates those edges on the user's batches, and coremltools converts the
quantize/dequantize pairs into MIL ones. The scheme reaches `compile` in the options
(`scheme`, `group_size`), so the manifest records it with each artifact.

Registering it and `load` import no torch (the run side); `support`, `keep_ops` and
`compile` import the torch half (support.py, convert.py) when called.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import edgeport
from edgeport.backend import FP16_OP_ERROR
from edgeport.support import DATA_MOVEMENT, SLICING

from . import compress, package, runtime, toolchain
from .options import CoreMLOptions

if TYPE_CHECKING:
    from torch.export import ExportedProgram
    from torch.fx import Node

    from .convert import TensorSpec
    from .support import ConverterRegistry

# The dtype coremltools stores the float weights of a model of each compute precision in
# (an fp16 model's constants are cast to fp16; compress.py then compresses some of them).
FLOAT_WEIGHTS = {"fp16": "float16", "fp32": "float32"}


class CoreMLBackend(edgeport.Backend):
    """Apple Core ML through coremltools: ML programs for the Neural Engine, GPU and CPU."""

    name = "coreml"
    options = CoreMLOptions
    # A lone dtype cast is a copy too: Core ML's call costs more than the cast.
    rules = edgeport.PartitionRules(never_alone=DATA_MOVEMENT | SLICING | {"aten._to_copy.default"})
    schemes = frozenset(compress.SCHEMES)
    schemes_declined = {
        "int8-dynamic": "Core ML quantizes activations only with calibrated (static) ranges; "
                        "use int8, or int4-weight / palettize4 / palettize6 for weights alone",
        "a16w8": "Core ML's activation quantization is 8-bit (linear_quantize_activations: int8 or uint8 only)",
    }

    def __init__(self) -> None:
        self._registry: ConverterRegistry | None = None

    def _converters(self) -> ConverterRegistry:
        if self._registry is None:
            from .support import ConverterRegistry

            self._registry = ConverterRegistry()
        return self._registry

    @property
    def version(self) -> str:
        installed = toolchain.installed_version()
        return f"coremltools {installed}" if installed else "coremltools (not installed)"

    def availability(self) -> edgeport.Availability:
        try:
            toolchain.coremltools()
        except edgeport.BackendError as error:
            missing = f"{error}; {error.hint}"
            if runtime.runs_here():
                return edgeport.Availability(False, False, why=missing)
            # off macOS no install makes it run: a device without coremltools was told to install it
            return edgeport.Availability(False, False, why=f"{runtime.why_not_here()}; compile: {missing}")
        if not runtime.runs_here():
            return edgeport.Availability(True, False, why=runtime.why_not_here())
        return edgeport.Availability(True, True)

    def keep_ops(self) -> set[Any]:
        from .support import KEEP_OPS

        return set(KEEP_OPS)

    def support(self, node: Node, ctx: edgeport.SupportContext) -> edgeport.Support:
        from .support import check_node

        try:
            return check_node(self._converters(), node)
        except edgeport.BackendError as error:
            return edgeport.Support.no(f"{error}; {error.hint}")
        except Exception as error:  # support() must answer, never raise
            return edgeport.Support.no(f"could not check {node.target} against coremltools: {error}")

    def quantizer(self, scheme: edgeport.Scheme, options: CoreMLOptions) -> Any:
        from .quantize import CoreMLQuantizer  # imports torchao

        compress.check_target(toolchain.coremltools(), scheme.name, options.minimum_deployment_target)
        return CoreMLQuantizer(scheme)

    def compile(self, program: ExportedProgram, options: CoreMLOptions) -> edgeport.Artifact:
        from .convert import convert_partition

        ct = toolchain.coremltools()
        started = time.perf_counter()
        if options.scheme != "none":
            compress.check_target(ct, options.scheme, options.minimum_deployment_target)
        mlmodel, inputs, outputs = convert_partition(ct, self._converters(), program, options)
        if options.scheme != "none":
            mlmodel = compress.compress_weights(ct, mlmodel, options.scheme, options.group_size, program)
        description = package.describe(mlmodel.get_spec())
        metadata = {
            "coremltools": toolchain.installed_version(),
            "specification_version": description.specification_version,
            "inputs": _interface(inputs, description.inputs),
            "outputs": _interface(outputs, description.outputs),
            "mil_ops": description.mil_ops,
        }
        if options.scheme != "none":
            metadata["scheme"] = options.scheme
        data = package.package_bytes(mlmodel)
        metadata["weight_bytes"] = package.weight_bytes(data)
        metadata["float_weights"] = FLOAT_WEIGHTS[options.compute_precision]  # those left uncompressed
        toolchain.LOG.info(
            "coremltools converted %d nodes into %d MIL ops in %.2f s",
            sum(1 for n in program.graph.nodes if n.op == "call_function"),
            sum(description.mil_ops.values()),
            time.perf_counter() - started,
        )
        return edgeport.Artifact(data=data, suffix=".mlpackage.zip", metadata=metadata)

    def compile_stateful(self, program: ExportedProgram, options: CoreMLOptions,
                         output_names: list[str]) -> edgeport.Artifact:
        """A whole method whose mutated buffers (a KV cache) become Core ML states
        (iOS 18+): the form a Core ML app runs with ``MLState`` (stateful.py)."""
        from .stateful import compile_stateful

        return compile_stateful(program, options, output_names)

    def tolerance(self, options: CoreMLOptions) -> float:
        # Compressed weights (against the float reference; int8 activations are in the
        # reference too): ~1e-1, as the contract suggests for int8. fp16 compute: 2e-2 is
        # what the conformance cases need on macOS (tests/backends/coreml).
        if options.scheme != "none":
            return 1e-1
        return 2e-2 if options.compute_precision == "fp16" else super().tolerance(options)

    def op_error(self, options: CoreMLOptions) -> float:
        return FP16_OP_ERROR if options.compute_precision == "fp16" else super().op_error(options)

    def load(self, artifact: edgeport.Artifact) -> runtime.CoreMLExecutable:
        if not runtime.runs_here():
            raise edgeport.BackendError(
                runtime.why_not_here(),
                hint="run this program on a Mac, or ask for reference execution (edgeport run --reference)",
            )
        options = artifact.options if isinstance(artifact.options, CoreMLOptions) else CoreMLOptions()
        return runtime.CoreMLExecutable(artifact.data, artifact.metadata, options.compute_units)


def _interface(specs: list[TensorSpec], features: tuple[package.Feature, ...]) -> list[dict[str, Any]]:
    """Pair each partition input/output with the Core ML feature that carries it.

    Raises `edgeport.BackendError` when coremltools changed the interface: a count,
    shape or carrier dtype that differs from the partition's.
    """
    from .convert import CARRIER

    if len(specs) != len(features):
        raise edgeport.BackendError(
            f"coremltools made {len(features)} features for the partition's {len(specs)} values "
            f"({', '.join(s.name for s in specs)})"
        )
    pairs = []
    for spec, feature in zip(specs, features):
        if feature.shape != spec.shape or feature.dtype != CARRIER[spec.dtype]:
            raise edgeport.BackendError(
                f"coremltools turned partition value {spec.name} ({spec.dtype}, {list(spec.shape)}) into "
                f"feature {feature.name} ({feature.dtype}, {list(feature.shape)}), "
                f"expected {CARRIER[spec.dtype]}, {list(spec.shape)}",
                hint="a node before it is probably converted wrongly: report it as a coreml KNOWN_BAD entry",
            )
        pairs.append(
            {
                "name": spec.name,
                "shape": list(spec.shape),
                "dtype": str(spec.dtype).removeprefix("torch."),
                "coreml_name": feature.name,
                "coreml_dtype": feature.dtype,
            }
        )
    return pairs
