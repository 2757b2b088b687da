"""Where models run: device choice, autocast, memory layout, and the uint8 -> normalised batch step.

torch is imported inside the functions, so the torch-free ONNX engine can share the device checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from posetune.checks import Pattern
from posetune.errors import UsageError

if TYPE_CHECKING:
    import torch

    from posetune.data.preprocessing import PreprocessConfig

DEVICES = ("auto", "cpu", "cuda", "mps")
DEVICE = Pattern(r"auto|cpu|cuda|cuda:[0-9]+|mps", "auto, cpu, cuda, cuda:N or mps")  # the check of --device


def check_device_name(name: str) -> str:
    """``name`` if it is a device posetune knows (auto, cpu, cuda, cuda:N, mps), else a UsageError."""
    return DEVICE(name, "--device")


def nvidia_gpu_visible() -> bool:
    """Whether the NVIDIA driver lists a GPU, without importing torch (that alone takes a second)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, else Apple MPS, else the CPU; an explicit device that is not there is a UsageError."""
    import torch

    check_device_name(name)
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name == "mps" and not mps:
        raise UsageError("--device mps was asked for but MPS is not available; use --device cpu or auto")
    return torch.device(name)


PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # --precision


def amp_dtype(device: torch.device, precision: str = "auto"):
    """The autocast dtype of ``--precision`` on ``device``, or None for plain fp32. ``auto``: bf16 on CUDA GPUs
    that support it, fp16 on older ones, fp32 elsewhere (the CPU and MPS run exact fp32). ``bf16`` also runs on
    the CPU (fast where it has AMX or AVX512-BF16); ``fp16`` needs CUDA. A precision this device cannot run is a
    UsageError."""
    import torch

    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    cuda = device.type == "cuda"
    if precision == "auto":
        return (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else None
    if precision == "fp32":
        return None
    if device.type not in ("cuda", "cpu") or (precision == "fp16" and not cuda):
        raise UsageError(f"--precision {precision} does not train on {device.type}; use "
                         f"{'bf16 or ' if device.type == 'cpu' else ''}fp32 (or auto) there")
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UsageError("--precision bf16: this GPU has no bf16; use fp16 (or auto)")
    return torch.bfloat16 if precision == "bf16" else torch.float16


# bf16 autocast on a CPU stays opt-in (--precision bf16). On a 2-core AMD EPYC with AVX512-BF16 it trained
# efficientnet_lite0 faster from 192 px on (bare steps, batch 32, bf16 / fp32 images/s: partial 1.21x at 224 px,
# 1.22x at 192, 1.03x at 160, 0.95x at 128; full 1.41x, 1.32x, 1.01x, 0.88x), but `posetune train DATA
# --precision bf16` on Fashion-MNIST-1k scored 0.866 +- 0.004 against fp32's 0.872 +- 0.002 (3 seeds). On an
# EPYC with AVX2 only, oneDNN emulates bf16: 0.054x-0.068x of fp32 (benchmarks/bench_precision.py), hence the
# warning below.


def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU computes bf16 in hardware, read from Linux's /proc/cpuinfo: x86's avx512_bf16 or amx_bf16
    flag, aarch64's bf16 feature. None where there is no /proc/cpuinfo to read (macOS, Windows): unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return bool(set(line.split(":", 1)[1].split()) & {"avx512_bf16", "amx_bf16", "bf16"})
    except OSError:
        return None
    return False


def training_precision(device: torch.device, precision: str) -> tuple[str, str | None]:
    """``--precision`` as the training runs it (fp32, bf16 or fp16; ``auto`` resolved on ``device``) and a
    warning when the choice will be slow, else None. A precision ``device`` cannot run is a UsageError."""
    import torch

    name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype(device, precision)]
    if name == "bf16" and device.type == "cpu" and cpu_has_native_bf16() is False:
        return name, ("--precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 is emulated, "
                      "over 10x slower than fp32; use --precision auto (fp32 here)")
    return name, None


def autocast(device: torch.device, precision: str = "auto"):
    """Mixed precision on ``device`` as :func:`amp_dtype` says (off: exact fp32)."""
    import torch

    dtype = amp_dtype(device, precision)
    return torch.autocast(device.type if device.type in ("cuda", "cpu") else "cpu", dtype=dtype,
                          enabled=dtype is not None)


def grad_scaler(device: torch.device, precision: str = "auto"):
    """A GradScaler where autocast runs fp16 (its small range underflows gradients without loss scaling),
    else None: bf16 has fp32's range and needs none."""
    import torch

    if amp_dtype(device, precision) is torch.float16:
        return torch.amp.GradScaler(device.type)
    return None


def place(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device`` in channels_last (NHWC) memory format, on CPU as well as CUDA: oneDNN's NHWC
    convolutions trained efficientnet_lite0 1.4-1.8x and resnet18 1.15-1.3x faster on a 2-core CPU, and ran
    batch inference 1.3-1.4x faster (benchmarks/README.md). Inputs follow via Normalizer; saved weights are
    made contiguous again (RunDir.save_model)."""
    import torch

    return model.to(device=device, memory_format=torch.channels_last)


class Normalizer:
    """uint8 batch on the host -> normalised float batch on the device (normalising there is cheap)."""

    def __init__(self, preprocess: PreprocessConfig, device: torch.device):
        import torch

        self.device = device
        self.mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)
        self.layout = torch.channels_last  # the layout place() gives the model

    def __call__(self, x: torch.Tensor, color: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """``color``: a batch augmentation of the [0, 1] pixels, applied before mean/std (training only)."""
        # The work runs on the NCHW batch and the layout changes once, at the end, on the float batch: a
        # per-channel op over NHWC loops over rows of 3 values (sub_ of the mean was ~15x slower there) and a
        # CPU's uint8 NHWC transpose is slow too. At 224 px, batch 32, one thread: 40 -> 17 ms with the jitter
        # (benchmarks/bench_batch_prep.py).
        x = x.to(self.device, non_blocking=True).contiguous().float().div_(255.0)
        if color is not None:
            x = color(x)
        x = x.sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=self.layout)

    def inputs(self, batch, color: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple:
        """The model's positional inputs for a loader batch: ``(images,)``, or ``(images, landmark features)``
        where the dataset pairs each image with its pose features (the `pose` / `NAME+pose` backbones)."""
        if isinstance(batch, (list, tuple)):
            images, pose = batch
            return self(images, color), pose.to(self.device, non_blocking=True).float()
        return (self(batch, color),)


def training_backend(device_name: str) -> str:
    """The process-group backend for ``--device``: nccl when training on CUDA, else gloo's 'cpu'."""
    import torch

    return "cuda" if device_name in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
