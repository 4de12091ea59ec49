"""The bytes of a mediatek artifact: the TFLite model, plus its AOT-compiled form if any.

Without the NeuroPilot SDK the artifact is the plain TFLite model (".tflite"); a device
compiles it for its APU on first load. With the SDK it is a stored zip of both the
plain model and the AOT-compiled one (".zip"): the compiled model replaces what the
plugin took with NeuroPilot bytecode, which only an APU runs, so the plain model stays
beside it for LiteRT's CPU reference anywhere else.
"""

from __future__ import annotations

import io
import zipfile

import edgeport

PLAIN = "model.tflite"
COMPILED = "model_apu.tflite"


def pack(plain: bytes, compiled: bytes) -> bytes:
    """Both models in one stored (uncompressed) zip."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr(PLAIN, plain)
        z.writestr(COMPILED, compiled)
    return out.getvalue()


def unpack(data: bytes, aot: bool) -> tuple[bytes, bytes | None]:
    """(plain model, AOT-compiled model or None) from an artifact's bytes."""
    if not aot:
        return data, None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return z.read(PLAIN), z.read(COMPILED)
    except (zipfile.BadZipFile, KeyError) as e:
        raise edgeport.ProgramError(
            f"mediatek artifact says it is AOT-compiled but is not a zip of {PLAIN} and {COMPILED}: {e}",
            hint="re-export the program",
        ) from None
