"""The native CUDA extension backend (fused_dsconv._C). Filled in by the CUDA kernels work."""
from __future__ import annotations

from . import Backend, register


class NativeBackend(Backend):
    name = "native"

    def unavailable(self, x):
        return "the native CUDA extension (fused_dsconv._C) is not part of this build yet"


register(NativeBackend())
