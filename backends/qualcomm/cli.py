"""``edgeport hub``: Qualcomm AI Hub commands, added to the CLI by the qualcomm plugin."""

from __future__ import annotations

import click

from . import hub


@click.group(name="hub")
def hub_group() -> None:
    """Run qualcomm partitions on real Snapdragon devices through Qualcomm AI Hub
    (needs an API token: `qai-hub configure --api_token ...`)."""


@hub_group.command()
@click.option("--name", default="", help="Only devices whose name contains this (any case), e.g. Galaxy.")
def devices(name: str) -> None:
    """List AI Hub devices that run QNN."""
    for device in hub.list_devices(hub.connect(), name=name, attributes=["framework:qnn"]):
        hexagon = f"Hexagon {device.hexagon}" if device.hexagon else "no Hexagon NPU"
        click.echo(f"{device.name}\t{device.os}\t{device.chipset}\t{hexagon}")


@hub_group.command()
@click.argument("program", type=click.Path(exists=True, dir_okay=False))
@click.option("--device", required=True, help='AI Hub device name, e.g. "Samsung Galaxy S24 (Family)".')
def profile(program: str, device: str) -> None:
    """Profile every qualcomm partition of PROGRAM on DEVICE; prints on-device latency."""
    import edgeport

    artifacts = hub.qualcomm_artifacts(edgeport.load(program))
    click.echo(hub.format_profiles(hub.profile_artifacts(hub.connect(), artifacts, device)))
