"""ingest.resize: tile — native-resolution tiles, cut, scored and merged back into one map."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch

from uniadc_core.data.preprocess import Preprocess, merge_tiles, tile_windows
from uniadc_core.data.shards import decode_row, read_row_group, row_groups
from uniadc_core.data.vocabulary import Vocabulary, default_prior
from uniadc_core.io import save_png
from uniadc_core.model.discriminator import Discriminator, ModelConfig
from uniadc_core.model.scoring import score_images
from uniadc_core.model.train_data import real_batch
from uniadc_core.synthesis.plan import SampleSpec, load_sources


@pytest.mark.parametrize("shape", [(32, 32), (20, 90), (75, 40), (100, 129)])
def test_windows_cover_the_image_and_stay_inside(shape):
    h, w = shape
    size = 32
    covered = np.zeros((max(h, size), max(w, size)), int)
    for y, x in tile_windows(h, w, size):
        assert 0 <= y <= max(0, h - size) and 0 <= x <= max(0, w - size)
        covered[y:y + size, x:x + size] += 1
    assert (covered[:h, :w] >= 1).all()
    if w > size:  # evenly spaced, overlapping by at least a quarter of a tile
        xs = sorted({x for _, x in tile_windows(h, w, size)})
        steps = [b - a for a, b in zip(xs, xs[1:])]
        assert max(steps) <= 24 and max(steps) - min(steps) <= 1


def test_cut_then_merge_gives_the_map_back():
    rng = np.random.default_rng(0)
    native = rng.random((70, 100)).astype(np.float32)
    pre = Preprocess(32, "tile")
    tiles, windows = pre.tiles(native, reflect=False)
    assert all(t.shape == (32, 32) for t in tiles)
    np.testing.assert_array_equal(merge_tiles(np.stack(tiles), windows, native.shape), native)


def test_overlaps_average_their_tiles():
    windows = tile_windows(32, 56, 32)  # two tiles side by side, x = 0 and 24: overlap on columns 24..31
    assert windows == [(0, 0), (0, 24)]
    merged = merge_tiles(np.stack([np.full((32, 32), 1.0), np.full((32, 32), 3.0)]), windows, (32, 56))
    assert merged[:, :24].tolist() == np.full((32, 24), 1.0).tolist()
    assert merged[:, 24:32].tolist() == np.full((32, 8), 2.0).tolist()
    assert merged[:, 32:].tolist() == np.full((32, 24), 3.0).tolist()


def test_merged_map_lies_where_the_view_puts_the_mask():
    pre = Preprocess(32, "tile")
    h, w = 32, 64  # the view: padded to 64 x 64 (16 rows above and below), then halved
    region = np.zeros((h, w), bool)
    region[8:16, 40:56] = True  # -> view rows (16 + 8) / 2 .. (16 + 16) / 2, columns 20 .. 28
    tiles, windows = pre.tiles(region.astype(np.float32), reflect=False)
    view = pre.to_view(merge_tiles(np.stack(tiles), windows, (h, w)))
    mask = pre.mask(region)
    assert view.shape == mask.shape == (32, 32)
    expected = np.zeros((32, 32), bool)
    expected[12:16, 20:28] = True
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(view > 0.5, expected)
    assert view[:8].max() == 0.0 and view[24:].max() == 0.0  # the view's padding: the map's lowest value


def test_a_thin_line_of_a_large_image_survives_the_downscaled_view():
    pre = Preprocess(32, "tile")
    native = np.zeros((256, 256), np.float32)
    native[:, 101] = 1.0  # one pixel wide, at 1/8 of the view's scale
    tiles, windows = pre.tiles(native, reflect=False)
    view = pre.to_view(merge_tiles(np.stack(tiles), windows, native.shape))
    assert view[:, 12:14].max() >= 0.1 and view[:, :10].max() < 1e-6  # averaged in where it lies, not skipped


def test_a_pixel_takes_the_label_of_the_tile_most_sure_of_it():
    pre = Preprocess(32, "tile")
    windows = tile_windows(32, 56, 32)
    labels = np.stack([np.full((32, 32), 1, np.uint8), np.full((32, 32), 2, np.uint8)])
    peak = np.stack([np.full((32, 32), 0.9, np.float32), np.full((32, 32), 0.1, np.float32)])
    native = pre.labels_view(labels, windows, (32, 56), peak)
    full = np.zeros((32, 56), np.uint8)
    full[:, :32], full[:, 32:] = 1, 2  # the first tile wins its overlap with the second
    np.testing.assert_array_equal(native, pre.mask(full))


def _model(size: int = 32) -> Discriminator:
    torch.manual_seed(0)
    return Discriminator(ModelConfig(defect_types=["crack", "hole"], image_size=size, width=8, embed_dim=8, resize="tile")).eval()


def test_tiled_scores_are_the_tiles_merged():
    model = _model()
    pre = model.preprocess
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (50, 90, 3), np.uint8), rng.integers(0, 255, (20, 20, 3), np.uint8)]
    s = score_images(model, images, batch_size=4)
    assert s.anomaly_map.shape == (2, 32, 32) and s.pixel_types.shape == (2, 32, 32)
    tiles, windows = pre.tiles(images[0])
    with torch.no_grad():
        p = model.predict(pre.batch(tiles))
    assert s.score[0] == pytest.approx(float(p.score.max()), rel=1e-5)
    np.testing.assert_allclose(s.embedding[0], p.embedding.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.type_probs[0], p.type_probs[int(p.score.argmax())].numpy(), rtol=1e-5)
    np.testing.assert_allclose(s.anomaly_map[0], pre.to_view(merge_tiles(p.anomaly_map.numpy(), windows, (50, 90))), rtol=1e-5, atol=1e-5)
    square = images[1][:16].repeat(2, 0).repeat(2, 1)[:32, :32]  # exactly one tile: the model's own outputs
    with torch.no_grad():
        one = model.predict(pre.batch([square]))
    np.testing.assert_allclose(score_images(model, [square]).anomaly_map[0], one.anomaly_map[0].numpy(), rtol=1e-5, atol=1e-6)
    # one batch or many, native or preprocessed: the same scores
    again = score_images(model, [pre.native(im) for im in images], batch_size=64, preprocessed=True)
    np.testing.assert_allclose(again.score, s.score, rtol=1e-5)


def _tree(tmp_path):
    rng = np.random.default_rng(2)
    normal, anomaly = rng.integers(0, 255, (40, 80, 3), np.uint8), rng.integers(0, 255, (40, 80, 3), np.uint8)
    mask = np.zeros((40, 80), np.uint8)
    mask[30:36, 70:78] = 255  # in the right-hand tiles only
    for name, arr in {"normal.png": normal, "anomaly.png": anomaly, "anomaly_mask.png": mask}.items():
        save_png(tmp_path / name, arr)
    return normal, anomaly, mask


def test_training_reads_every_normal_tile_and_the_defect_tiles_of_a_shot(tmp_path):
    normal, anomaly, mask = _tree(tmp_path)
    vocab = Vocabulary(classes={"tile": {"crack": default_prior("crack", "tile")}}, resize="tile")
    frame = pl.DataFrame({
        "image_id": ["n", "a"], "path": [str(tmp_path / "normal.png"), str(tmp_path / "anomaly.png")],
        "is_anomaly": [False, True], "mask_path": [None, str(tmp_path / "anomaly_mask.png")],
        "defect_type": [None, "crack"], "object_class": ["tile", "tile"], "mask_rule": [None, None],
    })
    pre = vocab.preprocess(32)
    batch = real_batch(frame, vocab, pre)
    windows = tile_windows(40, 80, 32)
    normal_ids = [i for i in batch.ids if i.startswith("n#")]
    assert normal_ids == [f"n#{y},{x}" for y, x in windows]
    shots = [i for i, k in enumerate(batch.ids) if k.startswith("a#")]
    assert shots and all(batch.masks[i].any() for i in shots)
    assert len(shots) < len(windows)  # the defect-free tiles of the anomalous image are left out
    first = batch.ids.index(f"n#{windows[1][0]},{windows[1][1]}")
    y, x = windows[1]
    np.testing.assert_array_equal(batch.images[first].permute(1, 2, 0).numpy(), normal[y:y + 32, x:x + 32])


def test_synthesis_paints_on_a_seeded_native_tile_and_crops_the_shot_around_its_defect(tmp_path):
    normal, anomaly, mask = _tree(tmp_path)
    vocab = Vocabulary(classes={"tile": {"crack": default_prior("crack", "tile")}}, resize="tile")
    spec = SampleSpec("s1", "tile", "crack", 1, "cutpaste", 7, "n", str(tmp_path / "normal.png"),
                      str(tmp_path / "anomaly.png"), str(tmp_path / "anomaly_mask.png"))
    base, shot, region = load_sources(spec, vocab, 32)
    again, _, _ = load_sources(spec, vocab, 32)
    np.testing.assert_array_equal(base, again)  # seeded
    assert base.shape == shot.shape == (32, 32, 3) and region.shape == (32, 32)
    assert region.sum() == (mask > 0).sum()  # the whole defect lies in its tile
    found = [(y, x) for y in range(9) for x in range(49) if np.array_equal(normal[y:y + 32, x:x + 32], base)]
    assert found  # a tile of the normal at its own pixel scale, not a resized image


def test_a_small_shot_is_padded_as_its_labels_are(tmp_path):
    rng = np.random.default_rng(3)
    save_png(tmp_path / "a.png", rng.integers(0, 255, (24, 40, 3), np.uint8))  # shorter than a tile: padded below
    mask = np.zeros((24, 40), np.uint8)
    mask[18:23, 5:12] = 255  # near the bottom edge: reflected into the padding
    save_png(tmp_path / "a_mask.png", mask)
    vocab = Vocabulary(classes={"tile": {"crack": default_prior("crack", "tile")}}, resize="tile")
    frame = pl.DataFrame({"image_id": ["a"], "path": [str(tmp_path / "a.png")], "is_anomaly": [True],
                          "mask_path": [str(tmp_path / "a_mask.png")], "defect_type": ["crack"], "object_class": ["tile"],
                          "mask_rule": [None]})
    batch = real_batch(frame, vocab, vocab.preprocess(32))
    label = batch.masks[0].numpy()
    assert label[24:].any()  # the mirrored defect is labelled a defect
    np.testing.assert_array_equal(label, np.pad((mask > 0).astype(np.uint8), ((0, 8), (0, 0)), mode="reflect")[:, :32])  # the first tile


def test_synthetic_tiles_are_not_normalised_again(tiny_shards):
    unit = row_groups(tiny_shards)[0]
    stored = [decode_row(r)[0] for r in pq.ParquetFile(unit.path).read_row_group(unit.index).to_pylist()]
    rows = read_row_group(unit, Preprocess(64, "tile", intensity="per_image")) + read_row_group(
        unit, Preprocess(64, "tile", intensity="per_image"), validation=True)
    assert rows and all(any(np.array_equal(r[2], im) for im in stored) for r in rows)  # as stored: normalised with their image
    padded = read_row_group(unit, Preprocess(64, "pad", intensity="per_image")) + read_row_group(
        unit, Preprocess(64, "pad", intensity="per_image"), validation=True)
    assert not all(any(np.array_equal(r[2], im) for im in stored) for r in padded)  # the other policies: once more when read


def test_shown_marks_the_image_area_of_the_view():
    """``shown``: the view pixels that show the image (pixel metrics leave the padding out)."""
    wide = Preprocess(size=64, policy="pad").shown((50, 100))  # pad: the long side fills the view
    assert wide.shape == (64, 64) and wide[:, 0].tolist() == wide[:, 63].tolist()
    assert wide[32].all() and not wide[0].any() and not wide[63].any()
    assert abs(wide.mean() - 0.5) < 0.05
    assert Preprocess(size=64, policy="tile").shown((50, 100)).tolist() == wide.tolist()  # tile: its view is pad's
    assert Preprocess(size=64, policy="stretch").shown((50, 100)).all()
    assert Preprocess(size=64, policy="pad").shown((80, 80)).all()


@pytest.mark.parametrize("policy", ["pad", "tile"])
def test_a_strip_too_long_to_pad_to_a_square_is_refused_by_name_not_by_memory(policy):
    """A 1 x 40000 PNG is a few hundred bytes, but padded to its square it would be 1.6 G pixels (10 GB as float32
    maps): refused with the shape and the fix before anything that large is allocated."""
    pre = Preprocess(64, policy)
    strip = np.zeros((1, 40_000, 3), np.uint8)
    with pytest.raises(ValueError, match=r"a 40000x1 image padded to a 40000x40000 square .* crop the strip"):
        pre.image(strip)
    assert pre.image(np.zeros((100, 3000, 3), np.uint8)).shape == (64, 64, 3)  # a long but sane strip still works
    with pytest.raises(ValueError, match=r"line.png: a 40000x1 image"):  # where predict and the service decode
        pre.decode_bytes(_png(strip), "line.png")


def _png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
