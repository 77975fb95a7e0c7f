"""Naming defects from one real shot per type (``shot_memory.py``) and typing regions at their peaks (``decide``).

Generated sets whose two defect types differ only by texture (a fine and a coarse checkerboard of the same grey
levels, in the same square) or only by shape (a thin line and a round spot of the same flat grey). The patch
features are a plain, fixed function of each 8 x 8 cell (dark share and edge energy), so what is tested is the
memory, its temperature, the type at the peak and the regions, not a backbone.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from uniadc_core.data.preprocess import Preprocess
from uniadc_core.decision import Scores, decide
from uniadc_core.model.discriminator import predict_from_maps
from uniadc_core.model.shot_memory import build_shot_memory, calibrate_temperature, dihedral
from uniadc_core.serving.regions import native_regions

SIZE, CELL = 64, 8
TYPES = ["first", "second"]


def cell_features(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, h, w) per 8 x 8 cell: the share of dark pixels and the mean horizontal and vertical edge strength."""
    grey = images.float().mean(1, keepdim=True) / 255
    dark = (grey < 0.4).float()
    gx = F.pad((grey[..., :, 1:] - grey[..., :, :-1]).abs(), (0, 1))
    gy = F.pad((grey[..., 1:, :] - grey[..., :-1, :]).abs(), (0, 0, 0, 1))
    return F.avg_pool2d(torch.cat([dark, gx, gy], 1), CELL)


def blank(rng: np.random.Generator) -> np.ndarray:
    return np.clip(rng.normal(180, 4, (SIZE, SIZE)), 0, 255)


def texture_sample(kind: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 24 x 24 checkerboard of 40 / 200 at a random place: squares of 1 pixel (kind 1) or 6 pixels (kind 2)."""
    image, mask = blank(rng), np.zeros((SIZE, SIZE), np.uint8)
    y, x = rng.integers(4, SIZE - 28, 2)
    step = 1 if kind == 1 else 6
    yy, xx = np.mgrid[0:24, 0:24]
    image[y:y + 24, x:x + 24] = np.where(((yy // step) + (xx // step)) % 2 == 0, 40, 200)
    mask[y:y + 24, x:x + 24] = kind
    return image, mask


def shape_sample(kind: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A flat grey-40 defect at a random place: a 3 x 36 line, along x or y (kind 1), or a disk of radius 8 (kind 2)."""
    image, mask = blank(rng), np.zeros((SIZE, SIZE), np.uint8)
    if kind == 1:
        a, b = rng.integers(6, SIZE - 9), rng.integers(4, SIZE - 40)
        region = (slice(a, a + 3), slice(b, b + 36)) if rng.random() < 0.5 else (slice(b, b + 36), slice(a, a + 3))
        mask[region] = 1
    else:
        cy, cx = rng.integers(12, SIZE - 12, 2)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= 64] = 2
    image[mask > 0] = 40
    return image, mask


