"""The mediatek backend's compile options, and the SoC names it accepts.

SoC names are LiteRT's: the `SocModel` enum of its MediaTek AOT target
(`ai_edge_litert/aot/vendors/mediatek/target.py`), read when a partition is compiled so
that importing this module stays free of LiteRT.
"""

from __future__ import annotations

from dataclasses import dataclass

import edgeport


def soc_models() -> list[str]:
    """Every SoC name LiteRT's MediaTek target knows, in its own order."""
    from ai_edge_litert.aot.vendors.mediatek import target

    return [m.value for m in target.SocModel if m != target.SocModel.ALL]


@dataclass(frozen=True)
class MediatekOptions:
    # MT6989 is the Dimensity 9300; any SocModel name of LiteRT's MediaTek target works.
    soc: str = edgeport.option("MT6989", choices=soc_models)
    # Store weights as float16 (half the artifact). The APU computes in fp16 either way:
    # LiteRT's MediaTek plugin relaxes fp32 to fp16 for every model it compiles.
    fp16: bool = False
    # Threads of the CPU reference run (and of the CPU fallback on a device); 0 = all cores.
    threads: int = edgeport.option(0, at_least=0, at_most=256)


def check_soc(soc: str) -> str:
    """`soc` as LiteRT spells it (upper case), or a BackendError listing the valid names."""
    known = soc_models()
    name = soc.strip().upper()
    if name not in known:
        raise edgeport.BackendError(
            f"mediatek soc {soc!r} is not a SoC LiteRT's MediaTek target knows",
            hint=f"pass --option mediatek.soc=NAME with one of: {', '.join(known)}",
        )
    return name


def np_version(soc: str) -> str:
    """The NeuroPilot SDK version LiteRT compiles `soc` with ("v8", "v9")."""
    from ai_edge_litert.aot.vendors.mediatek import target

    return target.map_soc_to_np_version(target.SocModel(soc))
