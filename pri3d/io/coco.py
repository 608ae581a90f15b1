"""COCO instances JSON files (the annotations `pri3d coco` writes and instance segmentation reads)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

__all__ = ["load_coco"]


def load_coco(path: str | Path):
    """A ``pycocotools.coco.COCO`` of an instances JSON; errors name the file and what is wrong."""
    from pycocotools.coco import COCO

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in document]
    if not isinstance(document, dict) or missing:
        raise ValueError(
            f"{path}: not a COCO instances file (missing {', '.join(missing) or 'a top-level dict'})"
        )
    coco = COCO()
    coco.dataset = document
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
