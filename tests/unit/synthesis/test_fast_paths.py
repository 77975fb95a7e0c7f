"""The synthesis fast paths give the same pixels as the plain computations they replace."""

import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from uniadc_core.data.preprocess import Preprocess
from uniadc_core.io import encode_png, png_bytes
from uniadc_core.synthesis import masks, plan
from uniadc_core.synthesis.masks import _box_mean, border_foreground


@pytest.mark.parametrize("shape", [(37, 53), (37, 53, 1), (37, 53, 3), (16, 9, 4), (1, 1), (1, 300, 3)])
def test_encode_png_decodes_to_the_same_pixels(shape):
    arr = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)  # random rows wrap the Up filter's differences
    back = np.asarray(Image.open(io.BytesIO(encode_png(arr))))
    np.testing.assert_array_equal(back, arr.reshape(shape[:2]) if len(shape) == 3 and shape[2] == 1 else arr)


def test_encode_png_is_about_the_size_of_pils_on_an_image():
    yy, xx = np.mgrid[0:128, 0:128]
    rng = np.random.default_rng(1)
    smooth = np.clip(100 + 40 * np.sin(xx / 9.0) + 30 * np.cos(yy / 13.0) + rng.normal(0, 3, (128, 128)), 0, 255).astype(np.uint8)
    mask = np.zeros((128, 128), np.uint8)
    mask[40:60, 20:90] = 3
    assert len(encode_png(smooth)) < 1.3 * len(png_bytes(smooth))
    assert len(encode_png(mask)) < 1000  # an almost empty mask is a few hundred bytes, not a raw 16 KB


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros(4, np.uint8)])
def test_encode_png_refuses_what_it_cannot_store(bad):
    with pytest.raises(ValueError, match="uint8"):
        encode_png(bad)


@pytest.mark.parametrize("shape", [(0, 5), (5, 0, 3)])
def test_encode_png_refuses_an_empty_image(shape):
    with pytest.raises(ValueError, match="at least one pixel"):
        encode_png(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("shape", [(64, 48, 3), (64, 48), (8, 12, 1)])
def test_box_mean_is_the_reshaped_mean_exactly(shape):
    img = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    h, w = shape[:2]
    expect = img.reshape(h // 4, 4, w // 4, 4, -1).mean((1, 3))
    np.testing.assert_array_equal(_box_mean(img, 4), expect)


def test_border_foreground_still_finds_an_object_on_a_plain_background():
    img = np.full((256, 256, 3), 30, np.uint8)
    img[64:192, 80:200] = 200
    fg = border_foreground(img)
    assert fg[100:150, 100:180].all() and not fg[:40].any() and 0.15 < fg.mean() < 0.35


def test_input_cache_rereads_a_rewritten_file_and_hands_out_read_only_arrays(tmp_path):
    def stored_png(value: int) -> bytes:  # deflate level 0: the file's size does not depend on the pixels
        buf = io.BytesIO()
        Image.fromarray(np.full((40, 40, 3), value, np.uint8)).save(buf, format="PNG", compress_level=0)
        return buf.getvalue()

    pre = Preprocess(32)
    path = tmp_path / "a.png"
    path.write_bytes(stored_png(10))
    first = plan._image(pre, str(path))
    assert first[0, 0, 0] == 10 and plan._image(pre, str(path)) is first  # read once
    with pytest.raises(ValueError, match="read-only"):
        first[0, 0, 0] = 0
    before = os.stat(path)
    path.write_bytes(stored_png(99))  # the same size, in place: the same inode
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and its old mtime back, as `cp -p` would leave it
    assert os.stat(path).st_size == before.st_size and os.stat(path).st_mtime_ns == before.st_mtime_ns
    assert plan._image(pre, str(path))[0, 0, 0] == 99  # the change time still tells


def test_input_cache_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(plan, "CACHE_BYTES", 3 * 32 * 32 * 3)
    monkeypatch.setattr(plan, "_cache", type(plan._cache)())
    monkeypatch.setattr(plan, "_cached_bytes", 0)
    pre = Preprocess(32)
    for i in range(5):
        p = tmp_path / f"{i}.png"
        p.write_bytes(png_bytes(np.full((40, 40, 3), i, np.uint8)))
        plan._image(pre, str(p))
    assert len(plan._cache) == 3 and plan._cached_bytes == 3 * 32 * 32 * 3
    assert [key[2][-5:] for key in plan._cache] == ["2.png", "3.png", "4.png"]  # least recently used out first


def test_input_cache_leaves_a_missing_file_to_the_loaders_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        plan._image(Preprocess(32), str(tmp_path / "nothing.png"))


def test_input_cache_is_safe_for_the_local_runners_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(plan, "CACHE_BYTES", 4 * 32 * 32 * 3)  # small: evictions race with lookups
    monkeypatch.setattr(plan, "_cache", type(plan._cache)())
    monkeypatch.setattr(plan, "_cached_bytes", 0)
    pre, paths = Preprocess(32), []
    for i in range(12):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(png_bytes(np.full((40, 40, 3), i, np.uint8)))

    def work(seed: int) -> bool:
        rng = np.random.default_rng(seed)
        return all(plan._image(pre, str(paths[i]))[0, 0, 0] == i for i in rng.integers(0, 12, 200))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(8)))
    assert plan._cached_bytes == sum(a.nbytes for a in plan._cache.values()) <= plan.CACHE_BYTES


