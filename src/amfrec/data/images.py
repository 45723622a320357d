"""Item pictures: the file names and formats the importer writes and `amfrec features` reads."""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # posters/<item_id><suffix>
_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}


def image_format(path: Path) -> str | None:
    """The format, "JPEG" or "PNG", by the file's first bytes (not its name); None for anything else."""
    with Path(path).open("rb") as f:
        head = f.read(8)
    return next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), None)
