"""What every benchmark script records about the machine it ran on."""
from __future__ import annotations

import platform


def cpu_model() -> str:
    """The CPU as /proc/cpuinfo names it, with family, model and the widest AVX: absolute speeds
    differ 3x between these machines (``AMD EPYC (family 25, model 17, avx512)``)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return platform.processor() or "unknown"
    flags = fields.get("flags", "").split()
    avx = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "no avx2"
    return f"{fields.get('model name', 'unknown')} (family {fields.get('cpu family', '?')}, " \
           f"model {fields.get('model', '?')}, {avx})"
