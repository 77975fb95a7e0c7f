"""Pretrained weights read offline, with errors that say how to supply a missing file.

open_clip models (the discriminator's ViT backbone and the diffusion synthesizer's CLIP selector):
a pretrained tag is looked up in the local Hugging Face cache only unless ``offline`` is false; a
local ``.safetensors`` / ``.pt`` file or ``local-dir:DIR`` is read as it is. torchvision CNNs (the
``torchvision`` backbone): a local state dict only, checked against the architecture.
"""

from __future__ import annotations

from pathlib import Path

from uniadc_core.data.preprocess import Preprocess


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
    import torch
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
    if path.suffix not in WEIGHT_FILES:
        msg = f"{key}: {path} is not a weights file ({', '.join(WEIGHT_FILES)})"
        raise ValueError(msg)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: no code is unpickled
        except Exception as exc:  # noqa: BLE001  (an UnpicklingError for a file that holds code)
            msg = f"{key}: {path} is not a plain state dict ({type(exc).__name__}: {exc}); save it as .safetensors"
            raise ValueError(msg) from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    expected = model.state_dict()
    # BatchNorm step counters are stored as () or (1,) depending on the exporter: not weights
    state = {k: v.reshape(expected[k].shape) if k.endswith("num_batches_tracked") and k in expected else v for k, v in state.items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        msg = (f"{key}: {path} does not hold '{arch}' weights (missing {missing[:4]}, unexpected {unexpected[:4]}, "
               f"other shape {wrong[:4]}); check train.torchvision.arch or the file")
        raise ValueError(msg)
    model.load_state_dict(state)
    return model.eval()
