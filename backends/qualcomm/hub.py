"""Qualcomm AI Hub: run compiled qualcomm partitions on real Snapdragon devices.

Here QNN runs in its simulator, whose timings say nothing about a phone. AI Hub
(`qai-hub`, Qualcomm's hosted device farm) does: each qualcomm artifact already holds a
QNN context binary compiled for one SoC, so we upload exactly that binary (AI Hub's
"QNN context binary" model type, `.bin`) and submit a profiling inference job on the
named device. Nothing is recompiled on the Hub, so the latency is that of our artifact.

Every function takes an explicit `qai_hub.Client` (see `connect`), so the CLI and the
tests choose where requests go. Errors are `edgeport.BackendError` saying what to do.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import edgeport

from .qnn_runtime import context_binary

if TYPE_CHECKING:
    import qai_hub

CONFIGURE_HINT = (
    "get your API token at https://aihub.qualcomm.com (Account → Settings), then run "
    "`qai-hub configure --api_token <token>` (it writes ~/.qai_hub/client.ini)"
)


@dataclass(frozen=True)
class HubDevice:
    """A device AI Hub can run jobs on, with the attributes edgeport cares about."""

    name: str
    os: str
    chipset: str  # e.g. "qualcomm-snapdragon-8gen3"
    hexagon: str  # HTP generation, e.g. "v75"; "" when the device has no Hexagon NPU
    attributes: tuple[str, ...]


@dataclass(frozen=True)
class PartitionProfile:
    """One partition's on-device measurement."""

    partition: str
    device: str
    latency_ms: float  # AI Hub's estimated_inference_time (µs) in milliseconds
    job_url: str
    compute_units: Mapping[str, int]  # layers per compute unit (NPU, GPU, CPU)


def connect(config: qai_hub.ClientConfig | None = None) -> qai_hub.Client:
    """A qai-hub client: from `config`, else from qai-hub's own config file.

    The file is the one `qai-hub configure` writes (~/.qai_hub/client.ini, or the path
    in $QAIHUB_CLIENT_INI). Without a token this fails now, not at the first request.
    """
    import qai_hub
    from qai_hub import api_utils

    if config is None:
        try:
            config = api_utils.load_default_api_config()
        except Exception as exc:  # missing file, or a file without [api] fields
            raise edgeport.BackendError(
                f"no Qualcomm AI Hub API token configured ({_first_line(exc)})", hint=CONFIGURE_HINT
            ) from None
    if not config.api_token:
        raise edgeport.BackendError("no Qualcomm AI Hub API token configured", hint=CONFIGURE_HINT)
    return qai_hub.Client(config=config)


def list_devices(client: qai_hub.Client, name: str = "", attributes: Iterable[str] = ()) -> list[HubDevice]:
    """Devices on AI Hub, optionally filtered: those whose name contains ``name`` (any
    case; AI Hub's own name filter matches whole names only), with all ``attributes``
    (e.g. ["framework:qnn"])."""
    with _hub_errors(client):
        devices = client.get_devices(attributes=list(attributes))
    return [_hub_device(d) for d in devices if name.casefold() in d.name.casefold()]


def qualcomm_artifacts(program: edgeport.Program) -> dict[str, edgeport.Artifact]:
    """Every qualcomm partition of a loaded program, as "<method>/partition <n>" -> Artifact."""
    found: dict[str, edgeport.Artifact] = {}
    for method, plan in program.manifest.methods.items():
        for step in plan.steps:
            if step.kind == "delegate" and step.backend == "qualcomm":
                info = program.manifest.artifacts[step.artifact]
                found[f"{method}/partition {step.partition}"] = edgeport.Artifact(
                    data=edgeport.as_bytes(program.files[step.artifact]), suffix=".onnx", metadata=info.metadata
                )
    if not found:
        raise edgeport.BackendError(
            "this program has no qualcomm partition to profile",
            hint="export it with --backend qualcomm (see `edgeport explain` for where nodes went)",
        )
    return found


def profile_artifacts(
    client: qai_hub.Client, artifacts: Mapping[str, edgeport.Artifact], device: str
) -> list[PartitionProfile]:
    """Profile each qualcomm artifact (partition name -> Artifact) on `device`.

    A profiling inference job per partition (qai-hub 0.56 folds profile jobs into
    `submit_inference_job(profile=True)`, random inputs). Jobs are all submitted first,
    then awaited, so the device farm runs them side by side.
    """
    import qai_hub

    target = _find_device(client, device)
    for partition, artifact in artifacts.items():  # all checked before anything is uploaded
        _check_arch(artifact, target, partition)
    jobs = []
    with tempfile.TemporaryDirectory(prefix="edgeport-hub-") as tmp, _hub_errors(client):
        for partition, artifact in artifacts.items():
            path = os.path.join(tmp, f"{_safe(partition)}.bin")  # .bin = QNN context binary
            with open(path, "wb") as f:
                f.write(context_binary(artifact.data))
            model = client.upload_model(path, name=f"edgeport {partition}")
            job = client.submit_inference_job(
                model, qai_hub.Device(target.name, target.os), name=f"edgeport {partition}", profile=True
            )
            jobs.append((partition, job))
        return [_profile_of(partition, job, target.name) for partition, job in jobs]


