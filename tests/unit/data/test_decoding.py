"""The one image decoder: orientation, bit depth, modes and the pixel limit, on generated files."""

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.unit.data.test_layouts_and_validation import make_mtd_tree
from uniadc_core.config import parse_params
from uniadc_core.data.ingest import ingest
from uniadc_core.data.preprocess import Preprocess
from uniadc_core.data.validate import DatasetError
from uniadc_core.data.vocabulary import Vocabulary
from uniadc_core.decoding import DecodeOptions, ImageTooLarge, decode, load
from uniadc_core.model.discriminator import ModelConfig

GRADIENT = (np.arange(64 * 96).reshape(64, 96) * (65535 / (64 * 96 - 1))).astype(np.uint16)  # the full 16-bit range


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_images_keep_their_contrast(fmt):
    data = _bytes(Image.fromarray(GRADIENT), fmt)
    naive = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[..., 0]
    assert (naive == 255).mean() > 0.95  # what a plain convert does: clipped to white
    out = decode(data, f"g.{fmt.lower()}")
    assert out.shape == (64, 96, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 2]).all()
    expected = np.rint(GRADIENT / 65535 * 255)
    assert np.abs(out[..., 0].astype(float) - expected).max() <= 1  # full scale: value / 65535
    assert out[..., 0].min() == 0 and out[..., 0].max() == 255


def test_a_12_bit_camera_in_16_bit_files_by_full_scale_or_per_image():
    twelve = (GRADIENT >> 4).astype(np.uint16)  # values 0..4095
    data = _bytes(Image.fromarray(twelve), "PNG")
    full = decode(data, "cam.png")[..., 0]
    stretched = decode(data, "cam.png", options=DecodeOptions(bit_depth="per_image"))[..., 0]
    assert full.max() == 16  # the same gain for every image of the camera
    assert stretched.min() == 0 and stretched.max() == 255
    assert np.corrcoef(stretched.ravel(), twelve.ravel())[0, 1] > 0.999


def test_float_images_are_taken_as_0_to_1_or_their_own_range():
    unit = np.linspace(0, 1, 64 * 96, dtype=np.float32).reshape(64, 96)
    assert decode(_bytes(Image.fromarray(unit), "TIFF"), "f.tif")[..., 0].max() == 255
    wide = unit * 3000 - 100  # outside 0..1: mapped by its range, not clipped
    out = decode(_bytes(Image.fromarray(wide), "TIFF"), "w.tif")[..., 0]
    assert out.min() == 0 and out.max() == 255 and (out == 255).mean() < 0.01


def test_palette_alpha_cmyk_and_bilevel_images_become_rgb():
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, :15] = (200, 40, 10)
    rgb[:, 15:] = (10, 90, 250)
    rgba = np.dstack([rgb, np.full((20, 30), 0, np.uint8)])  # fully transparent: the colour under it is kept
    cases = {
        "palette": Image.fromarray(rgb).quantize(4),
        "rgba": Image.fromarray(rgba),
        "la": Image.fromarray(np.dstack([rgb[..., 0], rgb[..., 1]])),
        "cmyk": Image.fromarray(rgb).convert("CMYK"),
        "bilevel": Image.fromarray(rgb[..., 0] > 100).convert("1"),
    }
    for name, im in cases.items():
        out = decode(_bytes(im, "TIFF" if name == "cmyk" else "PNG"), name)
        assert out.shape == (20, 30, 3) and out.dtype == np.uint8, name
    assert np.abs(decode(_bytes(cases["rgba"], "PNG"), "rgba").astype(int) - rgb).max() == 0
    assert np.abs(decode(_bytes(cases["palette"], "PNG"), "p").astype(int) - rgb).max() <= 8
    assert np.abs(decode(_bytes(cases["cmyk"], "TIFF"), "cmyk").astype(int) - rgb).max() <= 2
    la = decode(_bytes(cases["la"], "PNG"), "la")
    assert (la[..., 0] == rgb[..., 0]).all() and (la[..., 0] == la[..., 1]).all()


def _displayed() -> np.ndarray:
    """A smooth, tall test card (60 x 40) with a bright square at its top left, as a viewer should show it."""
    y, x = np.mgrid[0:60, 0:40]
    card = (40 + x * 2 + y).astype(np.uint8)
    card[4:16, 4:14] = 250
    return card


def _rotated_jpeg(path: Path) -> Path:
    """The card stored turned a quarter to the left with EXIF orientation 6 (a viewer turns it right to show it)."""
    stored = Image.fromarray(np.rot90(_displayed(), 1).copy())
    exif = Image.Exif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, quality=95, exif=exif)
    return path


