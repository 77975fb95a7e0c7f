"""The ``diffusion`` synthesizer: UniADC's training-free controllable inpainting on diffusers.

Zero-shot: a mask drawn from the defect type's shape prior is repainted in a normal image,
prompted with the type's prompts (and its negative prompt), at each of the configured noise
strengths. Few-shot repaint: a real defect is cut by its mask and pasted onto a normal image
(as the procedural path does), then that region is repainted at a strength below 1, so the
result keeps the defect's layout but is a new variant.

Every kept sample is the best of ``candidates`` generations: by an open_clip model's probability
that the masked crop shows its own type rather than the class's other types (when one is
configured), else by mask consistency (how much of the generator's change falls inside the mask).
Only the masked region is pasted back, so the rest of the image is the normal image exactly.

Any Stable-Diffusion-style inpainting checkpoint works, by hub id or local directory; offline
(the default), it is read with ``local_files_only`` and a missing one is a clear error.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from uniadc_core.config import DiffusionConfig, SynthesizeConfig
from uniadc_core.data.vocabulary import DefectPrior, Vocabulary
from uniadc_core.device import resolve_device
from uniadc_core.synthesis.masks import estimate_foreground
from uniadc_core.synthesis.plan import SampleSpec, load_sources, shard_row
from uniadc_core.synthesis.priors import sample_mask
from uniadc_core.synthesis.procedural import Synthetic, finish, synthesize_cut_paste

log = logging.getLogger(__name__)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def load_pipeline(cfg: DiffusionConfig, device: torch.device | None = None):
    """The inpainting pipeline of ``cfg.model`` on ``device`` (fp16/bf16 on CUDA, SDPA attention,
    optional ``torch.compile`` of the UNet)."""
    from diffusers import StableDiffusionInpaintPipeline
    from diffusers.models.attention_processor import AttnProcessor2_0

    device = device or resolve_device(cfg.device, "synthesize.diffusion.device")
    dtype = resolve_dtype(cfg.dtype, device)
    local = Path(cfg.model).expanduser()
    source = str(local) if local.exists() else cfg.model
    try:
        pipe = StableDiffusionInpaintPipeline.from_pretrained(source, dtype=dtype, local_files_only=cfg.offline,
                                                              safety_checker=None, requires_safety_checker=False)
    except (OSError, ValueError) as exc:
        msg = (f"inpainting weights '{cfg.model}' could not be loaded{' offline' if cfg.offline else ''} ({type(exc).__name__}). "
               f"Provide them: on a connected machine run `huggingface-cli download {cfg.model} --local-dir DIR` (or "
               f"`StableDiffusionInpaintPipeline.from_pretrained(...).save_pretrained(DIR)`), copy DIR here and set "
               f"synthesize.diffusion.model: DIR; or set synthesize.diffusion.offline: false where the hub is reachable")
        raise FileNotFoundError(msg) from exc
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.set_attn_processor(AttnProcessor2_0())  # scaled-dot-product attention (flash / memory-efficient on CUDA)
    if cfg.compile and device.type == "cuda":
        pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=False)
    return pipe


@dataclass
class Request:
    """One generation: a (normal or pasted) image, the region to repaint, prompts, strength, seed."""

    image: np.ndarray  # (S, S, 3) uint8
    mask: np.ndarray  # (S, S) bool
    prompt: str
    negative_prompt: str
    strength: float
    seed: int


def generate(pipe, requests: list[Request], cfg: DiffusionConfig) -> list[np.ndarray]:
    """Run the pipeline on requests in batches of ``cfg.batch_size`` (one strength per batch);
    (S, S, 3) float32 outputs at the inputs' size, in request order."""
    out: list[np.ndarray | None] = [None] * len(requests)
    order = sorted(range(len(requests)), key=lambda i: requests[i].strength)  # same strength -> same batch
    res = cfg.resolution
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        groups: dict[float, list[int]] = {}
        for i in idx:
            groups.setdefault(requests[i].strength, []).append(i)
        for strength, group in groups.items():
            rs = [requests[i] for i in group]
            size = rs[0].image.shape[0]
            result = pipe(
                prompt=[r.prompt for r in rs],
                negative_prompt=[r.negative_prompt for r in rs],
                image=[Image.fromarray(r.image).resize((res, res), Image.BICUBIC) for r in rs],
                mask_image=[Image.fromarray(r.mask.astype(np.uint8) * 255).resize((res, res), Image.NEAREST) for r in rs],
                height=res, width=res, strength=strength,
                num_inference_steps=cfg.steps, guidance_scale=cfg.guidance,
                generator=[torch.Generator(device="cpu").manual_seed(r.seed) for r in rs],
                output_type="np",
            ).images
            for i, img in zip(group, result, strict=True):
                img8 = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
                out[i] = np.asarray(Image.fromarray(img8).resize((size, size), Image.BICUBIC), np.float32)
    return out  # type: ignore[return-value]