@pytest.mark.parametrize("band", [None, (0, 256), (95, 110), (150, 170), (240, 256)])
def test_windowed_line_distance_picks_the_k_nearest_allowed_pixels(band):
    """The thin families' distance field is computed near the lines only (the margin doubled while too few
    allowed pixels lie within it): its k best pixels are the k nearest allowed pixels of the whole image."""
    h = w = 256
    allowed = None
    if band is not None:
        allowed = np.zeros((h, w), bool)
        allowed[band[0]:band[1], 40:220] = True  # a band far from the line: the first margins hold too few pixels
    rng = np.random.default_rng(5)
    for k in (30, 400, 2500):
        pts = np.array([[60.0, 50.0], [70.0, 120.0], [64.0, 200.0]]) + rng.normal(0, 3, (3, 2))
        fast = masks._distance(h, w, [(pts, 1.0)], k, allowed)
        yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
        exact = masks._segment_distance(yy, xx, pts)
        ok = np.ones((h, w), bool) if allowed is None else allowed
        near = ok & (exact <= np.sort(exact[ok])[k - 1])
        np.testing.assert_allclose(fast[near], exact[near], rtol=1e-6)  # exact (float32) wherever the k nearest can be
        np.testing.assert_allclose(np.sort(fast[ok])[:k], np.sort(exact[ok])[:k], rtol=1e-6)  # and no other pixel ranks among them


def test_input_cache_keeps_preprocessing_settings_apart(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(np.random.default_rng(3).integers(0, 256, (40, 60, 3), dtype=np.uint8)))
    small, big, padded = (plan._image(Preprocess(16), str(path)), plan._image(Preprocess(32), str(path)),
                          plan._image(Preprocess(32, "pad"), str(path)))
    assert small.shape == (16, 16, 3) and big.shape == padded.shape == (32, 32, 3)
    assert not np.array_equal(big, padded)  # the same file and size, another resize policy: its own entry


class _Vocab:  # the one method load_foreground asks of a vocabulary
    def __init__(self, policy: str):
        self.policy = policy

    def preprocess(self, size: int) -> Preprocess:
        return Preprocess(size, self.policy)


def _spec(path) -> plan.SampleSpec:
    return plan.SampleSpec("s0", "c", "d", 1, "procedural", 0, "img0", str(path))


def test_foreground_is_estimated_once_per_file_and_by_the_estimator_asked_for(tmp_path, monkeypatch):
    img = np.full((64, 64, 3), 20, np.uint8)
    img[16:48, 16:48] = 220  # an object on a plain background
    path = tmp_path / "n.png"
    path.write_bytes(png_bytes(img))
    calls = []
    monkeypatch.setitem(masks.FOREGROUND_ESTIMATORS, "counting", lambda im: calls.append(1) or masks.border_foreground(im))
    vocab, spec = _Vocab("stretch"), _spec(path)
    normal = plan._image(Preprocess(64), str(path))
    first = plan.load_foreground(spec, vocab, 64, normal, "counting")
    again = plan.load_foreground(spec, vocab, 64, normal, "counting")
    assert again is first and len(calls) == 1 and first[32, 32] and not first[2, 2]
    assert plan.load_foreground(spec, vocab, 64, normal, "none").all()  # another estimator: its own entry
    tiled = plan.load_foreground(spec, _Vocab("tile"), 64, np.full((64, 64, 3), 5, np.uint8), "counting")
    assert len(calls) == 2 and tiled.all()  # a tile is estimated afresh from the array given (a plain one: all foreground)
