"""Small I/O helpers: atomic writes, image decoding with clear errors, PNG bytes, hashing."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from uniadc_core import decoding
from uniadc_core.decoding import DEFAULT, DecodeOptions


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE, _DIR_MODE = 0o666 & ~_umask(), 0o777 & ~_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes the file private (0600); give it the usual permissions
            os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, _DIR_MODE)  # mkdtemp makes it private (0700)
        for sub in tmp.rglob("*"):  # and some writers (safetensors) make their files 0600: the usual permissions
            os.chmod(sub, _DIR_MODE if sub.is_dir() else _FILE_MODE)
        if path.exists():  # two renames: the old one aside, the new one in; the old one comes back if the second fails
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except OSError:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def exclusive(path: str | Path, what: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` for the block, so that one ``what`` runs at a time on this machine:
    another process holding it is waited for up to ``wait_s`` seconds, then a RuntimeError names it (its pid and
    start, written into the file) and the lock file. The operating system drops the lock when its holder exits, even
    when killed, so a crash never leaves a stale lock (``fcntl.flock``; POSIX)."""
    import fcntl
    import time

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115  (held for the block)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    msg = f"{what} is already running ({holder}); wait for it to finish, then run again (lock file {path})"
                    raise RuntimeError(msg) from None
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


def timings_path(out_dir: str | Path) -> Path:
    """Where a stage writes the wall times of what it made in ``out_dir``: beside it, outside what DVC hashes
    (so a re-run on the same inputs gives the same output hash; the evaluate stage logs them to MLflow)."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f".{out_dir.name}.timings.json")


def write_text(path: str | Path, text: str) -> None:
    """``text`` to ``path`` atomically (temp file, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: not found (run the stage that writes it first, e.g. `dvc repro`)"
        raise FileNotFoundError(msg)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        msg = f"{path}: not valid JSON ({exc}); delete it and re-run the stage that writes it"
        raise ValueError(msg) from exc


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def decode_image(data: bytes, source: str = "<bytes>", mode: str = "RGB", options: DecodeOptions = DEFAULT) -> np.ndarray:
    """Image bytes -> uint8 (H, W, 3) for RGB or (H, W) for L, by the one decoder's rules (``uniadc_core.decoding``)."""
    return decoding.decode(data, source, mode, options)


def load_image(path: str | Path, mode: str = "RGB", options: DecodeOptions = DEFAULT) -> np.ndarray:
    """An image file by the one decoder's rules; a missing file is a ``FileNotFoundError`` naming it."""
    return decoding.load(path, mode, options)


def load_mask(path: str | Path, options: DecodeOptions = DEFAULT) -> np.ndarray:
    """A binary mask (H, W) bool: its defect pixels under ``options.mask_values`` (``uniadc_core.decoding``)."""
    return decoding.load_mask(path, options)


MAX_SQUARE = 250_000_000  # pixels of the square ``pad`` (and tile's whole-image view) builds before scaling down


def check_square(h: int, w: int) -> int:
    """The side of the square an (h, w) image is padded to; a very long strip (a tiny PNG can declare 1 x 60000) would
    need gigabytes for it and is refused by name instead."""
    side = max(h, w)
    if side * side > MAX_SQUARE:
        msg = (f"a {w}x{h} image padded to a {side}x{side} square needs {side * side:,} pixels (limit {MAX_SQUARE:,}): "
               "the model's resize (pad, or tile's whole-image view) pads to a square; crop the strip into parts, or use a model "
               "with resize: stretch")
        raise ValueError(msg)
    return side


def resize(arr: np.ndarray, size: int, nearest: bool = False, policy: str = "stretch") -> np.ndarray:
    """Make an (H, W[, C]) uint8/bool array square (size, size).

    ``stretch`` scales each side on its own; ``pad`` first pads the short side (reflected image,
    zeros for masks) to keep the aspect ratio.
    """
    h, w = arr.shape[:2]
    if h == size and w == size:
        return arr
    is_bool = arr.dtype == bool
    if policy == "pad" and h != w:
        side = check_square(h, w)
        pads = [((side - h) // 2, side - h - (side - h) // 2), ((side - w) // 2, side - w - (side - w) // 2)] + [(0, 0)] * (arr.ndim - 2)
        arr = np.pad(arr, pads, mode="constant" if (is_bool or nearest) else "reflect")
    elif policy not in ("stretch", "pad"):
        msg = f"unknown resize policy '{policy}'; valid: stretch, pad"
        raise ValueError(msg)
    im = Image.fromarray(arr.astype(np.uint8) * 255 if is_bool else arr)
    im = im.resize((size, size), Image.NEAREST if nearest or is_bool else Image.BILINEAR)
    out = np.asarray(im)
    return out >= 128 if is_bool else out


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


_PNG_COLOUR = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (gray, RGB, RGBA)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_png(arr: np.ndarray) -> bytes:
    """A uint8 (H, W) or (H, W, 1|3|4) array as PNG bytes, 3-5x faster than ``png_bytes`` at about its size: every
    row gets the PNG "Up" filter (a vectorised difference from the row above) and zlib run-length coding, instead of
    a filter chosen per row. Any PNG reader decodes the same pixels. The synthesis shards use it; files whose bytes
    are their identity (the demo images: image ids are file hashes) keep ``png_bytes``."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in _PNG_COLOUR):
        msg = f"encode_png: a uint8 (H, W) or (H, W, 1|3|4) array is needed, got {arr.dtype} {arr.shape}"
        raise ValueError(msg)
    h, w = arr.shape[:2]
    if h == 0 or w == 0:
        msg = f"encode_png: an image needs at least one pixel a side, got {arr.shape}"
        raise ValueError(msg)
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    rows = np.ascontiguousarray(arr).reshape(h, w * channels)
    raw = np.empty((h, w * channels + 1), np.uint8)
    raw[:, 0] = 2  # filter type Up
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # modulo 256, as the filter is defined
    packer = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    header = struct.pack(">IIBBBBB", w, h, 8, _PNG_COLOUR[channels], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", packer.compress(raw.tobytes()) + packer.flush()) + _png_chunk(b"IEND", b""))


def save_png(path: str | Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(png_bytes(arr))


FILES_KEY = "files"  # config.json: each weight file's size and sha256, written with it and checked on every load


def save_weights_dir(directory: str | Path, state: dict, config: dict, extra: dict | None = None,
                     tensors: dict[str, dict] | None = None) -> Path:
    """A model directory: ``model.safetensors`` + ``config.json`` (+ extra JSON files, + extra safetensors
    files ``{name: {key: tensor}}``), replaced atomically; ``config.json`` records each weight file's size and sha256."""
    from safetensors.torch import save_file

    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))
        for name, part in (tensors or {}).items():
            save_file({k: v.detach().cpu().contiguous() for k, v in part.items()}, str(tmp / name))
        files = {n: {"size": (tmp / n).stat().st_size, "sha256": sha256_file(tmp / n)} for n in ["model.safetensors", *(tensors or {})]}
        (tmp / "config.json").write_text(json.dumps({**config, FILES_KEY: files}, indent=2) + "\n")
        for name, obj in (extra or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2) + "\n")
    return directory


