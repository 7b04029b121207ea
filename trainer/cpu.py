"""Settings the CPU back end needs before MindSpore loads. Imports no MindSpore.

On x86 CPUs with AVX-512, MindSpore 2.10 hands oneDNN plain NCHW convolutions that its AVX-512
kernels reject, so oneDNN falls back to a reference kernel: 7-28x slower ResNet training.
Capping oneDNN at AVX2 selects its fast ``gemm:jit`` kernel (measured here: ResNet-50 at 32x32 goes
from 10.6 to 76.8 img/s). oneDNN reads the variable once, when it loads, so this must run first.
"""
from __future__ import annotations

import logging
import os
import platform
from typing import MutableMapping, Optional

logger = logging.getLogger(__name__)

ISA_VARIABLE = "ONEDNN_MAX_CPU_ISA"
_X86 = {"x86_64", "amd64", "i386", "i686", "x86"}


def configure_cpu_backend(environ: MutableMapping[str, str] = os.environ,
                          machine: Optional[str] = None) -> None:
    """Cap oneDNN at AVX2 on x86, unless the user set ``ONEDNN_MAX_CPU_ISA`` already.

    Call it at the start of the trainer process, before ``import mindspore``: this is the one
    place where the trainer sets its own environment.

    Args:
        environ: the environment to update (the process's own by default).
        machine: the CPU architecture; ``platform.machine()`` by default.
    """
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine in _X86 and ISA_VARIABLE not in environ:
        environ[ISA_VARIABLE] = "AVX2"
        logger.debug("set %s=AVX2 (oneDNN's AVX-512 path falls back to a reference conv kernel)",
                     ISA_VARIABLE)
