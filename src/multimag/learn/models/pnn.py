"""SMSE's plain neural network (PNN), adapted to the patch size.

Sun et al. describe a plain stack of convolutions with PReLU activations and
max pooling feeding a 12-d embedding. Here: four blocks of
``conv3x3 -> batch norm -> PReLU -> maxpool 2`` with widths ``w, 2w, 4w, 8w``
(``w`` = ``model.pnn_width``), then global average pooling in the head, so any
patch size of 16 px or more works (the paper's fixed-size fully connected
layer is what this adaptation replaces).
"""

from __future__ import annotations

from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.PReLU(c_out),
        nn.MaxPool2d(2))


class PNN(nn.Sequential):
    """Feature maps ``(B, 8w, H/16, W/16)`` of an RGB batch."""

    def __init__(self, width: int = 16) -> None:
        widths = [width, 2 * width, 4 * width, 8 * width]
        super().__init__(*(_block(c_in, c_out) for c_in, c_out
                           in zip([3, *widths[:-1]], widths, strict=True)))
        self.out_channels = widths[-1]
