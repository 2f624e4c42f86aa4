"""GPU targets of the plan: memory, peak bf16 FLOP/s, HBM bandwidth and XLA's target descriptions.

The `*_PBTXT` strings are XLA `GpuTargetConfig` protos (the device description XLA:GPU
compiles against), so `jax.experimental.topologies.get_topology_desc("aot", "cuda", ...)`
can compile for these GPUs on a machine without one (needs the jax-cuda12 plugin wheels).
"""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class Gpu:
    """One GPU model. `memory_bytes` is what the CUDA driver reports (device_memory_size)."""

    name: str
    memory_bytes: int
    peak_flops: float  # dense bf16 tensor-core FLOP/s
    hbm_bandwidth: float  # bytes/s
    target_config: str  # XLA GpuTargetConfig text proto


@dataclasses.dataclass(frozen=True)
class Target:
    """`count` GPUs of one kind on one host, e.g. "h100x4"."""

    gpu: Gpu
    count: int

    @property
    def name(self) -> str:
        return f"{self.gpu.name}x{self.count}"


H100_PBTXT = """gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 84929347584
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {
    major: 9
  }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
runtime_version: {
  major: 12
  minor: 8
  patch: 0
}
platform_name: "CUDA"
dnn_version_info {
  major: 9
  minor: 7
}
device_description_str: "NVIDIA H100 80GB HBM3"
"""

H200_PBTXT = """gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 4800000000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 150117023744
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {
    major: 9
  }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
runtime_version: {
  major: 12
  minor: 8
  patch: 0
}
platform_name: "CUDA"
dnn_version_info {
  major: 9
  minor: 7
}
device_description_str: "NVIDIA H200"
"""

# Spec-sheet numbers (SXM): 989 TFLOP/s dense bf16 on both; HBM3 3.35 TB/s, HBM3e 4.8 TB/s.
GPUS = {
    "h100": Gpu("h100", 84_929_347_584, 989e12, 3.35e12, H100_PBTXT),
    "h200": Gpu("h200", 150_117_023_744, 989e12, 4.8e12, H200_PBTXT),
}


def parse_target(name: str) -> Target:
    """"h100x4" -> 4 H100s (one host); a bare "h200" is one GPU."""
    m = re.fullmatch(r"([a-z0-9]+?)(?:x(\d+))?", name.strip().lower())
    if not m or m.group(1) not in GPUS or (m.group(2) is not None and int(m.group(2)) < 1):
        raise ValueError(f"unknown target {name!r}; expected <gpu>x<count> with gpu in {sorted(GPUS)}, e.g. h100x4.")
    return Target(GPUS[m.group(1)], int(m.group(2) or 1))
