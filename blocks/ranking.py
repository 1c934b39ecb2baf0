"""Ranking-model blocks: DCN v1 (CrossNet), xDeepFM (CIN), MaskNet, Wukong.

Each family lives in its own module; importing this one registers them all.
"""

from kzoo.blocks.cin import CIN  # noqa: F401
from kzoo.blocks.cross import CrossNet  # noqa: F401
from kzoo.blocks.masknet import MaskBlock, MaskNet  # noqa: F401
from kzoo.blocks.wukong import WuKong, WuKongLayer  # noqa: F401

__all__ = ["CIN", "CrossNet", "MaskBlock", "MaskNet", "WuKong", "WuKongLayer"]