def test_exif_orientation_is_applied(tmp_path):
    path = _rotated_jpeg(tmp_path / "cam/0001.jpg")
    assert Image.open(path).size == (60, 40)  # stored wide
    out = load(path, mode="L")
    assert out.shape == (60, 40)  # shown tall
    assert np.abs(out.astype(int) - _displayed()).mean() < 3
    assert out[4:16, 4:14].mean() > 230  # the square is where the viewer shows it


def test_an_exif_rotated_jpeg_lines_up_with_a_mask_drawn_on_the_rotated_view(tmp_path):
    root = make_mtd_tree(tmp_path / "mtd", normals=8, per_type=2)
    image = _rotated_jpeg(root / "MT_Crack/Imgs/exp1_Crack_9.jpg")
    mask = np.zeros((60, 40), np.uint8)
    mask[4:16, 4:14] = 255  # drawn over the bright square of the displayed view
    Image.fromarray(mask).save(image.with_suffix(".png"))
    result = ingest(parse_params({"ingest": {"kind": "mtd", "root": str(root), "anomaly_shots": 0}}).ingest, tmp_path / "prepared")
    row = result.manifest.filter(result.manifest["path"] == image.as_posix()).row(0, named=True)
    assert (row["width"], row["height"]) == (40, 60)
    pre = Preprocess(64)
    img, m = pre.load_image(image)[..., 0], pre.load_mask(image.with_suffix(".png"))
    assert img[m].mean() > 200 and img[~m].mean() < 150  # the mask covers the square


def _oversized(root: Path) -> Path:
    p = root / "MT_Free/Imgs/exp0_num_77.jpg"
    Image.fromarray(np.full((300, 400), 128, np.uint8)).save(p)  # 120,000 pixels
    return p


