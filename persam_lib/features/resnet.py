"""ResNet-50 truncated after layer 3 — the common pathology baseline encoder (1024-d features).

The modules mirror torchvision's ``resnet50`` names (conv1, bn1, layer1..layer3, each block with
conv1/bn1/conv2/bn2/conv3/bn3 and downsample.0/.1), so torchvision's weight files load as they are
(their layer4 and fc keys are dropped). torchvision itself is not needed.
"""
from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50Trunc(nn.Module):
    """ResNet-50 stem + layer1..layer3, global average pooled: (B, 3, H, W) → (B, 1024)."""

    dim = 1024

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._layer(64, 64, 3, 1)
        self.layer2 = self._layer(256, 128, 4, 2)
        self.layer3 = self._layer(512, 256, 6, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)

    @staticmethod
    def _layer(in_channels: int, width: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [Bottleneck(in_channels, width, stride)]
        layers += [Bottleneck(width * 4, width) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 1024, H/16, W/16)
        return self.pool(x).flatten(1)
