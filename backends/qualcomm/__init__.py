"""The qualcomm backend plugin: Snapdragon NPUs through ONNX Runtime's QNN execution provider.

Importing this package is cheap: onnxruntime, onnxruntime-qnn, onnx and qai-hub are
imported only when a compile, a run or an AI Hub call needs them.
"""

import edgeport

from .backend import QualcommBackend
from .options import QualcommOptions

__all__ = ["QualcommBackend", "QualcommOptions"]


@edgeport.hookimpl
def edgeport_register_backends(register):
    register(QualcommBackend())


@edgeport.hookimpl
def edgeport_register_commands(cli):
    from .cli import hub_group

    cli.add_command(hub_group)
