"""Image work for uploads, blocking (run it in a worker thread): size and thumbnail.

The thumbnail is a fresh encoding of the decoded pixels, so it carries no EXIF, XMP or
comments (GPS position, camera serial); the EXIF orientation is applied first so it looks
like the original does. Pixel counts are checked from the header before anything is
decoded: a small file that claims 30,000 x 30,000 pixels (a decompression bomb) is refused
without allocating them.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from chatsrv.domain.uploads import THUMBNAIL_TYPE


class ImageRefused(Exception):
    """The image declares more pixels than allowed."""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    width: int
    height: int
    thumbnail: bytes | None  # THUMBNAIL_TYPE
    thumbnail_type: str | None


def set_pixel_limit(max_pixels: int) -> None:
    """Pillow's own bomb check is process-wide; ours (in `inspect`) is per call. Pillow
    raises at twice its limit: set it so it backs ours up."""
    Image.MAX_IMAGE_PIXELS = max_pixels


def inspect(path: Path, *, max_pixels: int, thumbnail_px: int) -> ImageInfo | None:
    """Width, height and a thumbnail (longest side `thumbnail_px`) of the image at `path`;
    None if Pillow cannot read it (the upload is then kept as a plain file). Raises
    ImageRefused over `max_pixels`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageRefused(f"{width}x{height} pixels is over {max_pixels}")
                width, height = _oriented(img, width, height)
                img.draft("RGB", (thumbnail_px, thumbnail_px))  # JPEG: decode at 1/2..1/8
                frame = ImageOps.exif_transpose(img)
                frame.thumbnail((thumbnail_px, thumbnail_px))
                return ImageInfo(width, height, *_encode(frame))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRefused(str(exc)) from exc
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError, EOFError):
        return None


def _oriented(img: Image.Image, width: int, height: int) -> tuple[int, int]:
    """The size as displayed: EXIF orientations 5-8 swap the sides."""
    orientation = img.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _encode(frame: Image.Image) -> tuple[bytes, str]:
    out = io.BytesIO()
    has_alpha = frame.mode in ("RGBA", "LA", "PA") or (
        frame.mode == "P" and "transparency" in frame.info)
    frame.convert("RGBA" if has_alpha else "RGB").save(out, "WEBP", quality=80)
    return out.getvalue(), THUMBNAIL_TYPE


_APP1, _COM, _SOS, _EOI = 0xE1, 0xFE, 0xDA, 0xD9


def strip_jpeg_metadata(src: Path, dst: Path) -> bool:
    """Write `src` to `dst` without its EXIF and XMP (APP1) and comment segments, keeping
    the pixels byte for byte (no re-encoding) and the orientation (as a one-tag EXIF), so a
    phone photo no longer tells where it was taken. False (and no `dst`) when there was
    nothing to remove or `src` is not a JPEG we can walk."""
    try:
        with Image.open(src) as img:
            orientation = img.getexif().get(0x0112, 1)
    except (OSError, ValueError, SyntaxError):
        return False
    with open(src, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return False
        kept: list[bytes] = []
        dropped = False
        while True:
            marker = f.read(2)
            if len(marker) < 2 or marker[0] != 0xFF:
                return False
            kind = marker[1]
            if kind in (_SOS, _EOI):
                rest_at = f.tell() - 2
                break
            size_b = f.read(2)
            if len(size_b) < 2:
                return False
            size = int.from_bytes(size_b, "big")
            if size < 2:
                return False
            body = f.read(size - 2)
            if len(body) < size - 2:
                return False
            if kind in (_APP1, _COM):
                dropped = True
                continue
            kept.append(marker + size_b + body)
        if not dropped:
            return False
        with open(dst, "wb") as out:
            out.write(b"\xff\xd8")
            while kept and kept[0][1] == 0xE0:  # JFIF (APP0) stays first
                out.write(kept.pop(0))
            if orientation not in (1, None):
                exif = Image.Exif()
                exif[0x0112] = orientation
                payload = exif.tobytes()
                out.write(b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload)
            for segment in kept:
                out.write(segment)
            f.seek(rest_at)
            while chunk := f.read(1 << 16):
                out.write(chunk)
    return True