def verify_files(directory: Path, files: dict, made_by: str) -> None:
    """Each weight file ``config.json`` lists is there with its recorded size and sha256, or an error naming the file
    and the stage that writes it again."""
    fix = f"re-run the {made_by} stage (`dvc repro {made_by}`), or restore the folder whole (`dvc checkout`)"
    for name, record in files.items():
        path = directory / name
        if not path.is_file():
            msg = f"{path}: missing, though {directory / 'config.json'} lists it; {fix}"
            raise FileNotFoundError(msg)
        size = path.stat().st_size
        if size != record["size"]:
            msg = f"{path}: {size} bytes where {directory / 'config.json'} records {record['size']} (truncated or replaced); {fix}"
            raise ValueError(msg)
        if sha256_file(path) != record["sha256"]:
            msg = f"{path}: its sha256 is not the one {directory / 'config.json'} records (altered since it was saved); {fix}"
            raise ValueError(msg)


def read_weights_dir(directory: str | Path, made_by: str) -> tuple[dict, dict]:
    """(config dict, tensors) of a model directory, its weight files checked against the sizes and sha256 that
    ``config.json`` records (a folder saved before they were recorded is read unchecked); ``made_by`` names the stage
    to run when something is missing or damaged. The other weight files it lists are checked too, before
    ``model.safetensors`` is read: tensors only, nothing unpickled."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, weights = directory / "config.json", directory / "model.safetensors"
    for p in (cfg_path, weights):
        if not p.is_file():
            msg = f"{p}: not found; a model directory holds config.json + model.safetensors (run the {made_by} stage)"
            raise FileNotFoundError(msg)
    config = read_json(cfg_path)
    files = config.pop(FILES_KEY, None)
    if files is not None:
        verify_files(directory, files, made_by)
    return config, load_file(str(weights), device="cpu")
