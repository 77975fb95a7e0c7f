"""Pretrained weights read offline, with errors that say how to supply a missing file.

Shared by the discriminator's backbones and the diffusion synthesizer's CLIP selector. A
pretrained tag is looked up in the local Hugging Face cache only unless ``offline`` is false;
a local ``.safetensors`` / ``.pt`` file or ``local-dir:DIR`` is read as it is.
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
