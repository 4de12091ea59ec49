"""The artifact format: an ``.mlpackage`` directory, zipped, and what can be read back.

The zip holds one top directory, ``model.mlpackage/``. It is written so that the same
model always gives the same bytes, in any process: files in sorted order, fixed
timestamps, no compression, the conversion date dropped from the model's metadata, the
spec serialized with its maps in key order, and the package manifest's item
identifiers (random UUIDs in coremltools' output) derived from the item paths.

Off macOS nothing can run the model, but the package can still be read back: its
spec (`describe`) and its MIL program, re-loaded and type-checked by coremltools
(`validate`).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import uuid
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import edgeport

from . import toolchain

PACKAGE = "model.mlpackage"
_CONVERSION_DATE = "com.github.apple.coremltools.conversion_date"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry
_MANIFEST_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/edgeport/mlpackage-items")


# -- writing ------------------------------------------------------------------------------


def _derive_item_identifiers(package: Path) -> None:
    """Replace the manifest's random item identifiers with ones derived from item paths."""
    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    renamed = {
        old: str(uuid.uuid5(_MANIFEST_NAMESPACE, item["path"])) for old, item in manifest["itemInfoEntries"].items()
    }
    manifest["itemInfoEntries"] = {renamed[old]: item for old, item in manifest["itemInfoEntries"].items()}
    manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")


def _zip_tree(root: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        # Directories get entries too: an empty weights/ directory is still a manifest item.
        for path in sorted(root.rglob("*")):
            name = f"{PACKAGE}/{path.relative_to(root).as_posix()}"
            if path.is_dir():
                entry = zipfile.ZipInfo(name + "/", date_time=_ZIP_EPOCH)
                entry.external_attr = 0o755 << 16 | 0x10  # rwxr-xr-x, and the MS-DOS directory flag
                archive.writestr(entry, b"")
            else:
                entry = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
                entry.external_attr = 0o644 << 16  # rw-r--r--, whatever the umask
                archive.writestr(entry, path.read_bytes())
    return buffer.getvalue()


def _serialize_spec_deterministically(package: Path) -> None:
    """Write the root model spec again with protobuf maps in key order.

    coremltools serializes maps (op attributes, metadata, ...) in hash order, which
    changes from one Python process to the next.
    """
    ct = toolchain.coremltools()
    (spec_path,) = package.glob("Data/*/model.mlmodel")
    spec = ct.proto.Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def package_bytes(mlmodel: Any) -> bytes:
    """The zipped ``.mlpackage`` of a converted `coremltools.models.MLModel`, whose own
    temporary package is deleted (`discard`): the model is used up."""
    metadata = mlmodel.user_defined_metadata
    if _CONVERSION_DATE in metadata:
        del metadata[_CONVERSION_DATE]  # changes daily, and the same model must give the same bytes
    with tempfile.TemporaryDirectory(prefix="edgeport-coreml-") as tmp:
        package = Path(tmp) / PACKAGE
        with toolchain.quiet():
            mlmodel.save(str(package))
        discard(mlmodel)
        _serialize_spec_deterministically(package)
        _derive_item_identifiers(package)
        return _zip_tree(package)


def discard(mlmodel: Any) -> None:
    """Delete a converted model's temporary ``.mlpackage`` directory now. coremltools
    deletes it at interpreter exit (atexit): a session that exported many models kept
    every one in /tmp until then (the test suite held 300+), and a killed one left them."""
    if getattr(mlmodel, "is_temp_package", False):
        shutil.rmtree(mlmodel.package_path, ignore_errors=True)


# -- reading ------------------------------------------------------------------------------


def weight_bytes(data: bytes) -> int:
    """Bytes of the package's weight files (``weights/*.bin``): the weights as stored,
    compressed or not (small constants live in the spec instead)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return sum(i.file_size for i in archive.infolist() if "/weights/" in i.filename and i.filename.endswith(".bin"))


def extract(data: bytes, destination: Path) -> Path:
    """Unzip an artifact into ``destination``; returns the ``.mlpackage`` path."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise edgeport.BackendError(
            "the Core ML artifact is not a zip archive", hint="compile the partition again with the coreml backend"
        ) from None
    root = destination.resolve()
    with archive:
        for name in archive.namelist():
            target = (root / name).resolve()
            if not name.startswith(f"{PACKAGE}/") or root not in target.parents:  # no ../ or absolute paths
                raise edgeport.BackendError(f"the Core ML artifact holds an unexpected path {name!r}")
        archive.extractall(root)
    return root / PACKAGE


@contextlib.contextmanager
def opened(data: bytes) -> Iterator[Path]:
    """The artifact unzipped into a temporary directory, for as long as the block runs."""
    with tempfile.TemporaryDirectory(prefix="edgeport-coreml-") as tmp:
        yield extract(data, Path(tmp))


@dataclass(frozen=True)
class Feature:
    """One input or output of a Core ML model, as its spec declares it."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # ArrayFeatureType name: "FLOAT32", "FLOAT16", "INT32"


@dataclass(frozen=True)
class Description:
    """What a Core ML model spec declares: its interface and the MIL ops it runs."""

    specification_version: int
    inputs: tuple[Feature, ...]
    outputs: tuple[Feature, ...]
    mil_ops: dict[str, int]  # MIL op type -> count, consts left out; sorted by op type


def _feature(ct: Any, feature: Any) -> Feature:
    array = feature.type.multiArrayType
    dtype = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType)
    return Feature(feature.name, tuple(int(d) for d in array.shape), dtype)


def _count_ops(block: Any, counts: Counter) -> None:
    for operation in block.operations:
        if operation.type != "const":
            counts[operation.type] += 1
        for nested in operation.blocks:
            _count_ops(nested, counts)


def describe(spec: Any) -> Description:
    """The interface and MIL op counts of a Core ML model spec (a ``Model`` proto)."""
    ct = toolchain.coremltools()
    counts: Counter = Counter()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            _count_ops(block, counts)
    return Description(
        specification_version=spec.specificationVersion,
        inputs=tuple(_feature(ct, f) for f in spec.description.input),
        outputs=tuple(_feature(ct, f) for f in spec.description.output),
        mil_ops=dict(sorted(counts.items())),
    )


def load_spec(package: Path) -> Any:
    """The ``Model`` proto at the root of an unzipped package."""
    ct = toolchain.coremltools()
    with toolchain.quiet():
        return ct.utils.load_spec(str(package))


def validate(package: Path) -> Any:
    """Load the package's ML program back through coremltools' MIL reader and validate it.

    The reader rebuilds every op from the saved proto and weights, which re-runs
    coremltools' type inference on each; `Program.validate` then checks the graph.
    Returns the rebuilt MIL program; raises `edgeport.BackendError` if any check fails.
    """
    spec = load_spec(package)
    if spec.WhichOneof("Type") != "mlProgram":
        raise edgeport.BackendError(f"the Core ML package holds a {spec.WhichOneof('Type')}, not an ML program")
    from coremltools.converters.mil.frontend.milproto.load import load as load_mil

    weights = next(package.glob("Data/*/weights"), None)
    try:
        with toolchain.quiet():
            program = load_mil(spec, spec.specificationVersion, file_weights_dir=str(weights or ""))
            program.validate()
    except Exception as error:
        raise edgeport.BackendError(f"the Core ML package fails coremltools' checks: {error}") from error
    return program