def test_an_image_over_the_pixel_limit_is_rejected_naming_the_file(tmp_path):
    with pytest.raises(ImageTooLarge, match=r"big\.png: 400x300 = 120,000 pixels, over the limit of 100,000"):
        decode(_bytes(Image.new("L", (400, 300)), "PNG"), "big.png", options=DecodeOptions(max_pixels=100_000))
    root = make_mtd_tree(tmp_path / "mtd", normals=8, per_type=2)
    big = _oversized(root)
    out = tmp_path / "prepared"
    spec = {"kind": "mtd", "root": str(root), "anomaly_shots": 0, "max_pixels": 100_000}
    with pytest.raises(DatasetError, match=rf"{big}: 400x300 = 120,000 pixels, over the limit of 100,000 \(ingest.max_pixels\)"):
        ingest(parse_params({"ingest": spec}).ingest, out)
    assert not out.exists() or not any(out.iterdir())  # on_error: fail writes nothing
    result = ingest(parse_params({"ingest": {**spec, "on_error": "skip"}}).ingest, out)
    with open(out / "quarantine.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [str(big)] and "over the limit" in rows[0]["reason"]
    assert str(big) not in result.manifest["path"].to_list()


def test_the_decoding_rules_travel_from_ingest_to_the_model(tmp_path):
    root = make_mtd_tree(tmp_path / "mtd", normals=8, per_type=2)
    spec = {"kind": "mtd", "root": str(root), "anomaly_shots": 0, "bit_depth": "per_image", "max_pixels": 5_000_000}
    ingest(parse_params({"ingest": spec}).ingest, tmp_path / "prepared")
    import json

    vocab = Vocabulary.from_dict(json.loads((tmp_path / "prepared/vocabulary.json").read_text()))
    assert vocab.preprocess(64).decode == DecodeOptions("per_image", 5_000_000, "threshold")  # auto: the MTD layout's rule
    config = ModelConfig(defect_types=vocab.defect_types, decode=vocab.decode)
    assert config.preprocess.decode == DecodeOptions("per_image", 5_000_000, "threshold")
    assert ModelConfig(defect_types=["a"]).preprocess.decode == DecodeOptions()  # models saved before: the defaults
    with pytest.raises(ValueError, match=r"ingest.bit_depth"):
        parse_params({"ingest": {"bit_depth": "clip"}})


# ---------------------------------------------------------------------------- masks


def _square(value=1) -> np.ndarray:
    m = np.zeros((24, 32), np.uint8)
    m[6:14, 8:20] = value
    return m


def _mask_files(tmp_path: Path) -> dict[str, Path]:
    """One mask file per encoding, each marking the same square."""
    sq = _square()
    soft = _square(255)
    soft[5, 8:20] = 90  # a soft edge: noise, not defect
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[sq > 0] = (255, 0, 0)  # a red mask on black: its gray level (76) is below 128
    palette = Image.new("P", (32, 24))
    palette.putdata(sq.ravel().tolist())
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    labels = _square(3)  # a label-indexed mask: defect index 3
    wide = sq.astype(np.uint16)
    wide[6:14, 14:20] = 300  # label 1 beside label 300: full-scale alone would round label 1 to 0
    files = {"0_255": Image.fromarray(sq * 255), "0_1": Image.fromarray(sq), "soft": Image.fromarray(soft),
             "rgb": Image.fromarray(rgb), "palette": palette, "labels": Image.fromarray(labels),
             "labels_16bit": Image.fromarray(labels.astype(np.uint16)),
             "binary_16bit": Image.fromarray(sq.astype(np.uint16) * 65535),  # 0/65535: >= 128 once in 8 bits
             "labels_over_255": Image.fromarray(wide)}  # 16-bit labels 1 and 300: both survive the mapping
    out = {}
    for name, im in files.items():
        out[name] = tmp_path / f"{name}.png"
        im.save(out[name])
    return out


def test_masks_in_the_encodings_people_use(tmp_path):
    from uniadc_core.decoding import load_mask

    square = _square() > 0
    for name, path in _mask_files(tmp_path).items():
        assert (load_mask(path) == square).all(), name  # auto
    files = _mask_files(tmp_path)
    nonzero = DecodeOptions(mask_values="nonzero")
    assert (load_mask(files["soft"], nonzero) == (np.asarray(Image.open(files["soft"])) > 0)).all()  # the edge too
    assert not load_mask(files["0_1"], DecodeOptions(mask_values="threshold")).any()
    assert Image.open(files["labels_over_255"]).mode.startswith("I")  # really stored in 16 bits
    assert (load_mask(files["binary_16bit"], DecodeOptions(mask_values="threshold")) == square).all()
    assert (load_mask(files["labels_over_255"], nonzero) == square).all()


def test_a_0_1_mask_is_read_and_a_mask_empty_under_the_rule_is_an_error_naming_its_values(tmp_path):
    from tests.unit.data.test_layouts_and_validation import make_folder_tree

    root = tmp_path / "f"
    spec = make_folder_tree(root)
    for p in (root / "gt/scratch").glob("*.png"):
        Image.fromarray((np.asarray(Image.open(p)) >= 128).astype(np.uint8)).save(p)  # as labelling tools write them: 0/1
    spec["allow_missing_masks"] = True  # dent has no masks
    result = ingest(parse_params({"ingest": spec}).ingest, tmp_path / "prepared")
    scratch = result.manifest.filter(result.manifest["defect_type"] == "scratch")
    assert scratch.height == 2 and scratch["mask_path"].null_count() == 0
    pre = Vocabulary.from_dict(__import__("json").loads(result.vocabulary_path.read_text())).preprocess(64)
    assert pre.load_mask(scratch["mask_path"][0]).sum() == 16 * 16  # the square, not nothing
    spec["allow_missing_masks"] = False
    del spec["folder"]["classes"]["part"]["defects"]["dent"]
    with pytest.raises(DatasetError, match=r"s0_mask.png marks no defect pixel under ingest.mask_values: threshold \(its values: 0, 1\)"):
        ingest(parse_params({"ingest": {**spec, "mask_values": "threshold"}}).ingest, tmp_path / "other")
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())


def test_awkward_masks_transparent_background_inverted_gray_palette_and_broken_exif(tmp_path, caplog, monkeypatch):
    from uniadc_core.decoding import load_mask

    square = _square() > 0
    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[..., :3] = 255  # white under the transparent background
    rgba[square] = (255, 0, 0, 255)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert (load_mask(tmp_path / "rgba.png") == square).all()
    inverted = Image.new("P", (32, 24))
    inverted.putdata((1 - square.astype(int)).ravel().tolist())  # index 0 marks the defect ...
    inverted.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # ... and is white: the gray levels say so
    inverted.save(tmp_path / "inverted.png")
    assert (load_mask(tmp_path / "inverted.png") == square).all()
    _rotated_jpeg(tmp_path / "odd.jpg")

    def broken(im):  # what Pillow does on some malformed EXIF blocks
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr("uniadc_core.decoding.ImageOps.exif_transpose", broken)
    with caplog.at_level("WARNING"):
        out = load(tmp_path / "odd.jpg", mode="L")
    assert out.shape == (40, 60)  # used as stored (not turned), and said so naming the file
    assert "odd.jpg: unreadable EXIF orientation (ZeroDivisionError" in caplog.text
