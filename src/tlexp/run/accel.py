"""Speed options that depend on the machine: threads, precision `auto`, channels_last, torch.compile of the backbone."""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from tlexp.config.errors import ConfigError

log = logging.getLogger(__name__)

GPU_ACCELERATORS = ("gpu", "cuda", "auto")
# torch's thread count when the process started (OMP_NUM_THREADS, or a sweep launcher's cap): auto never goes
# above it, and a run that chose fewer does not lower it for the next run of an in-process sweep.
STARTING_THREADS = torch.get_num_threads()


def busy_cores(samples: int = 5, interval: float = 0.05) -> int:
    """Processes running right now besides this one (Linux /proc/loadavg), the median of a few looks.

    The load averages lag by a minute: right after a sweep's previous run ends they still count it.
    """
    try:
        looks = []
        for _ in range(samples):
            running = Path("/proc/loadavg").read_text().split()[3].split("/")[0]
            looks.append(int(running) - 1)
            time.sleep(interval)
        return max(0, round(statistics.median(looks)))
    except (OSError, IndexError, ValueError):
        return round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0


def resolve_threads(setting, accelerator: str, cores: int | None = None, busy: int | None = None) -> int | None:
    """torch's intra-op thread count. auto: on the CPU, the cores no other process is running on (at least 1,
    at most what is already allowed, e.g. by a sweep launcher's cap); on a GPU torch's own default (None).
    With another job on the cores, torch's default of one thread per core fights it and a step slows down."""
    if setting not in (None, "auto"):
        return int(setting)
    if on_gpu(accelerator):
        return None
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    busy = busy_cores() if busy is None else busy
    return max(1, min(STARTING_THREADS, cores - busy))


def on_gpu(accelerator: str, cuda_available: bool | None = None) -> bool:
    """Whether a Trainer with this accelerator will run on a CUDA GPU."""
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    return cuda and str(accelerator) in GPU_ACCELERATORS


def gpus_on_node(accelerator: str, devices, cuda_available: bool | None = None) -> int:
    """How many GPUs a Trainer with these arguments trains on in this node (0 = CPU)."""
    if not on_gpu(accelerator, cuda_available):
        return 0
    if isinstance(devices, str) and "," in devices:  # "0,1,3": those GPUs
        devices = [d for d in devices.split(",") if d.strip()]
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, Sequence) and not isinstance(devices, str):  # [0, 2] (a ListConfig too)
        return len(devices)
    return max(1, torch.cuda.device_count())  # -1, "auto", "-1": all of them


def processes_per_run(trainer: dict, cuda_available: bool | None = None) -> int:
    """The training processes a Trainer with this config starts, where the config alone tells (1 otherwise)."""
    devices = trainer.get("devices", 1)
    per_node = gpus_on_node(trainer.get("accelerator", "cpu"), devices, cuda_available)
    if not per_node:  # on the CPU only an explicit count starts several processes
        per_node = devices if isinstance(devices, int) and devices > 0 else 1
    return per_node * max(1, int(trainer.get("num_nodes", 1) or 1))


def resolve_precision(
    precision, accelerator: str, cuda_available: bool | None = None, bf16_supported: bool | None = None
) -> str:
    """`auto` -> bf16-mixed on a GPU that supports bf16 (Ampere and later), 16-mixed on older GPUs, 32-true on CPU.

    YAML cannot probe the GPU, so trainer configs say `precision: auto` and this decides at run time.
    Any other value goes to Lightning unchanged.
    """
    if str(precision) != "auto":
        return precision
    if not on_gpu(accelerator, cuda_available):
        return "32-true"  # mixed precision on CPU is slower than fp32 on most CPUs
    bf16 = torch.cuda.is_bf16_supported() if bf16_supported is None else bf16_supported
    return "bf16-mixed" if bf16 else "16-mixed"


def is_cnn(model: nn.Module) -> bool:
    """More than one 2-d convolution: ResNet, EfficientNet, ConvNeXt; not ViT (one conv, its patch embedding)."""
    convs = 0
    for module in model.modules():
        convs += isinstance(module, nn.Conv2d)
        if convs > 1:
            return True
    return False


def resolve_channels_last(option, accelerator: str, backbone: nn.Module, cuda_available: bool | None = None) -> bool:
    """`auto` -> on for CNNs on a GPU (tensor cores want NHWC); true/false as given."""
    if str(option).lower() == "auto":
        return on_gpu(accelerator, cuda_available) and is_cnn(backbone)
    if isinstance(option, bool):
        return option
    raise ConfigError(f"channels_last must be true, false or auto, got {option!r}.")


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return args


def apply_channels_last(backbone: nn.Module) -> None:
    """NHWC weights, and a forward pre-hook that turns each input batch NHWC (Lightning keeps the format on .to())."""
    backbone.to(memory_format=torch.channels_last)
    backbone.register_forward_pre_hook(_to_channels_last)


def prepare_backbone(backbone: nn.Module, channels_last: bool, compile: bool) -> None:
    """Apply the speed options in place. `Module.compile()` (not `torch.compile(m)`) keeps the state-dict keys,
    so checkpoints still load into an uncompiled model."""
    if channels_last:
        apply_channels_last(backbone)
    if compile:
        backbone.compile()
    if channels_last or compile:
        log.info("backbone: channels_last=%s, torch.compile=%s", channels_last, compile)


def precision_ran(trainer) -> str:
    """The precision the Trainer's precision plugin runs, which is what metrics.json records.

    It can differ from the one asked for: Lightning runs `16-mixed` on a CPU as `bf16-mixed` (fp16 autocast
    has no CPU kernels), with one warning in the log and nothing else to show for it.
    """
    return str(trainer.precision)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), for benchmark tables: timings differ by CPU model."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_and_load() -> str:
    """`<CPU model>, <n> cores, load <1, 5, 15 min>`: printed beside a benchmark's figures."""
    cores = len(os.sched_getaffinity(0))
    return f"{cpu_model()}, {cores} cores, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
