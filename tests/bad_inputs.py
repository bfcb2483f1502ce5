"""Odd image files and a refer-format release holding them, for the bad-input tests
(``tests/reliability``).

Each readable kind is written with known pixels, so a test can say what the RGB uint8 image
loaded from it must be: :data:`READABLE` maps a kind to a writer returning the expected
(H, W, 3) uint8 array. :data:`UNREADABLE` kinds cannot be decoded at all.
"""

from __future__ import annotations

import json
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from refer_fixture import truncate_jpeg


def _png16(path: Path, values: np.ndarray, colour_type: int) -> None:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour): ``values`` (H, W)
    greyscale (colour type 0) or (H, W, 3) RGB (colour type 2), uint16."""
    h, w = values.shape[:2]
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _ramp(h: int, w: int) -> np.ndarray:
    """(H, W) uint8 with every value distinct-ish: a test pattern, not noise (JPEG-safe)."""
    return ((np.arange(h)[:, None] * 7 + np.arange(w)[None, :] * 3) % 256).astype(np.uint8)


def rgba_png(path: Path) -> np.ndarray:
    rgb = np.stack([_ramp(24, 32), 255 - _ramp(24, 32), np.full((24, 32), 9, np.uint8)], -1)
    alpha = np.zeros((24, 32, 1), np.uint8)  # fully transparent: the colour must survive
    Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA").save(path)
    return rgb


def grey_png(path: Path) -> np.ndarray:
    grey = _ramp(24, 32)
    Image.fromarray(grey, "L").save(path)
    return np.repeat(grey[..., None], 3, -1)


def cmyk_jpeg(path: Path) -> np.ndarray:
    """Flat colour, so JPEG loses nothing worth a tolerance beyond a few levels."""
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[:, :16] = (200, 30, 40)
    rgb[:, 16:] = (20, 180, 90)
    Image.fromarray(rgb).convert("CMYK").save(path, "JPEG", quality=100)
    return rgb


def grey16_png(path: Path) -> np.ndarray:
    wide = (np.arange(24 * 32).reshape(24, 32) * 85).astype(np.uint16)  # up to 65195
    _png16(path, wide, colour_type=0)
    return np.repeat((wide >> 8).astype(np.uint8)[..., None], 3, -1)


def rgb16_png(path: Path) -> np.ndarray:
    wide = np.zeros((24, 32, 3), np.uint16)
    wide[..., 0], wide[..., 1], wide[..., 2] = 65535, 32896, 257
    _png16(path, wide, colour_type=2)
    return (wide >> 8).astype(np.uint8)


def one_pixel_png(path: Path) -> np.ndarray:
    rgb = np.array([[[10, 200, 30]]], np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def _strip(path: Path, w: int, h: int) -> np.ndarray:
    rgb = np.stack([_ramp(h, w)] * 3, -1)
    Image.fromarray(rgb).save(path)
    return rgb


def wide_png(path: Path) -> np.ndarray:
    """10000 x 50: aspect 200, the most Qwen2-VL's processor takes as it is."""
    return _strip(path, 10000, 50)


def wider_png(path: Path) -> np.ndarray:
    """4000 x 10: aspect 400, beyond what Qwen2-VL's processor takes."""
    return _strip(path, 4000, 10)


def truncated_jpeg(path: Path) -> None:
    Image.fromarray(np.stack([_ramp(24, 32)] * 3, -1)).save(path, "JPEG")
    truncate_jpeg(path)


def missing_file(path: Path) -> None:
    path.unlink(missing_ok=True)


READABLE: dict[str, Callable[[Path], np.ndarray]] = {
    "rgba_png": rgba_png,
    "grey_png": grey_png,
    "cmyk_jpeg": cmyk_jpeg,
    "grey16_png": grey16_png,
    "rgb16_png": rgb16_png,
    "one_pixel": one_pixel_png,
    "wide_10000x50": wide_png,
    "wider_4000x10": wider_png,
}
UNREADABLE: dict[str, Callable[[Path], None]] = {
    "truncated_jpeg": truncated_jpeg,
    "missing": missing_file,
}
TOLERANCE = {"cmyk_jpeg": 6}  # JPEG's own loss on flat colour; every other kind is exact


def write_readable(folder: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """Every readable kind under ``folder``: kind -> (file, expected RGB uint8 pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for kind, write in READABLE.items():
        path = folder / f"{kind}.{'jpg' if 'jpeg' in kind else 'png'}"
        out[kind] = (path, write(path))
    return out


# ----------------------------------------------------------------------------- refer release

LONG_EXPRESSION = " ".join(["the big brown dog"] * 125)  # 500 words
NON_ASCII = ["der Hund links für Kinder", "左边的狗", "the 🐶 on the left"]
EXPRESSIONS = ["the thing", LONG_EXPRESSION, *NON_ASCII, "", "  \t "]  # the last two: blank


def make_bad_refer_release(root: Path) -> dict:
    """A refcoco release (refer layout) with one image per kind of :data:`READABLE` and
    :data:`UNREADABLE`, each with one ref whose mask is the whole image and whose sentences
    are :data:`EXPRESSIONS` (two of them blank).

    Returns: ``root`` and ``images`` (data.root, data.images), ``files`` {kind: path},
    ``expected`` {kind: RGB uint8 pixels} for readable kinds, ``image_ids`` {kind: id}.
    """
    refer, images = root / "refer", root / "images"
    (refer / "refcoco").mkdir(parents=True)
    images.mkdir(parents=True)
    files, expected, image_ids = {}, {}, {}
    entries, annotations, refs = [], [], []
    for i, kind in enumerate([*READABLE, *UNREADABLE], start=1):
        path = images / f"{kind}.{'jpg' if 'jpeg' in kind else 'png'}"
        if kind in READABLE:
            expected[kind] = READABLE[kind](path)
            h, w = expected[kind].shape[:2]
        else:
            truncated_jpeg(path)  # a JPEG of 32x24 first, so its header has a size
            UNREADABLE[kind](path)
            h, w = 24, 32
        files[kind], image_ids[kind] = path, i
        entries.append({"id": i, "file_name": path.name, "height": h, "width": w})
        annotations.append(
            {
                "id": 100 + i,
                "image_id": i,
                "category_id": 1,
                "segmentation": [[0, 0, w, 0, w, h, 0, h]],
            }
        )
        sentences = [{"sent_id": 1000 * i + k, "sent": s} for k, s in enumerate(EXPRESSIONS)]
        refs.append(
            {
                "ref_id": i,
                "ann_id": 100 + i,
                "image_id": i,
                "split": "train",
                "category_id": 1,
                "sentences": sentences,
            }
        )
    instances = {
        "images": entries,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing"}],
    }
    (refer / "refcoco" / "instances.json").write_text(json.dumps(instances))
    with (refer / "refcoco" / "refs(unc).p").open("wb") as fh:
        pickle.dump(refs, fh, protocol=2)
    return {
        "root": refer,
        "images": images,
        "files": files,
        "expected": expected,
        "image_ids": image_ids,
    }