def composite(normal: np.ndarray, generated: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Only the masked region (soft-edged) comes from the generation; the rest is the input exactly."""
    alpha = np.clip(ndimage.gaussian_filter(mask.astype(np.float32), 0.8) * 1.3, 0, 1)[..., None]
    alpha[~ndimage.binary_dilation(mask, iterations=2)] = 0
    return np.clip(normal.astype(np.float32) * (1 - alpha) + generated * alpha, 0, 255).round().astype(np.uint8)


def mask_consistency(source: np.ndarray, generated: np.ndarray, mask: np.ndarray) -> float:
    """Share of the generator's change that falls inside the mask, times how visible it is (0..1)."""
    change = np.abs(generated - source.astype(np.float32)).mean(-1)
    inside = change[mask].mean() if mask.any() else 0.0
    outside = change[~mask].mean() if (~mask).any() else 0.0
    return float(inside / (inside + outside + 1e-6) * min(1.0, inside / 32.0))


class ClipSelector:
    """Scores a candidate by the open_clip probability of its own type against its class's other types,
    on a crop around the mask."""

    def __init__(self, model_name: str, pretrained: str, config_dir: str, offline: bool, device: torch.device):
        from uniadc_core.weights import create_clip

        self.model, self.pre = create_clip(model_name, pretrained, offline, config_dir)
        self.model = self.model.to(device).eval()
        self.model_name, self.device = model_name, device
        self._text: dict[tuple[str, ...], torch.Tensor] = {}

    @torch.no_grad()
    def _text_embeddings(self, prompts: tuple[str, ...]) -> torch.Tensor:
        if prompts not in self._text:
            import open_clip

            tokens = open_clip.get_tokenizer(self.model_name)(list(prompts)).to(self.device)
            self._text[prompts] = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
        return self._text[prompts]

    @torch.no_grad()
    def score(self, image: np.ndarray, mask: np.ndarray, own: str, types: dict[str, str]) -> float:
        """P(own type | crop) among ``types`` (type -> prompt)."""
        ys, xs = np.nonzero(mask)
        pad = max(4, int(0.5 * max(np.ptp(ys) + 1, np.ptp(xs) + 1))) if len(ys) else 0
        h, w = mask.shape
        crop = image if not len(ys) else image[max(0, ys.min() - pad):min(h, ys.max() + pad + 1), max(0, xs.min() - pad):min(w, xs.max() + pad + 1)]
        size = self.pre.size
        x = torch.from_numpy(np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC), np.float32) / 255.0)
        x = (x.permute(2, 0, 1)[None] - torch.tensor(self.pre.mean).view(1, 3, 1, 1)) / torch.tensor(self.pre.std).view(1, 3, 1, 1)
        feat = torch.nn.functional.normalize(self.model.encode_image(x.to(self.device)).float(), dim=-1)
        names = sorted(types)
        text = self._text_embeddings(tuple(types[n] for n in names))
        probs = (100.0 * feat @ text.T).softmax(-1)[0]
        return float(probs[names.index(own)])


@dataclass
class Job:
    """One kept sample to make: its normal image, prior, and (few-shot) the real defect to repaint."""

    normal: np.ndarray
    prior: DefectPrior
    seed: int
    defect_type: str
    class_types: dict[str, str]  # the class's defect types -> first prompt (for CLIP selection)
    shot: np.ndarray | None = None
    shot_mask: np.ndarray | None = None
    foreground: str = "border"  # the estimator prior masks are clipped to