def format_profiles(profiles: Iterable[PartitionProfile]) -> str:
    """A plain table: partition, device, latency, compute units, job link."""
    rows = [("partition", "device", "latency (ms)", "compute units", "job")]
    for p in profiles:
        units = ", ".join(f"{unit} {count}" for unit, count in sorted(p.compute_units.items())) or "-"
        rows.append((p.partition, p.device, f"{p.latency_ms:.3f}", units, p.job_url))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _find_device(client: qai_hub.Client, name: str) -> HubDevice:
    devices = list_devices(client, name=name)
    if not devices:
        known = ", ".join(sorted({d.name for d in list_devices(client, attributes=["framework:qnn"])}))
        raise edgeport.BackendError(f"AI Hub has no device named {name!r}", hint=f"devices with QNN: {known}")
    device = devices[0]
    if "framework:qnn" not in device.attributes:
        raise edgeport.BackendError(f"AI Hub device {name!r} cannot run QNN context binaries")
    return device


def _check_arch(artifact: edgeport.Artifact, device: HubDevice, partition: str) -> None:
    """A context binary runs only on the HTP generation it was compiled for."""
    wanted = f"v{artifact.metadata.get('htp_arch')}"
    if device.hexagon and device.hexagon != wanted:
        raise edgeport.BackendError(
            f"partition {partition} was compiled for {artifact.metadata.get('soc')} (HTP {wanted}); "
            f"{device.name} has HTP {device.hexagon}",
            hint="recompile with --option qualcomm.soc=<the device's SoC> or pick a device with that chipset",
        )


def _profile_of(partition: str, job: Any, device: str) -> PartitionProfile:
    profile = job.download_profile()
    status = job.get_status()
    if not status.success:
        raise edgeport.BackendError(
            f"AI Hub job for partition {partition} failed: {status.message or status.code}",
            hint=f"see {job.url}",
        )
    latency_us = profile["execution_summary"]["estimated_inference_time"]
    units: dict[str, int] = {}
    for layer in profile.get("execution_detail", []):
        units[layer["compute_unit"]] = units.get(layer["compute_unit"], 0) + 1
    return PartitionProfile(partition, device, latency_us / 1000.0, job.url, units)


def _hub_device(device: Any) -> HubDevice:
    def attribute(prefix: str) -> str:
        return next((a.split(":", 1)[1] for a in device.attributes if a.startswith(prefix + ":")), "")

    return HubDevice(device.name, device.os, attribute("chipset"), attribute("hexagon"), tuple(device.attributes))


@contextlib.contextmanager
def _hub_errors(client: qai_hub.Client) -> Iterator[None]:
    """Turn qai-hub and network failures into one BackendError that says what to do."""
    import qai_hub
    import requests

    try:
        yield
    except (qai_hub.Error, requests.RequestException) as exc:
        url = client.config.api_url
        text = _first_line(exc)
        if _caused_by(exc, (requests.ConnectionError, requests.Timeout)):
            raise edgeport.BackendError(
                f"cannot reach Qualcomm AI Hub at {url}", hint="check the network connection or proxy"
            ) from exc
        if _status_code(exc) in (401, 403):
            raise edgeport.BackendError(
                f"Qualcomm AI Hub rejected the API token: {text}", hint=CONFIGURE_HINT
            ) from exc
        raise edgeport.BackendError(f"Qualcomm AI Hub: {text}") from exc


def _status_code(exc: BaseException | None) -> int | None:
    """The HTTP status qai-hub recorded anywhere in the exception chain."""
    while exc is not None:
        if isinstance(getattr(exc, "status_code", None), int):
            return exc.status_code
        exc = exc.__cause__ or exc.__context__
    return None


def _caused_by(exc: BaseException | None, kind: type | tuple[type, ...]) -> bool:
    while exc is not None:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _first_line(exc: BaseException) -> str:
    lines = [line.strip(" │|─-") for line in str(exc).splitlines()]
    return next((line for line in lines if line and not line.startswith("Internal API failure")), type(exc).__name__)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "partition"
