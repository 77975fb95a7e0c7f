"""The diffusion synthesizer with a tiny random inpainting pipeline saved to a temp dir and loaded
with ``from_pretrained(..., local_files_only=True)``: zero-shot and few-shot repaint shards end to
end, CLIP selection with a tiny open_clip model, and the missing-weights error."""

import json
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import TINY_SYNTH
from tests.tiny_models import build_tiny_inpaint_pipeline, write_tiny_clip_config
from uniadc_core.config import DiffusionConfig
from uniadc_core.data.shards import decode_row, read_samples
from uniadc_core.synthesis.diffusion import composite, load_pipeline, mask_consistency
from uniadc_core.synthesis.synthesize import synthesize

pytestmark = pytest.mark.slow  # tiny diffusers pipelines built and run


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory):
    return build_tiny_inpaint_pipeline(tmp_path_factory.mktemp("tiny-sd"))


def _cfg(model_dir, **kw):
    diffusion = DiffusionConfig(model=str(model_dir), resolution=64, steps=2, batch_size=4, candidates=2, **kw)
    return replace(TINY_SYNTH, backend="diffusion", image_size=64, samples_per_type=2, shard_size=4, diffusion=diffusion)


def test_diffusion_shards_zero_shot_and_repaint(tiny_dataset, tiny_pipeline_dir, tmp_path):
    manifest, manifest_path, vocab_path = tiny_dataset
    cfg = _cfg(tiny_pipeline_dir)
    index = synthesize(manifest_path, vocab_path, tmp_path / "syn", cfg)
    assert index["complete"] and index["rows"] == 2 * 3 * 2  # 2 classes x 3 types x 2 samples
    assert index["generated"] == index["rows"] * cfg.diffusion.candidates and index["kept_ratio"] == 0.5
    table = read_samples(tmp_path / "syn")
    generators = set(table.column("generator").to_pylist())
    assert generators == {"diffusion", "repaint"}  # each type has one real shot, repaint_fraction 0.5
    sources = dict(zip(manifest["image_id"].to_list(), manifest["path"].to_list(), strict=True))
    for row in table.to_pylist():
        settings = json.loads(row["settings"])
        assert settings["steps"] == 2 and settings["model"] == str(tiny_pipeline_dir) and settings["selector"] == "mask_consistency"
        if row["generator"] == "repaint":
            assert settings["strength"] == cfg.diffusion.repaint_strength
        else:
            assert settings["strength"] in cfg.diffusion.strengths
        image, mask = decode_row(row)
        assert image.shape == (64, 64, 3) and mask.max() > 0
        if row["generator"] == "diffusion":  # only the (slightly dilated) mask changed; the rest is the normal image
            from uniadc_core.io import load_image, resize

            normal = resize(load_image(sources[row["source_image_id"]]), 64)
            from scipy import ndimage

            outside = ~ndimage.binary_dilation(mask > 0, iterations=3)
            assert np.array_equal(image[outside], normal[outside])
    # the same seed gives the same shards
    again = synthesize(manifest_path, vocab_path, tmp_path / "syn2", cfg)
    assert [e["sha256"] for e in again["shards"].values()] == [e["sha256"] for e in index["shards"].values()]


def test_candidate_selection_with_a_tiny_open_clip_model(tiny_dataset, tiny_pipeline_dir, tmp_path):
    _, manifest_path, vocab_path = tiny_dataset
    clip_dir = write_tiny_clip_config(tmp_path / "clip")
    cfg = _cfg(tiny_pipeline_dir, selector_model="uniadc-tiny-clip", selector_config_dir=str(clip_dir))
    synthesize(manifest_path, vocab_path, tmp_path / "syn", cfg)
    rows = read_samples(tmp_path / "syn").to_pylist()
    settings = [json.loads(r["settings"]) for r in rows]
    assert {s["selector"] for s in settings} == {"clip"}
    assert all(0.0 <= s["selection_score"] <= 1.0 for s in settings)
    assert {s["kept"] for s in settings} <= {0, 1}


def test_mask_consistency_prefers_changes_inside_the_mask():
    rng = np.random.default_rng(0)
    normal = rng.integers(80, 120, (32, 32, 3)).astype(np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[8:20, 8:20] = True
    inside = normal.astype(np.float32).copy()
    inside[mask] = 250
    everywhere = np.full_like(inside, 250.0)
    assert mask_consistency(normal, inside, mask) > 0.9 > mask_consistency(normal, everywhere, mask)
    out = composite(normal, everywhere, mask)
    assert (out[mask] > 200).all() and np.array_equal(out[:2], normal[:2])


def test_missing_weights_fail_with_the_documented_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="could not be loaded offline .*huggingface-cli download .*synthesize.diffusion.model"):
        load_pipeline(DiffusionConfig(model="no-such-org/no-such-inpainting-model"))
    with pytest.raises(FileNotFoundError, match="synthesize.diffusion.offline: false"):
        load_pipeline(DiffusionConfig(model=str(tmp_path / "empty")))
