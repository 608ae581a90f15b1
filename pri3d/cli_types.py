"""Argument types shared by the `pri3d` subcommands.

Image sizes are written HEIGHTxWIDTH everywhere, as the original's configs write ``[H, W]`` and as
pri3d's own config values (``dataset.size=[240, 320]``) read: ScanNet's colour frames are 968x1296.
"""

from __future__ import annotations

import argparse


def image_size(text: str, minimum: int = 1) -> tuple[int, int]:
    """``"240x320"`` -> (240, 320): height, then width, in pixels, each at least ``minimum``.

    A bad value is an ``argparse.ArgumentTypeError`` that argparse reports under the option's name.
    """
    height, sep, width = text.lower().partition("x")
    if not (sep and height.isdigit() and width.isdigit()) or min(int(height), int(width)) < max(minimum, 1):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected HEIGHTxWIDTH in pixels, each at least {max(minimum, 1)} (e.g. 240x320)"
        )
    return int(height), int(width)
