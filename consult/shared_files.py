"""Images and PDFs shared in a call, checked by their bytes before they enter the record.

A photo of a skin lesion, an ECG printout: the village doctor shares them in the call and
they become DocumentReferences in the patient's record. What a file is comes from its
bytes, never from its name or the type the sender declares:

- **images** (JPEG, PNG, WebP): the magic number says which; the picture size is read from
  the header and refused past :data:`MAX_PIXELS` (a small file can declare a picture that
  would take gigabytes to decode); then the image is decoded, with PyAV, and must give a
  picture of that size;
- **PDF**: ``%PDF-1.x``/``%PDF-2.0`` at the start, ``%%EOF`` and a ``startxref`` offset at the
  end that points at a cross-reference table or stream inside the file; and no JavaScript,
  launch actions or embedded files (a clinician opens these files).

Anything else — an executable or a web page named ``photo.jpg``, a truncated picture — is
refused with :class:`InvalidFile`, naming the field. The stored type is the detected one.
:func:`check_file` decodes, so call it in a thread.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass

import av

from consult.call_records import SharedFile

#: The types a call accepts, by what the bytes are.
ACCEPTED_TYPES = ("image/jpeg", "image/png", "image/webp", "application/pdf")
MAX_SIDE = 12_000
MAX_PIXELS = 50_000_000
MAX_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 1000
_PDF_TAIL = 2048
_PDF_RISKS = (b"/JavaScript", b"/JS", b"/Launch", b"/EmbeddedFile")
_STARTXREF = re.compile(rb"startxref\s+(\d+)\s+%%EOF\s*$")
_XREF_AT = re.compile(rb"\s*(xref\b|\d+\s+\d+\s+obj\b)")


class InvalidFile(ValueError):
    """A file refused; ``field`` names what is wrong, ``message`` says it for a person."""

    def __init__(self, field: str, message: str, *, code: str = "invalid-file") -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.code = code


@dataclass(frozen=True)
class _Image:
    content_type: str
    format: str
    width: int
    height: int


def detect_type(data: bytes) -> str | None:
    """The accepted type these bytes are, by their magic number, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    return None


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise InvalidFile("content", "the PNG image has no header (IHDR)")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    position = 2
    while position + 9 < len(data):
        if data[position] != 0xFF:
            raise InvalidFile("content", "the JPEG image's segments are broken")
        marker = data[position + 1]
        if marker == 0xFF:
            position += 1
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = int.from_bytes(data[position + 5 : position + 7], "big")
            width = int.from_bytes(data[position + 7 : position + 9], "big")
            return width, height
        if length < 2:
            break
        position += 2 + length
    raise InvalidFile("content", "the JPEG image has no frame header (SOF)")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        return (
            int.from_bytes(data[26:28], "little") & 0x3FFF,
            int.from_bytes(data[28:30], "little") & 0x3FFF,
        )
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    raise InvalidFile("content", "the WebP image has no picture header")


_IMAGES = {
    "image/png": ("png_pipe", _png_size),
    "image/jpeg": ("jpeg_pipe", _jpeg_size),
    "image/webp": ("webp_pipe", _webp_size),
}


def _check_image(content_type: str, data: bytes) -> None:
    pipe, size_of = _IMAGES[content_type]
    width, height = size_of(data)
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE) or width * height > MAX_PIXELS:
        raise InvalidFile(
            "content",
            f"the image says it is {width}×{height} pixels; at most {MAX_SIDE} a side and "
            f"{MAX_PIXELS // 1_000_000} megapixels are accepted",
        )
    try:
        with av.open(io.BytesIO(data), mode="r", format=pipe) as container:
            frame = next(container.decode(video=0), None)
    except (av.FFmpegError, StopIteration, ValueError) as error:
        raise InvalidFile("content", f"the image does not decode: {error}") from None
    if frame is None or (frame.width, frame.height) != (width, height):
        raise InvalidFile("content", "the image does not decode to the picture it declares")


def _check_pdf(data: bytes) -> None:
    if not re.match(rb"%PDF-(1\.[0-7]|2\.0)", data[:16]):
        raise InvalidFile("content", "the PDF's header names no PDF version (1.0–2.0)")
    tail = data[-_PDF_TAIL:]
    found = _STARTXREF.search(tail)
    if found is None:
        raise InvalidFile(
            "content", "the PDF does not end with startxref and %%EOF: it is cut short or not a PDF"
        )
    offset = int(found.group(1))
    if not 0 < offset < len(data) or not _XREF_AT.match(data, offset):
        raise InvalidFile("content", "the PDF's startxref does not point at its cross-references")
    for risk in _PDF_RISKS:
        if re.search(re.escape(risk) + rb"[\s/<(\[]", data):
            raise InvalidFile(
                "content",
                "the PDF holds scripts, launch actions or embedded files, which are not accepted "
                "in a consult; print it to a plain PDF and share that",
            )


def _clean_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidFile("name", '"name" must be the file\'s name')
    base = re.split(r"[\\/]", name.strip())[-1]
    if not base or len(base) > MAX_NAME_CHARS or any(ord(c) < 32 for c in base):
        raise InvalidFile("name", f'"name" must be a file name of at most {MAX_NAME_CHARS}')
    return base


def check_file(
    *,
    file_id: str,
    name: object,
    data: bytes,
    max_bytes: int,
    description: object = None,
) -> SharedFile:
    """The file, checked (see the module docstring); :class:`InvalidFile` if refused."""
    clean = _clean_name(name)
    if description is not None and (
        not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS
    ):
        raise InvalidFile(
            "description", f'"description" must be text of at most {MAX_DESCRIPTION_CHARS}'
        )
    if not data:
        raise InvalidFile("content", "the file is empty")
    if len(data) > max_bytes:
        raise InvalidFile(
            "size",
            f"the file is {len(data) / 2**20:.1f} MiB; at most {max_bytes / 2**20:.0f} MiB",
            code="file-too-large",
        )
    content_type = detect_type(data)
    if content_type is None:
        raise InvalidFile(
            "content",
            f"{clean} is not a JPEG, PNG or WebP image or a PDF, whatever its name says; "
            "only those can be shared in a consult",
            code="file-type-refused",
        )
    if content_type == "application/pdf":
        _check_pdf(data)
    else:
        _check_image(content_type, data)
    return SharedFile(
        file_id=file_id,
        name=clean,
        content_type=content_type,
        data=data,
        sha1=hashlib.sha1(data).digest(),
        description=description if isinstance(description, str) else None,
    )


__all__ = ["ACCEPTED_TYPES", "InvalidFile", "check_file", "detect_type"]