def synthesize_batch(pipe, jobs: list[Job], cfg: DiffusionConfig, selector: ClipSelector | None = None) -> list[tuple[Synthetic, dict]]:
    """Make every job's candidates in batched pipeline calls, keep the best of each;
    returns (sample, settings) with the settings recorded in the shard."""
    n = cfg.candidates
    requests = []  # job j's candidates are requests[j * n:(j + 1) * n]
    for job in jobs:
        rng = np.random.default_rng(job.seed)
        prompts = job.prior.prompts or (f"a photo with a {job.defect_type.replace('_', ' ')}",)
        fg = estimate_foreground(job.normal, job.foreground) if job.shot is None else None
        for c in range(n):
            if job.shot is not None:  # few-shot repaint: paste the real defect, then repaint it lightly
                pasted = synthesize_cut_paste(job.normal, job.shot, job.shot_mask, rng, job.foreground)
                source, mask, strength = pasted.image, pasted.mask, cfg.repaint_strength
            else:
                mask = sample_mask(job.prior, rng, job.normal.shape[:2], fg)
                source, strength = job.normal, float(cfg.strengths[c % len(cfg.strengths)])
            seed = int(rng.integers(2**31 - 1))
            requests.append(Request(source, mask, str(prompts[c % len(prompts)]), job.prior.negative_prompt, strength, seed))
    generated = generate(pipe, requests, cfg)
    out = []
    for j, job in enumerate(jobs):
        use_clip = selector is not None and len(job.class_types) > 1
        candidates = []
        for i in range(j * n, (j + 1) * n):
            req, gen = requests[i], generated[i]
            image = composite(req.image, gen, req.mask)
            score = (selector.score(image, req.mask, job.defect_type, job.class_types) if use_clip
                     else mask_consistency(req.image, gen, req.mask))
            candidates.append((score, i, image))
        score, i, image = max(candidates, key=lambda t: t[0])  # the first of equal scores
        req = requests[i]
        settings = {"model": cfg.model, "strength": req.strength, "steps": cfg.steps, "guidance": cfg.guidance,
                    "resolution": cfg.resolution, "seed": req.seed, "prompt": req.prompt, "negative_prompt": req.negative_prompt,
                    "candidates": n, "kept": i - j * n, "selector": "clip" if use_clip else "mask_consistency",
                    "selection_score": round(score, 6)}
        out.append((finish(job.normal, image.astype(np.float32), req.mask), settings))
    return out


# one pipeline (and selector) per process, shared by the shard threads; generation is serialised
_PIPELINES: dict[str, object] = {}
_SELECTORS: dict[str, ClipSelector | None] = {}
_LOCK = threading.RLock()


@contextmanager
def shared_pipeline(cfg: DiffusionConfig) -> Iterator:
    """The process's pipeline for ``cfg`` (loaded once), held under a lock while in use."""
    key = json.dumps([cfg.model, cfg.offline, cfg.device, cfg.dtype, cfg.compile])
    with _LOCK:
        if key not in _PIPELINES:
            _PIPELINES[key] = load_pipeline(cfg)
        yield _PIPELINES[key]


def shared_selector(cfg: DiffusionConfig, device: torch.device) -> ClipSelector | None:
    """The CLIP selector of ``cfg`` (None when no selector model is set), loaded once per process."""
    if not cfg.selector_model:
        return None
    key = json.dumps([cfg.selector_model, cfg.selector_pretrained, cfg.selector_config_dir, cfg.offline, str(device)])
    with _LOCK:
        if key not in _SELECTORS:
            _SELECTORS[key] = ClipSelector(cfg.selector_model, cfg.selector_pretrained, cfg.selector_config_dir, cfg.offline, device)
        return _SELECTORS[key]


def make_rows(specs: list[SampleSpec], vocab: Vocabulary, cfg: SynthesizeConfig, progress: bool = False, label: str = "") -> list[dict]:
    """The shard rows of ``specs``, made in batched pipeline calls."""
    jobs = []
    for spec in specs:
        normal, shot, shot_mask = load_sources(spec, vocab, cfg.image_size)
        types = vocab.classes[spec.object_class]
        class_types = {t: (p.prompts[0] if p.prompts else t.replace("_", " ")) for t, p in types.items()}
        jobs.append(Job(normal, vocab.prior(spec.object_class, spec.defect_type), spec.seed, spec.defect_type,
                        class_types, shot, shot_mask, cfg.foreground))
    with shared_pipeline(cfg.diffusion) as pipe:
        made = synthesize_batch(pipe, jobs, cfg.diffusion, shared_selector(cfg.diffusion, pipe.device))
    return [shard_row(spec, out.image, out.mask, out.quality, settings) for spec, (out, settings) in zip(specs, made, strict=True)]
