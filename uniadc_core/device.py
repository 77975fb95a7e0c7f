"""Which torch device a setting means: ``auto`` (CUDA when there is one), ``cpu`` or ``cuda``."""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto", key: str = "device") -> torch.device:
    """The device for a setting; ``key`` names the param in the error when CUDA is asked for but absent."""
    if name not in DEVICES and not name.startswith("cuda:"):
        msg = f"{key}: unknown device '{name}'; valid: {', '.join(DEVICES)}"
        raise ValueError(msg)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        msg = f"{key} is {name} but torch sees no CUDA device; set {key}: auto or cpu"
        raise RuntimeError(msg)
    return torch.device(name)
