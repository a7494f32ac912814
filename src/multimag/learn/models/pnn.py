"""SMSE's plain neural network (PNN), with global average pooling in the head in
place of the paper's fixed-size fully connected layer, so any patch of 16 px or
more fits."""

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