def batch(make, kinds: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    images, masks = zip(*[make(k, rng) for k in kinds], strict=True)
    rgb = np.repeat(np.stack(images)[:, None], 3, 1).round().astype(np.uint8)
    return torch.from_numpy(rgb), torch.from_numpy(np.stack(masks))


def name_by_shots(make) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(accuracy on 40 new images, their type probabilities, their truth) with one real shot per type, the
    temperature fitted on 20 other labelled samples, each image judged at its most defect-like cell."""
    shots, shot_masks = batch(make, [1, 2], seed=0)
    memory = build_shot_memory(cell_features, shots, shot_masks, num_types=2)
    val, val_masks = batch(make, [1, 2] * 10, seed=1)
    feats = cell_features(val)
    calibrate_temperature(memory, feats, feats[:, 0].flatten(1).argmax(1), (val_masks.flatten(1).amax(1) - 1).long())
    test, test_masks = batch(make, [1, 2] * 20, seed=2)
    feats = cell_features(test)
    amap = F.interpolate(feats[:, :1], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]  # dark share: the "anomaly"
    logits = torch.zeros(len(test), 3, SIZE, SIZE)
    p = predict_from_maps(logits, torch.zeros(len(test), 4), {"discriminator": amap}, shots=memory.log_probs(feats))
    truth = test_masks.flatten(1).amax(1).long() - 1
    return float((p.type_probs.argmax(1) == truth).float().mean()), p.type_probs, truth


def test_types_that_differ_only_by_texture_are_named_from_one_shot_each():
    accuracy, probs, truth = name_by_shots(texture_sample)
    assert accuracy == 1.0
    assert float(probs[torch.arange(len(truth)), truth].min()) > 0.5


def test_types_that_differ_only_by_shape_are_named_from_one_shot_each():
    """At the cell level a disk's rim looks like a line: some lines are taken for spots (chance is 0.5), but with a
    lower probability than the right names get."""
    accuracy, probs, truth = name_by_shots(shape_sample)
    assert accuracy >= 0.85
    right = probs.argmax(1) == truth
    assert float(probs.max(1).values[right].mean()) > float(probs.max(1).values[~right].mean()) + 0.1


def test_the_memory_holds_every_turn_of_a_shot():
    """A line along x as the only shot still names a line along y: its eight views are in the memory."""
    rng = np.random.default_rng(3)
    image, mask = blank(rng), np.zeros((SIZE, SIZE), np.uint8)
    mask[20:23, 10:46] = 1
    image[mask > 0] = 40
    disk, disk_mask = shape_sample(2, rng)
    shots, masks = batch(lambda k, _: (image, mask) if k == 1 else (disk, disk_mask), [1, 2], seed=0)
    memory = build_shot_memory(cell_features, shots, masks, num_types=2)
    assert len(dihedral(shots)) == 16
    turned = shots[:1].transpose(-1, -2).contiguous()  # the line along y
    d = memory.distances(cell_features(turned)).flatten(2).min(2).values[0]
    assert float(d[0]) < 1e-6 < float(d[1])


def test_no_memory_when_a_type_has_no_shot():
    shots, masks = batch(shape_sample, [1, 1], seed=0)
    assert build_shot_memory(cell_features, shots, masks, num_types=2) is None


def test_each_region_takes_the_type_at_its_peak_and_the_image_its_strongest_region():
    """One image, two defects: a line (left, peak 5) whose pixels mostly lean "second" but whose peak says "first",
    and a spot (right, peak 9) typed "second". Pixel types and probabilities as the model gives them."""
    n, size = 1, 32
    amap = np.full((n, size, size), -4.0, np.float32)
    types = np.full((n, size, size), 2, np.uint8)
    prob = np.full((n, size, size), 153, np.uint8)  # 0.6
    amap[0, 4:28, 4:6] = 3.0
    amap[0, 15, 4:6] = 5.0
    types[0, 15, 4:6], prob[0, 15, 4:6] = 1, 230  # the line's peak: "first" at 0.9
    amap[0, 10:14, 20:24] = 7.0
    amap[0, 12, 22] = 9.0
    prob[0, 12, 22] = 204  # the spot's peak: "second" at 0.8
    type_probs = np.array([[0.2, 0.8]])  # the image's own distribution, read at its peak (the spot's)
    scores = Scores(amap.max((1, 2)), amap, type_probs, types, np.zeros((n, 4)), prob)
    d = decide(scores, np.zeros(n), np.ones(n), 1.0, TYPES)
    line, spot = d.pixel_labels[0, 4:28, 4:6], d.pixel_labels[0, 10:14, 20:24]
    assert (line == 1).all() and (spot == 2).all() and (d.pixel_labels[0][amap[0] <= 1.0] == 0).all()
    assert np.allclose(d.region_prob[0, 4:28, 4:6] / 255, 230 / 255) and np.allclose(d.region_prob[0, 10:14, 20:24] / 255, 0.8)
    assert d.defect_type == ["second"] and d.defect_prob[0] == 0.8
    unsure = decide(scores, np.zeros(n), np.ones(n), 1.0, TYPES, abstain_below=0.85)
    assert unsure.defect_type == ["unknown"] and (unsure.pixel_labels == d.pixel_labels).all()  # the mask keeps the guess
    # at a level between the spot's exact 0.799 and its 1/255 step (204/255 = 0.8), image and region agree
    near = decide(Scores(*scores[:2], np.array([[0.201, 0.799]]), *scores[3:]), np.zeros(n), np.ones(n), 1.0, TYPES,
                  abstain_below=0.7995)
    regions = native_regions(Preprocess(size), near.anomaly_map[0], near.pixel_labels[0], (size, size), TYPES, near.region_prob[0],
                             abstain_below=0.7995)[0]
    strongest = max(regions, key=lambda r: r.max_score)
    assert near.defect_type == [strongest.defect_type] == ["second"]


def test_a_shot_without_a_mask_adds_nothing_and_chunks_change_no_distance():
    shots, masks = batch(shape_sample, [1, 2], seed=0)
    unmasked = torch.cat([shots, shots[:1]]), torch.cat([masks, torch.zeros_like(masks[:1])])
    memory = build_shot_memory(cell_features, *unmasked, num_types=2, batch_size=1)  # one view batch holds no defect
    assert len(memory) == len(build_shot_memory(cell_features, shots, masks, num_types=2))
    feats = cell_features(batch(shape_sample, [1, 2] * 5, seed=5)[0])  # 640 patches
    assert torch.allclose(memory.distances(feats, block=len(memory)), memory.distances(feats))  # three chunks of 256 rows vs one
