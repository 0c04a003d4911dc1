"""The block-device stack: a Layer base, leaf drivers, filters and formats."""

from blockyard.block.layer import HOLE, ZERO, Extent, Layer, Limits

__all__ = ["HOLE", "ZERO", "Extent", "Layer", "Limits"]
