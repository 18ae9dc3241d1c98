#!/usr/bin/env python
"""Build the onnxprune model zoo: small random-weight models exported to ONNX.

    python models/build_zoo.py            # rebuild everything into models/zoo/
    python models/build_zoo.py mlp unet   # rebuild only these entries (a ZOO name also
                                          # rebuilds its variants, e.g. resnet_basic_b1)

Every model is built with a fixed seed, put in eval mode, and its BatchNorm
layers get random (non-trivial) running statistics and affine parameters.  Each
entry of ``ZOO`` is exported with the legacy TorchScript exporter (opset 13
unless noted) and, where marked, with the dynamo exporter as well.  A few files
are made by hand (``nhwc``) or by rewriting another export (``paddle_style``).

``TZOO`` holds the transformer encoders (``bert_tiny``, ``bert_tiny_fused``, ``vit_tiny``,
``gpt_block``): legacy exporter at opset 14 (plus extra opsets where noted) and the
dynamo exporter, dynamic batch and sequence length, checked at several batch sizes
and sequence lengths (``TF_CHECK_SHAPES``).

At the end every file is checked with ``onnx.checker`` (full_check) and run in
onnxruntime on a random batch, against the PyTorch (or numpy) reference; the
script exits non-zero if any check fails.  ``manifest.json`` lists every file.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
ZOO_DIR = HERE / "zoo"
TOL = 1e-4

torch.set_num_threads(2)
warnings.filterwarnings("ignore")
logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" noise


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def randomize_norms(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm random running stats (positive var) and affine params."""
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(0.05 + 0.4 * torch.rand(m.weight.shape, generator=g))
    return model


def conv_bn_relu(cin, cout, k=3, s=1, groups=1, act=nn.ReLU):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        act(),
    )


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------

class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 32), nn.ReLU(),
            nn.Linear(32, 32), nn.ReLU(),
            nn.Linear(32, 10),
        )

    def forward(self, x):
        return self.net(x)


class LeNet5(nn.Module):
    """conv-pool-conv-pool-flatten-fc-fc-fc; nn.Flatten feeds a Gemm (16*4*4 features)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(16 * 4 * 4, 64), nn.ReLU(),
            nn.Linear(64, 32), nn.ReLU(),
            nn.Linear(32, 10),
        )

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


class VGGBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(3, 16), conv_bn_relu(16, 16), nn.MaxPool2d(2),   # 16x16
            conv_bn_relu(16, 32), conv_bn_relu(32, 32), nn.MaxPool2d(2),  # 8x8
            conv_bn_relu(32, 32), nn.MaxPool2d(2),                        # 4x4
        )
        self.classifier = nn.Sequential(
            nn.Linear(32 * 4 * 4, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10)
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + idt)


class ResNetBasic(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(3, 16)
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, stride=2), BasicBlock(32, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class Bottleneck(nn.Module):
    def __init__(self, cin, width, cout, stride=1, groups=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + idt)


class ResNetBottleneck(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(3, 16)
        self.layer1 = nn.Sequential(Bottleneck(16, 8, 32), Bottleneck(32, 8, 32))
        self.layer2 = nn.Sequential(Bottleneck(32, 16, 64, stride=2), Bottleneck(64, 16, 64))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class ResNeXt(nn.Module):
    """Bottlenecks whose 3x3 conv is grouped (groups=4)."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(3, 32)
        self.block1 = Bottleneck(32, 32, 32, groups=4)              # identity residual
        self.block2 = Bottleneck(32, 32, 64, stride=2, groups=4)    # downsample residual
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hid = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = []
        if expand != 1:
            layers.append(conv_bn_relu(cin, hid, 1, act=nn.ReLU6))
        layers += [
            conv_bn_relu(hid, hid, 3, stride, groups=hid, act=nn.ReLU6),  # depthwise
            nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout),    # linear bottleneck
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(3, 16, 3, 2, act=nn.ReLU6),  # 16x16
            InvertedResidual(16, 16, 1, 1),           # t=1, residual
            InvertedResidual(16, 24, 2, 4),           # no residual
            InvertedResidual(24, 24, 1, 4),           # residual
            InvertedResidual(24, 32, 1, 2),           # no residual (channels change)
            conv_bn_relu(32, 64, 1, act=nn.ReLU6),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class SEConv(nn.Module):
    """torchvision-style squeeze-excitation: GAP -> 1x1 conv -> ReLU -> 1x1 conv -> Sigmoid."""

    def __init__(self, c, r=4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(self.pool(x)))))
        return x * s


class SELinear(nn.Module):
    """Original-SENet-style SE: mean -> view(b, c) -> Linear -> ReLU -> Linear -> Sigmoid -> view(b, c, 1, 1)."""

    def __init__(self, c, r=4):
        super().__init__()
        self.fc1 = nn.Linear(c, c // r)
        self.fc2 = nn.Linear(c // r, c)

    def forward(self, x):
        b, c = x.shape[0], x.shape[1]
        s = x.mean(dim=(2, 3))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s.view(b, c, 1, 1)


class SEBlock(nn.Module):
    def __init__(self, c, se):
        super().__init__()
        self.conv1 = conv_bn_relu(c, c)
        self.conv2 = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
        self.se = se

    def forward(self, x):
        return F.relu(x + self.se(self.conv2(self.conv1(x))))


class SENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(3, 32)
        self.block1 = SEBlock(32, SEConv(32))
        self.block2 = SEBlock(32, SELinear(32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class Inception(nn.Module):
    """Four parallel branches concatenated on channels (8+12+8+8=36), then a 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(3, 16)
        self.b1 = conv_bn_relu(16, 8, 1)
        self.b2 = nn.Sequential(conv_bn_relu(16, 8, 1), conv_bn_relu(8, 12, 3))
        self.b3 = nn.Sequential(conv_bn_relu(16, 8, 1), conv_bn_relu(8, 8, 3), conv_bn_relu(8, 8, 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn_relu(16, 8, 1))
        self.head = conv_bn_relu(36, 32, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)
        return self.fc(torch.flatten(self.pool(self.head(x)), 1))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 2 * growth, 1, bias=False),
            nn.BatchNorm2d(2 * growth), nn.ReLU(), nn.Conv2d(2 * growth, growth, 3, 1, 1, bias=False),
        )

    def forward(self, x):
        return torch.cat([x, self.net(x)], 1)


class DenseNet(nn.Module):
    def __init__(self, growth=8):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.block1 = nn.Sequential(*[DenseLayer(16 + i * growth, growth) for i in range(3)])  # -> 40
        self.trans = nn.Sequential(
            nn.BatchNorm2d(40), nn.ReLU(), nn.Conv2d(40, 24, 1, bias=False), nn.AvgPool2d(2)
        )
        self.block2 = nn.Sequential(*[DenseLayer(24 + i * growth, growth) for i in range(2)])  # -> 40
        self.norm = nn.BatchNorm2d(40)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(40, 10)

    def forward(self, x):
        x = self.block2(self.trans(self.block1(self.stem(x))))
        x = F.relu(self.norm(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class YConv(nn.Module):
    """YOLOv8 Conv: conv + BN + SiLU."""

    def __init__(self, cin, cout, k=1, s=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class YBottleneck(nn.Module):
    def __init__(self, c, shortcut=True):
        super().__init__()
        self.cv1 = YConv(c, c, 3)
        self.cv2 = YConv(c, c, 3)
        self.add = shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """YOLOv8 C2f.  use_split=False: ``chunk(2, 1)`` (ultralytics forward); True: ``split((c, c), 1)``."""

    def __init__(self, cin, cout, n=1, use_split=False):
        super().__init__()
        self.c = cout // 2
        self.cv1 = YConv(cin, 2 * self.c, 1)
        self.cv2 = YConv((2 + n) * self.c, cout, 1)
        self.m = nn.ModuleList(YBottleneck(self.c) for _ in range(n))
        self.use_split = use_split

    def forward(self, x):
        if self.use_split:
            y = list(self.cv1(x).split((self.c, self.c), 1))
        else:
            y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C2fNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = YConv(3, 16, 3, 2)          # 16x16
        self.c2f1 = C2f(16, 32, n=2)            # chunk
        self.down = YConv(32, 32, 3, 2)         # 8x8
        self.c2f2 = C2f(32, 32, n=1, use_split=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.c2f2(self.down(self.c2f1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class V8Detect(nn.Module):
    """A YOLOv8 detector in miniature: C2f backbone at two strides, ultralytics' Detect head
    (per level cv2 -> 4 x 16 DFL bins and cv3 -> class logits, concatenated over the anchors),
    decoded as the exporter sees it: DFL (softmax over the bins, a fixed 1x1 conv), anchor
    points and strides, then ``cat((boxes, cls.sigmoid()), 1)`` = [batch, 4 + classes, anchors]."""

    nc, reg = 5, 16

    def __init__(self):
        super().__init__()
        self.stem = YConv(3, 16, 3, 2)          # 16x16
        self.c2f1 = C2f(16, 32, n=1)
        self.down = YConv(32, 32, 3, 2)         # 8x8
        self.c2f2 = C2f(32, 32, n=1, use_split=True)
        self.cv2 = nn.ModuleList(nn.Sequential(YConv(32, 32, 3), nn.Conv2d(32, 4 * self.reg, 1))
                                 for _ in range(2))
        self.cv3 = nn.ModuleList(nn.Sequential(YConv(32, 32, 3), nn.Conv2d(32, self.nc, 1))
                                 for _ in range(2))
        self.dfl = nn.Conv2d(self.reg, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(self.reg, dtype=torch.float).view(1, self.reg, 1, 1)
        points, strides = [], []
        for size, stride in ((16, 2), (8, 4)):
            yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
            points.append(torch.stack((xx, yy), -1).view(-1, 2))
            strides.append(torch.full((size * size, 1), float(stride)))
        self.register_buffer("anchors", torch.cat(points).T.unsqueeze(0))    # [1, 2, A]
        self.register_buffer("strides", torch.cat(strides).T.unsqueeze(0))   # [1, 1, A]

    def forward(self, x):
        p1 = self.c2f1(self.stem(x))
        p2 = self.c2f2(self.down(p1))
        n = x.shape[0]
        feats = [torch.cat((self.cv2[i](p), self.cv3[i](p)), 1).view(n, 4 * self.reg + self.nc, -1)
                 for i, p in enumerate((p1, p2))]
        box, cls = torch.cat(feats, 2).split((4 * self.reg, self.nc), 1)
        dist = self.dfl(box.view(n, 4, self.reg, -1).transpose(2, 1).softmax(1)).view(n, 4, -1)
        lt, rb = dist.chunk(2, 1)
        xy = (self.anchors + (rb - lt) / 2) * self.strides
        wh = (lt + rb) * self.strides
        return torch.cat((torch.cat((xy, wh), 1), cls.sigmoid()), 1)


class PReLUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1)
        self.act1 = nn.PReLU(16)                 # per-channel slope
        self.conv2 = nn.Conv2d(16, 32, 3, 2, 1)
        self.bn2 = nn.BatchNorm2d(32)
        self.act2 = nn.PReLU(32)                 # per-channel slope
        self.conv3 = nn.Conv2d(32, 32, 3, 2, 1)
        self.act3 = nn.PReLU()                   # single shared slope
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(32, 32)
        self.act4 = nn.PReLU(32)                 # per-feature slope on a [N, C] tensor
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.act1(self.conv1(x))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.conv3(x))
        x = torch.flatten(self.pool(x), 1)
        return self.fc2(self.act4(self.fc1(x)))


class UNet(nn.Module):
    """Encoder-decoder: maxpool + strided conv down, ConvTranspose and bilinear Upsample up, skip concats."""

    def __init__(self):
        super().__init__()
        self.enc1 = nn.Sequential(conv_bn_relu(3, 16), conv_bn_relu(16, 16))     # 32x32
        self.pool = nn.MaxPool2d(2)
        self.enc2 = conv_bn_relu(16, 32)                                          # 16x16
        self.down = conv_bn_relu(32, 32, 3, 2)                                    # 8x8
        self.mid = conv_bn_relu(32, 64)
        self.up1 = nn.ConvTranspose2d(64, 32, 2, 2)                               # 16x16
        self.dec1 = conv_bn_relu(64, 32)                                          # cat(up1, enc2)
        self.up2 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)  # 32x32
        self.dec2 = conv_bn_relu(48, 16)                                          # cat(up2, enc1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.down(e2))
        d1 = self.dec1(torch.cat([self.up1(m), e2], 1))
        d2 = self.dec2(torch.cat([self.up2(d1), e1], 1))
        return self.head(d2)


class FlattenGemm(nn.Module):
    """Conv features flattened with ``x.view(x.size(0), -1)`` straight into a Linear (no pooling)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(),     # 16x16
            nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),    # 8x8
        )
        self.fc1 = nn.Linear(16 * 8 * 8, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.fc2(F.relu(self.fc1(x)))


class Audio1D(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, 16, 9, 4, 4, bias=False), nn.BatchNorm1d(16), nn.ReLU(),   # 100
            nn.Conv1d(16, 32, 5, 2, 2, bias=False), nn.BatchNorm1d(32), nn.ReLU(),  # 50
            nn.Conv1d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm1d(32), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.net(x)), 1))


def channel_shuffle(x, groups):
    """ShuffleNet's channel shuffle: view [b, g, c/g, h, w], swap the two channel axes, view back."""
    b, c, h, w = x.shape
    x = x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(b, c, h, w)


class ShuffleV2Block(nn.Module):
    """ShuffleNet v2 unit: stride 1 splits the channels in two (chunk) and transforms one half;
    stride 2 transforms the whole input in two branches; both concat and shuffle (2 groups)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        half = cout // 2
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                conv_bn_relu(cin, half, k=1))
        self.branch2 = nn.Sequential(
            conv_bn_relu(cin if stride > 1 else half, half, k=1),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            conv_bn_relu(half, half, k=1))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat([x1, self.branch2(x2)], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(3, 24)
        self.stages = nn.Sequential(
            ShuffleV2Block(24, 48, 2), ShuffleV2Block(48, 48, 1), ShuffleV2Block(48, 48, 1),
            ShuffleV2Block(48, 96, 2), ShuffleV2Block(96, 96, 1))
        self.last = conv_bn_relu(96, 128, k=1)
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        x = self.last(self.stages(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


# --------------------------------------------------------------------------
# transformer encoders (family "transformer")
# --------------------------------------------------------------------------

class SelfAttention(nn.Module):
    """Multi-head self-attention written out explicitly (MatMul/Softmax in the graph, no
    F.scaled_dot_product_attention).

    qkv: "separate" = query/key/value Linear layers (BERT, HF-ViT);
         "chunk"    = one fused Linear(h, 3h) then ``chunk(3, dim=-1)``;
         "split"    = one fused Linear(h, 3h) then ``split(h, dim=-1)`` (GPT-2).
    merge: "reshape" = ``transpose(1, 2).reshape(b, s, h*d)``;
           "view"    = ``transpose(1, 2).contiguous().view(b, s, h*d)``.
    """

    def __init__(self, hidden=32, heads=4, qkv="separate", merge="reshape"):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.qkv_mode, self.merge = qkv, merge
        if qkv == "separate":
            self.query = nn.Linear(hidden, hidden)
            self.key = nn.Linear(hidden, hidden)
            self.value = nn.Linear(hidden, hidden)
        else:
            self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attn_drop = nn.Dropout(0.1)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x, mask=None):
        b, s, _ = x.shape
        if self.qkv_mode == "separate":
            q, k, v = self.query(x), self.key(x), self.value(x)
        elif self.qkv_mode == "chunk":
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            q, k, v = self.qkv(x).split(self.heads * self.head_dim, dim=-1)
        # [b, s, h*d] -> [b, h, s, d]
        q = q.view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(b, s, self.heads, self.head_dim).transpose(1, 2)
        v = v.view(b, s, self.heads, self.head_dim).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores + mask
        probs = self.attn_drop(scores.softmax(dim=-1))
        ctx = (probs @ v).transpose(1, 2)
        if self.merge == "view":
            ctx = ctx.contiguous().view(b, s, self.heads * self.head_dim)
        else:
            ctx = ctx.reshape(b, s, self.heads * self.head_dim)
        return self.out(ctx)


class EncoderLayer(nn.Module):
    """Attention + FFN (Linear-GELU-Linear) with residuals; post-LN (BERT) or pre-LN (ViT/GPT)."""

    def __init__(self, hidden=32, heads=4, ffn=64, pre_ln=False, qkv="separate", merge="reshape",
                 gelu="none", eps=1e-5):
        super().__init__()
        self.pre_ln = pre_ln
        self.attn = SelfAttention(hidden, heads, qkv, merge)
        self.ln1 = nn.LayerNorm(hidden, eps=eps)
        self.fc1 = nn.Linear(hidden, ffn)
        self.act = nn.GELU(approximate=gelu)
        self.fc2 = nn.Linear(ffn, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=eps)
        self.drop = nn.Dropout(0.1)

    def ffn(self, x):
        return self.drop(self.fc2(self.act(self.fc1(x))))

    def forward(self, x, mask=None):
        if self.pre_ln:
            x = x + self.drop(self.attn(self.ln1(x), mask))
            return x + self.ffn(self.ln2(x))
        x = self.ln1(x + self.drop(self.attn(x, mask)))
        return self.ln2(x + self.ffn(x))


class BertTiny(nn.Module):
    """BERT-style encoder: token + learned position embeddings, 2 layers, pooler(tanh) + classifier.

    fused=False: separate Q/K/V, exact (erf) GELU, post-LN, embedding LayerNorm (eps 1e-12),
                 positions from a registered ``position_ids`` buffer sliced ``[:, :s]`` (HF style).
    fused=True:  fused QKV + ``chunk(3, dim=-1)``, tanh GELU, pre-LN + final LayerNorm,
                 positions from ``torch.arange(s)``.
    Outputs: last hidden state [b, s, 32] and logits [b, 3] from the first token.
    """

    def __init__(self, fused=False, vocab=100, max_pos=32, hidden=32, heads=4, ffn=64, layers=2, classes=3):
        super().__init__()
        self.fused = fused
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(max_pos, hidden)
        self.register_buffer("position_ids", torch.arange(max_pos).unsqueeze(0), persistent=False)
        self.emb_norm = nn.Identity() if fused else nn.LayerNorm(hidden, eps=1e-12)
        self.emb_drop = nn.Dropout(0.1)
        self.layers = nn.ModuleList(
            EncoderLayer(hidden, heads, ffn, pre_ln=fused, qkv="chunk" if fused else "separate",
                         gelu="tanh" if fused else "none", eps=1e-5 if fused else 1e-12)
            for _ in range(layers)
        )
        self.final_norm = nn.LayerNorm(hidden) if fused else nn.Identity()
        self.pooler = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, input_ids, attention_mask):
        b, s = input_ids.shape
        if self.fused:
            pos = torch.arange(s, device=input_ids.device).unsqueeze(0)
        else:
            pos = self.position_ids[:, :s]
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos)
        x = self.emb_drop(self.emb_norm(x))
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0   # [b, 1, 1, s]
        for layer in self.layers:
            x = layer(x, mask)
        x = self.final_norm(x)
        logits = self.classifier(torch.tanh(self.pooler(x[:, 0])))
        return x, logits


class BertTinyFused(BertTiny):
    def __init__(self):
        super().__init__(fused=True)


class ViTTiny(nn.Module):
    """ViT: Conv2d(3, 32, 8, stride 8) patches (4x4=16) + class token + position embedding,
    2 pre-LN layers (exact GELU, eps 1e-6), final LayerNorm, class-token head Linear(32, 10)."""

    def __init__(self, hidden=32, heads=4, mlp=64, layers=2, classes=10):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, hidden, 8, stride=8)
        self.cls_token = nn.Parameter(0.5 * torch.randn(1, 1, hidden))
        self.pos_embed = nn.Parameter(0.5 * torch.randn(1, 1 + 16, hidden))
        self.layers = nn.ModuleList(
            EncoderLayer(hidden, heads, mlp, pre_ln=True, eps=1e-6) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden, eps=1e-6)
        self.head = nn.Linear(hidden, classes)

    def forward(self, pixels):
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)         # [b, 16, 32]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed                  # [b, 17, 32]
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x)[:, 0])


class GPTBlock(nn.Module):
    """One GPT-2-style pre-LN causal decoder block on float embeddings [b, s, 32]: fused QKV +
    ``split(32, dim=-1)``, merge via ``contiguous().view``, constant causal mask (triu of -1e4
    above the diagonal, a [32, 32] buffer sliced ``[:s, :s]``) added to the scores, tanh-GELU MLP 128."""

    def __init__(self, hidden=32, heads=4, mlp=128, max_pos=32):
        super().__init__()
        self.ln1 = nn.LayerNorm(hidden)
        self.attn = SelfAttention(hidden, heads, qkv="split", merge="view")
        self.ln2 = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, mlp)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(mlp, hidden)
        self.register_buffer("causal_mask", torch.triu(torch.full((max_pos, max_pos), -10000.0), diagonal=1),
                             persistent=False)

    def forward(self, inputs_embeds):
        s = inputs_embeds.shape[1]
        x = inputs_embeds
        x = x + self.attn(self.ln1(x), self.causal_mask[:s, :s])
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


# --------------------------------------------------------------------------
# zoo table
# --------------------------------------------------------------------------

@dataclass
class Entry:
    name: str
    builder: Callable[[], nn.Module]
    input_shape: tuple            # without the batch dim
    description: str
    dynamo: bool = False          # also export <name>_dynamo.onnx
    extra_legacy: list = field(default_factory=list)  # [(suffix, kwargs, note)]
    family: str | None = None     # manifest "family" (issue-17 additions; None: the classic CNN zoo)


IMG = (3, 32, 32)
ZOO = [
    Entry("mlp", MLP, (64,), "Linear-ReLU-Linear-ReLU-Linear on 64 features", dynamo=True),
    Entry("lenet5", LeNet5, (1, 28, 28),
          "LeNet-5: conv-pool-conv-pool, nn.Flatten (16x4x4=256 features) into Gemm-Gemm-Gemm", dynamo=True),
    Entry("vgg_bn", VGGBN, IMG,
          "VGG-style Conv-BN-ReLU stack with maxpools, torch.flatten into Linear-ReLU-Dropout-Linear",
          dynamo=True,
          extra_legacy=[("_folded", {"fold_bn": True},
                         "vgg_bn legacy-exported with the exporter's default training=EVAL, which folds "
                         "every Conv+BN pair into the Conv (no BatchNormalization nodes left)")]),
    Entry("resnet_basic", ResNetBasic, IMG,
          "ResNet: stem + 2 stages of 2 BasicBlocks, stage 2 with stride-2 conv+BN downsample shortcut, GAP, fc",
          dynamo=True,
          extra_legacy=[
              ("_opset9", {"opset_version": 9}, "resnet_basic legacy-exported at opset 9"),
              ("_opset11", {"opset_version": 11}, "resnet_basic legacy-exported at opset 11"),
              ("_b1", {"fixed_batch": True}, "resnet_basic legacy-exported with a fixed batch of 1 (no dynamic axes)"),
          ]),
    Entry("resnet_bottleneck", ResNetBottleneck, IMG,
          "ResNet with Bottleneck blocks (1x1-3x3-1x1), conv+BN downsample shortcuts (channel change, stride 2)"),
    Entry("mobilenetv2", MobileNetV2, IMG,
          "MobileNetV2: depthwise convs, inverted residuals with and without residual Add, ReLU6 (Clip)",
          dynamo=True),
    Entry("se_net", SENet, IMG,
          "Conv trunk with two SE residual blocks: SE via GAP+1x1 convs, and SE via mean+Linear+view(b,c,1,1); "
          "Sigmoid gate Mul back onto the trunk, residual Add", dynamo=True),
    Entry("inception", Inception, IMG,
          "Inception block: 4 parallel branches (1x1, 1x1-3x3, 1x1-3x3-3x3, maxpool-1x1) concat on channels "
          "(8+12+8+8), then 1x1 conv, GAP, fc"),
    Entry("densenet", DenseNet, IMG,
          "DenseNet: pre-activation dense layers (BN-ReLU-conv1x1-BN-ReLU-conv3x3) each concatenating its output "
          "onto its input; transition BN-ReLU-conv-avgpool; second dense block; BN-ReLU-GAP-fc"),
    Entry("c2f", C2fNet, IMG,
          "YOLOv8-style C2f blocks (conv-BN-SiLU): cv1 then chunk(2) (first C2f) / split((c,c)) (second C2f), "
          "residual bottlenecks on the last piece, concat of all pieces, cv2", dynamo=True),
    Entry("yolov8_det", V8Detect, IMG,
          "YOLOv8-style detector: C2f backbone at strides 2 and 4, ultralytics' Detect head (cv2 box bins, "
          "cv3 class logits per level, DFL softmax + fixed conv, anchors and strides), output "
          "cat((xywh, cls.sigmoid()), 1) = [batch, 9, 320]", dynamo=True),
    Entry("resnext", ResNeXt, IMG,
          "ResNeXt bottlenecks with grouped 3x3 conv (groups=4), identity and downsample residuals"),
    Entry("prelu_net", PReLUNet, IMG,
          "Convs with per-channel PReLU (16, 32), a single shared-slope PReLU, and a per-feature PReLU after a Linear",
          dynamo=True),
    Entry("unet", UNet, IMG,
          "Small U-Net: maxpool and stride-2 conv down, ConvTranspose2d up and nn.Upsample(bilinear, x2) (Resize) "
          "up, skip concats with encoder features; output [batch,4,32,32]", dynamo=True),
    Entry("flatten_gemm", FlattenGemm, IMG,
          "Two stride-2 convs, x.view(x.size(0), -1) (16x8x8=1024 features, no pooling) into Linear-ReLU-Linear"),
    Entry("audio1d", Audio1D, (1, 400),
          "Conv1d-BN-ReLU x3 on 1x400 audio, AdaptiveAvgPool1d, flatten, Linear", dynamo=True),    Entry("shufflenet_v2", ShuffleNetV2, IMG,
          "ShuffleNet v2 (torchvision layout): stem conv 3->24, units 24->48 (stride 2), 48, 48, 48->96 "
          "(stride 2), 96; stride-1 units chunk(2) the channels and transform one half, stride-2 units run "
          "a depthwise+1x1 branch beside the 1x1-dw-1x1 branch; each unit concats and channel-shuffles "
          "(view [b,2,c/2,h,w], transpose(1,2), view back; b from x.shape, a run-time Reshape target); "
          "1x1 conv 96->128, spatial mean, Linear", dynamo=True, family="shuffle"),
]
ZOO_BY_NAME = {e.name: e for e in ZOO}


# Transformer entries: several named inputs/outputs, dynamic batch (and seq for text/embeds).
@dataclass
class TEntry:
    name: str
    builder: Callable[[], nn.Module]
    kind: str                     # key of TF_IO
    description: str
    opset: int = 14               # legacy export opset
    extra_opsets: list = field(default_factory=list)   # [(suffix, opset, note)] more legacy exports
    dynamo: bool = True           # also export <name>_dynamo.onnx


TF_IO = {   # kind -> (input names, output names)
    "text": (["input_ids", "attention_mask"], ["last_hidden_state", "logits"]),
    "image": (["pixels"], ["logits"]),
    "embeds": (["inputs_embeds"], ["last_hidden_state"]),
}
TF_AXES = {  # tensor name -> {axis: dim name}
    "input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
    "inputs_embeds": {0: "batch", 1: "seq"}, "pixels": {0: "batch"},
    "last_hidden_state": {0: "batch", 1: "seq"}, "logits": {0: "batch"},
}
TF_CHECK_SHAPES = {  # kind -> (batch, seq) pairs every export is verified at
    "text": [(1, 8), (3, 13), (2, 32), (2, 2)],
    "embeds": [(1, 8), (3, 13), (2, 32), (2, 2)],
    "image": [(1, None), (3, None)],
}
TZOO = [
    TEntry("bert_tiny", BertTiny, "text",
           "BERT-style encoder (vocab 100, max pos 32, hidden 32, 4 heads x 8, FFN 64, 2 layers): token + "
           "learned position embeddings (position_ids buffer sliced [:, :s]), embedding LayerNorm, post-LN "
           "layers with separate Q/K/V Linear, explicit q@k^T/sqrt(8) + additive mask (1-mask)*-10000 from the "
           "2-D attention_mask, softmax, @v, heads via view/transpose and back via transpose/reshape, exact "
           "(erf) GELU; outputs last_hidden_state [b,s,32] and logits [b,3] (tanh pooler on token 0 + Linear)",
           extra_opsets=[("_opset17", 17, "bert_tiny legacy-exported at opset 17 (LayerNormalization op)")]),
    TEntry("bert_tiny_fused", BertTinyFused, "text",
           "bert_tiny with a fused QKV Linear(32, 96) + chunk(3, dim=-1), tanh-approximate GELU, pre-LN layers "
           "+ final LayerNorm (no embedding LayerNorm), positions from torch.arange(s)"),
    TEntry("vit_tiny", ViTTiny, "image",
           "ViT: Conv2d(3,32,8,stride 8) patch embedding (16 patches), flatten(2).transpose(1,2), learned class "
           "token expanded to the batch and concatenated in front, + position embedding [1,17,32], 2 pre-LN "
           "layers (separate Q/K/V, 4 heads x 8, MLP 64, exact GELU, no mask), LayerNorm, Linear(32,10) on "
           "the class token"),
    TEntry("gpt_block", GPTBlock, "embeds",
           "One GPT-2-style pre-LN causal decoder block on float embeddings [b,s,32]: fused QKV Linear(32,96) + "
           "split(32, dim=-1), 4 heads x 8, constant causal mask (triu of -10000 above the diagonal, [32,32] "
           "buffer sliced [:s,:s]) added to the scores, merge via contiguous().view, tanh-GELU MLP 128"),
]
TZOO_BY_NAME = {e.name: e for e in TZOO}


def seed_of(name: str) -> int:
    return sum((i + 1) * ord(ch) for i, ch in enumerate(name)) % 10007


def build_model(entry: Entry) -> nn.Module:
    torch.manual_seed(seed_of(entry.name))
    model = entry.builder()
    randomize_norms(model, seed_of(entry.name))
    return model.eval()


# --------------------------------------------------------------------------
# exporters
# --------------------------------------------------------------------------

def export_legacy(model, x, path, opset_version=13, fixed_batch=False, fold_bn=False):
    """Legacy TorchScript exporter.  By default BatchNormalization nodes are kept
    (training=PRESERVE on an eval model); fold_bn=True is the exporter's own
    default (training=EVAL), which folds Conv+BN into the Conv weights."""
    kwargs = dict(
        dynamo=False, opset_version=opset_version,
        input_names=["input"], output_names=["output"], do_constant_folding=True,
    )
    if not fixed_batch:
        kwargs["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
    kwargs["training"] = torch.onnx.TrainingMode.EVAL if fold_bn else torch.onnx.TrainingMode.PRESERVE
    with torch.no_grad():
        torch.onnx.export(model, (x,), str(path), **kwargs)


def export_dynamo(model, x, path):
    batch = torch.export.Dim("batch", min=1, max=1024)
    log = io.StringIO()
    with torch.no_grad(), contextlib.redirect_stdout(log):  # the exporter prints progress lines
        torch.onnx.export(
            model, (x,), str(path), dynamo=True, external_data=False,
            input_names=["input"], output_names=["output"],
            dynamic_shapes=({0: batch},), verbose=False,
        )
    m = onnx.load(str(path))
    # The exporter stores a Python stack trace (absolute path + line numbers of this
    # script) in every node's metadata; drop just that key so the files do not change
    # with the checkout path or edits of this script.  Other metadata_props are kept.
    for node in m.graph.node:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    # Name the symbolic dims "batch" on every input and output (the exporter may call it "s0"/"batch").
    for vi in list(m.graph.input) + list(m.graph.output):
        d0 = vi.type.tensor_type.shape.dim[0]
        if d0.HasField("dim_param") and d0.dim_param != "batch":
            d0.dim_param = "batch"
    onnx.save(m, str(path))


# ---- transformer exports / checks ----

def randomize_layernorms(model: nn.Module, seed: int) -> nn.Module:
    """Give every LayerNorm random (non-trivial) affine params."""
    g = torch.Generator().manual_seed(seed + 2000)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return model


def build_transformer(entry: TEntry) -> nn.Module:
    torch.manual_seed(seed_of(entry.name))
    model = entry.builder()
    randomize_layernorms(model, seed_of(entry.name))
    return model.eval()


def tf_inputs(kind, batch, seq, seed=0):
    """Random numpy inputs for a transformer entry (text: ids in [0,100), mask 1 on a random
    prefix of at least half the sequence, padded ids set to 0)."""
    rng = np.random.default_rng(seed)
    if kind == "image":
        return {"pixels": rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)}
    if kind == "embeds":
        return {"inputs_embeds": rng.standard_normal((batch, seq, 32)).astype(np.float32)}
    ids = rng.integers(1, 100, (batch, seq)).astype(np.int64)
    mask = np.ones((batch, seq), np.int64)
    for i, n in enumerate(rng.integers(max(1, seq // 2), seq + 1, batch)):
        mask[i, n:] = 0
        ids[i, n:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def tf_torch_run(model, kind, inputs):
    names = TF_IO[kind][0]
    with torch.no_grad():
        out = model(*(torch.from_numpy(inputs[n]) for n in names))
    out = out if isinstance(out, tuple) else (out,)
    return [o.numpy() for o in out]


def export_legacy_tf(model, kind, path, opset):
    ins, outs = TF_IO[kind]
    x = tf_inputs(kind, 2, 8, seed=1)
    with torch.no_grad():
        torch.onnx.export(
            model, tuple(torch.from_numpy(x[n]) for n in ins), str(path), dynamo=False,
            opset_version=opset, input_names=ins, output_names=outs, do_constant_folding=True,
            dynamic_axes={n: dict(TF_AXES[n]) for n in ins + outs},
        )


def export_dynamo_tf(model, kind, path):
    ins, outs = TF_IO[kind]
    x = tf_inputs(kind, 2, 8, seed=1)
    dims = {"batch": torch.export.Dim("batch", min=1, max=1024), "seq": torch.export.Dim("seq", min=2, max=32)}
    dynamic_shapes = {n: {ax: dims[d] for ax, d in TF_AXES[n].items()} for n in ins}
    log = io.StringIO()
    with torch.no_grad(), contextlib.redirect_stdout(log):
        torch.onnx.export(
            model, tuple(torch.from_numpy(x[n]) for n in ins), str(path), dynamo=True, external_data=False,
            input_names=ins, output_names=outs, dynamic_shapes=dynamic_shapes, verbose=False,
        )
    m = onnx.load(str(path))
    for node in m.graph.node:   # as export_dynamo: drop only the stack-trace metadata
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    for vi in list(m.graph.input) + list(m.graph.output):   # dim names "batch"/"seq" on the graph I/O
        for ax, dname in TF_AXES[vi.name].items():
            d = vi.type.tensor_type.shape.dim[ax]
            if d.HasField("dim_param") and d.dim_param != dname:
                d.dim_param = dname
    onnx.save(m, str(path))


def verify_tf(path, model, kind):
    """full_check + onnxruntime vs PyTorch at every (batch, seq) of TF_CHECK_SHAPES[kind], all outputs.
    Returns the max abs diff."""
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch, seq in TF_CHECK_SHAPES[kind]:
        x = tf_inputs(kind, batch, seq)
        got = sess.run(None, {i.name: x[i.name] for i in sess.get_inputs()})
        want = tf_torch_run(model, kind, x)
        if len(got) != len(want):
            raise AssertionError(f"{path.name}: {len(got)} outputs != {len(want)}")
        for g, w in zip(got, want):
            if g.shape != w.shape:
                raise AssertionError(f"{path.name}: shape {g.shape} != {w.shape} at batch {batch} seq {seq}")
            worst = max(worst, float(np.max(np.abs(g - w))))
    return worst


# ---- Hugging Face transformers models (issue 17): built from local configs, random weights ----

HF_DIMS = dict(vocab=100, hidden=32, heads=4, layers=2, ffn=64, max_pos=64)
HF_PAST = 5          # past length the past-key/value exports are traced and checked with


def _text_config(cls, **extra):
    d = HF_DIMS
    kw = dict(vocab_size=d["vocab"], hidden_size=d["hidden"], num_hidden_layers=d["layers"],
              num_attention_heads=d["heads"], intermediate_size=d["ffn"],
              max_position_embeddings=d["max_pos"], attn_implementation="eager")
    return cls(**(kw | extra))


def hf_bert():
    from transformers import BertConfig, BertModel
    return BertModel(_text_config(BertConfig))


def hf_roberta():
    from transformers import RobertaConfig, RobertaModel
    # RoBERTa counts positions from padding_idx + 1 over the non-pad ids (cumsum of ids != 1)
    return RobertaModel(_text_config(RobertaConfig, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                     max_position_embeddings=HF_DIMS["max_pos"] + 2))


def hf_distilbert():
    from transformers import DistilBertConfig, DistilBertModel
    d = HF_DIMS
    return DistilBertModel(DistilBertConfig(
        vocab_size=d["vocab"], dim=d["hidden"], n_layers=d["layers"], n_heads=d["heads"],
        hidden_dim=d["ffn"], max_position_embeddings=d["max_pos"], attn_implementation="eager"))


def hf_vit():
    from transformers import ViTConfig, ViTModel
    d = HF_DIMS
    return ViTModel(ViTConfig(hidden_size=d["hidden"], num_hidden_layers=d["layers"],
                              num_attention_heads=d["heads"], intermediate_size=d["ffn"], image_size=32,
                              patch_size=8, num_channels=3, attn_implementation="eager"))


def hf_gpt2():
    from transformers import GPT2Config, GPT2Model
    d = HF_DIMS
    return GPT2Model(GPT2Config(vocab_size=d["vocab"], n_embd=d["hidden"], n_layer=d["layers"],
                                n_head=d["heads"], n_inner=d["ffn"], n_positions=d["max_pos"],
                                bos_token_id=0, eos_token_id=0, attn_implementation="eager"))


class HFWrap(nn.Module):
    """Positional inputs -> a tuple of output tensors, so both exporters see plain tensors.
    kind "past": past_key_values come in as 2 tensors per layer and leave as presents."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, *args):
        if self.kind == "image":
            out = self.model(pixel_values=args[0], return_dict=True)
        elif self.kind == "past":
            from transformers import DynamicCache
            cache = DynamicCache(config=self.model.config)
            for i in range(HF_DIMS["layers"]):
                cache.update(args[2 + 2 * i], args[3 + 2 * i], i)
            out = self.model(input_ids=args[0], attention_mask=args[1], past_key_values=cache,
                             use_cache=True, return_dict=True)
            presents = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
            return (out.last_hidden_state, *presents)
        else:
            out = self.model(input_ids=args[0], attention_mask=args[1], return_dict=True)
        pooled = getattr(out, "pooler_output", None)
        return (out.last_hidden_state,) if pooled is None else (out.last_hidden_state, pooled)


def hf_io(kind: str, pooled: bool) -> tuple[list[str], list[str]]:
    """Input and output names (the names Hugging Face's own ONNX exports use)."""
    ins = ["pixel_values"] if kind == "image" else ["input_ids", "attention_mask"]
    outs = ["last_hidden_state"] + (["pooler_output"] if pooled else [])
    if kind == "past":
        kv = [f"{i}.{t}" for i in range(HF_DIMS["layers"]) for t in ("key", "value")]
        ins += [f"past_key_values.{k}" for k in kv]
        outs += [f"present.{k}" for k in kv]
    return ins, outs


def hf_axes(name: str, kind: str) -> dict[int, str]:
    """Dynamic axes: batch, seq; with past: past (cache inputs) and total = past + seq."""
    if name in ("pixel_values", "pooler_output"):
        return {0: "batch"}
    if name == "attention_mask" and kind == "past":
        return {0: "batch", 1: "total"}
    if name.startswith("past_key_values"):
        return {0: "batch", 2: "past"}
    if name.startswith("present"):
        return {0: "batch", 2: "total"}
    return {0: "batch", 1: "seq"}


def hf_inputs(kind: str, batch: int, seq: int, past: int = HF_PAST, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs: ids in [1, 100) (RoBERTa's pad id 1 included), attention_mask 1 on a random
    prefix of at least half the tokens; "past": random past keys/values, mask over past + seq."""
    rng = np.random.default_rng(seed)
    if kind == "image":
        return {"pixel_values": rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)}
    feeds = tf_inputs("text", batch, seq, seed)
    if kind == "past":
        hd = HF_DIMS["hidden"] // HF_DIMS["heads"]
        feeds["attention_mask"] = np.concatenate([np.ones((batch, past), np.int64), feeds["attention_mask"]], 1)
        for name in hf_io(kind, False)[0][2:]:
            feeds[name] = rng.standard_normal((batch, HF_DIMS["heads"], past, hd)).astype(np.float32)
    return feeds


@dataclass
class HFEntry:
    name: str
    builder: Callable[[], nn.Module]
    kind: str                     # "text", "image" or "past"
    description: str
    opsets: list = field(default_factory=lambda: [14])   # legacy exports: first is <name>, others <name>_opsetN
    dynamo: bool = True           # also <name>_dynamo.onnx (opset 18)


HF_NOTE = ("Hugging Face transformers {ver} {cls} from a local config (vocab 100, hidden 32, 4 heads x 8, FFN 64, "
           "2 layers), random weights, eager attention")
HFZOO = [
    HFEntry("hf_bert", hf_bert, "text",
            "BertModel: additive mask from the 2-D attention_mask (Unsqueeze/Cast/Sub/Mul or Where with the "
            "dtype's min), token_type_ids from a buffer, post-LN, erf GELU, tanh pooler", [14, 17]),
    HFEntry("hf_distilbert", hf_distilbert, "text",
            "DistilBertModel: mask applied by Where(mask == 0, finfo.min, scores) broadcast over heads, "
            "no token types, no pooler", [15]),
    HFEntry("hf_roberta", hf_roberta, "text",
            "RobertaModel: positions from cumsum(ids != pad) + pad (CumSum on the ids), additive mask, "
            "post-LN, tanh pooler", [16]),
    HFEntry("hf_vit", hf_vit, "image",
            "ViTModel (32x32 image, 8x8 patches, 16 + class token), pre-LN, no mask, tanh pooler", [17]),
    HFEntry("hf_gpt2", hf_gpt2, "text",
            "GPT2Model: causal mask (Trilu/Where with the dtype's min) combined with the padding mask, "
            "Conv1D projections (Gemm/MatMul), fused QKV split, tanh GELU, final LayerNorm", [14, 18]),
    HFEntry("hf_gpt2_past", hf_gpt2, "past",
            "GPT2Model with use_cache: past key/value inputs [batch, 4, past, 8] per layer concatenated to "
            "the new keys/values (the presents are outputs), attention_mask over past + seq", [14]),
]
HFZOO_BY_NAME = {e.name: e for e in HFZOO}


def build_hf(entry: HFEntry) -> HFWrap:
    torch.manual_seed(seed_of(entry.name))
    model = entry.builder()
    randomize_layernorms(model, seed_of(entry.name))
    return HFWrap(model, entry.kind).eval()


def export_hf(model: HFWrap, entry: HFEntry, path: Path, opset: int, dynamo: bool) -> None:
    args = hf_torch_args(entry.kind, 2, 8)
    with torch.no_grad():
        pooled = len(model(*args)) - (2 * HF_DIMS["layers"] if entry.kind == "past" else 0) > 1
    ins, outs = hf_io(entry.kind, pooled)
    if not dynamo:
        with torch.no_grad():
            torch.onnx.export(model, args, str(path), dynamo=False, opset_version=opset, input_names=ins,
                              output_names=outs, do_constant_folding=True,
                              dynamic_axes={n: hf_axes(n, entry.kind) for n in ins + outs})
        return
    auto = torch.export.Dim.AUTO
    shapes = tuple({ax: auto for ax in hf_axes(n, entry.kind)} for n in ins)   # forward(*args): one tuple
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(model, args, str(path), dynamo=True, external_data=False, opset_version=opset,
                          input_names=ins, output_names=outs, dynamic_shapes=(shapes,), verbose=False)
    m = onnx.load(str(path))
    for node in m.graph.node:   # as export_dynamo: drop only the stack-trace metadata
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    for vi in list(m.graph.input) + list(m.graph.output):   # the legacy exports' dim names
        for ax, dname in hf_axes(vi.name, entry.kind).items():
            d = vi.type.tensor_type.shape.dim[ax]
            if d.HasField("dim_param"):
                d.dim_param = dname
    onnx.save(m, str(path))


def hf_torch_args(kind: str, batch: int, seq: int) -> tuple:
    feeds = hf_inputs(kind, batch, seq, seed=1)
    return tuple(torch.from_numpy(v) for v in feeds.values())


def verify_hf(path: Path, model: HFWrap, kind: str) -> float:
    """full_check + onnxruntime vs PyTorch at two batch sizes x two sequence lengths (and past lengths)."""
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch, seq, past in [(1, 5, 3), (3, 13, 7), (2, 32, 1)]:
        x = hf_inputs(kind, batch, seq if kind != "image" else 0, past)
        got = sess.run(None, x)
        with torch.no_grad():
            want = [t.numpy() for t in model(*(torch.from_numpy(v) for v in x.values()))]
        for g, w in zip(got, want, strict=True):
            if g.shape != w.shape:
                raise AssertionError(f"{path.name}: shape {g.shape} != {w.shape} at {batch}x{seq}")
            worst = max(worst, float(np.max(np.abs(g - w))))
    return worst


def build_hf_zoo(only, manifest: list, failures: list) -> list:
    """Export every HFZOO entry (legacy at each of its opsets, dynamo at 18); returns the checks."""
    import transformers
    checks = []
    for entry in HFZOO:
        if only and entry.name not in only:
            continue
        t0 = time.time()
        model = build_hf(entry)
        note = HF_NOTE.format(ver=transformers.__version__, cls=type(model.model).__name__)
        runs = [(entry.name if i == 0 else f"{entry.name}_opset{o}", o, False) for i, o in enumerate(entry.opsets)]
        runs += [(f"{entry.name}_dynamo", 18, True)] if entry.dynamo else []
        for name, opset, dynamo in runs:
            p = ZOO_DIR / f"{name}.onnx"
            try:
                export_hf(model, entry, p, opset, dynamo)
            except Exception as e:  # noqa: BLE001 - report and move on
                failures.append(f"{'dynamo' if dynamo else 'legacy'} export of {name} failed: "
                                f"{type(e).__name__}: {str(e)[:300]}")
                print("WARNING:", failures[-1])
                p.unlink(missing_ok=True)
                continue
            desc = f"{note}. {entry.description}" + (" (dynamo exporter)" if dynamo else "")
            manifest.append({**manifest_entry(name, p, "dynamo" if dynamo else "legacy", desc),
                             "family": "hf", "calib": hf_calib(entry.kind)})
            checks.append((p, model, entry.kind))
        print(f"exported {entry.name:20s} {time.time() - t0:5.1f}s", flush=True)
    return checks


def hf_calib(kind: str) -> dict:
    """The manifest's recipe for calibration inputs (what hf_inputs makes)."""
    if kind == "image":
        return {"pixel_values": "standard normal"}
    recipe = {"input_ids": "int64 in [1, 100)", "attention_mask": "1 on a random prefix of >= half the tokens, then 0"}
    if kind == "past":
        recipe |= {"past_key_values.*": "standard normal [batch, 4, past, 8]",
                   "attention_mask": "1 over the past, then as for text", "dims": "total = past + seq"}
    return recipe


# --------------------------------------------------------------------------
# handmade models
# --------------------------------------------------------------------------

def build_nhwc(path):
    """tf2onnx-style NHWC graph, returns a numpy reference function."""
    rng = np.random.default_rng(1234)
    c1, c2, ncls = 16, 16, 10
    w1 = (rng.standard_normal((c1, 3, 3, 3)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(c1) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((c2, c1, 3, 3)) * 0.15).astype(np.float32)
    b2 = (rng.standard_normal(c2) * 0.1).astype(np.float32)
    wf = (rng.standard_normal((c2, ncls)) * 0.3).astype(np.float32)
    bf = (rng.standard_normal(ncls) * 0.1).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (w1, "conv1/kernel"), (b1, "conv1/bias"), (w2, "conv2/kernel"), (b2, "conv2/bias"),
        (wf, "dense/kernel"), (bf, "dense/bias")]]
    N = helper.make_node
    nodes = [
        N("Transpose", ["input"], ["t1"], perm=[0, 3, 1, 2], name="conv1/Transpose_in"),
        N("Conv", ["t1", "conv1/kernel"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
          strides=[1, 1], name="conv1/Conv2D"),
        N("Transpose", ["c1"], ["c1_nhwc"], perm=[0, 2, 3, 1], name="conv1/Transpose_out"),
        N("Add", ["c1_nhwc", "conv1/bias"], ["a1"], name="conv1/BiasAdd"),
        N("Relu", ["a1"], ["r1"], name="conv1/Relu"),
        N("Transpose", ["r1"], ["t2"], perm=[0, 3, 1, 2], name="conv2/Transpose_in"),
        N("Conv", ["t2", "conv2/kernel"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
          strides=[2, 2], name="conv2/Conv2D"),
        N("Transpose", ["c2"], ["c2_nhwc"], perm=[0, 2, 3, 1], name="conv2/Transpose_out"),
        N("Add", ["c2_nhwc", "conv2/bias"], ["a2"], name="conv2/BiasAdd"),
        N("Relu", ["a2"], ["r2"], name="conv2/Relu"),
        N("ReduceMean", ["r2"], ["gap"], axes=[1, 2], keepdims=0, name="global_average_pooling2d/Mean"),
        N("MatMul", ["gap", "dense/kernel"], ["mm"], name="dense/MatMul"),
        N("Add", ["mm", "dense/bias"], ["output"], name="dense/BiasAdd"),
    ]
    graph = helper.make_graph(
        nodes, "keras_nhwc",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16, 16, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", ncls])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="tf2onnx-style (handmade)", ir_version=8)
    onnx.save(model, str(path))

    def reference(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).permute(0, 3, 1, 2)
        y = F.relu(F.conv2d(t, torch.from_numpy(w1), padding=1).permute(0, 2, 3, 1) + torch.from_numpy(b1))
        y = F.conv2d(y.permute(0, 3, 1, 2), torch.from_numpy(w2), padding=1, stride=2)
        y = F.relu(y.permute(0, 2, 3, 1) + torch.from_numpy(b2))
        return (y.mean(dim=(1, 2)) @ torch.from_numpy(wf) + torch.from_numpy(bf)).numpy()

    return reference


def build_paddle_style(src_path, path):
    """Rewrite an export so every initializer becomes a Constant node; some go through Identity."""
    m = onnx.load(str(src_path))
    g = m.graph
    const_nodes, renames = [], {}
    for i, init in enumerate(g.initializer):
        out = init.name
        if i % 3 == 0:  # every third weight goes Constant -> Identity -> consumer
            out = init.name + "_const"
            renames[init.name] = out
        t = onnx.TensorProto()
        t.CopyFrom(init)
        t.name = ""
        const_nodes.append(helper.make_node("Constant", [], [out], value=t, name=f"const_{i}"))
    identity_nodes = [
        helper.make_node("Identity", [src], [dst], name=f"identity_{k}")
        for k, (dst, src) in enumerate(renames.items())
    ]
    old_nodes = list(g.node)
    del g.initializer[:]
    del g.node[:]
    g.node.extend(const_nodes + identity_nodes + old_nodes)
    m.producer_name = "paddle2onnx-style (rewritten from vgg_bn.onnx)"
    onnx.save(m, str(path))


# ---- handmade graphs for issue 17: tf2onnx/jax2tf idioms, a Paddle SVTR neck ----

def _const(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(array)),
                            name=f"{name}/Const")


def _layernorm_mean_pow(x: str, p: str, gamma: str, beta: str, eps: float, expand: bool = True) -> list:
    """LayerNorm written out as tf2onnx and paddle2onnx do below opset 17: ReduceMean/Sub/Pow/
    ReduceMean/Add/Sqrt/Div/Mul/Add over the last axis; `expand`: gamma goes through Expand to the
    input's run-time shape first (jax's broadcast_in_dim)."""
    N = helper.make_node
    scale, broadcast = gamma, []
    if expand:
        scale = f"{p}/gamma_b"
        broadcast = [N("Shape", [f"{p}/normed"], [f"{p}/shape"], name=f"{p}/shape"),
                     N("Expand", [gamma, f"{p}/shape"], [scale], name=f"{p}/broadcast_in_dim")]
    return [
        N("ReduceMean", [x], [f"{p}/mean"], axes=[-1], keepdims=1, name=f"{p}/mean"),
        N("Sub", [x, f"{p}/mean"], [f"{p}/centered"], name=f"{p}/sub"),
        N("Pow", [f"{p}/centered", "two"], [f"{p}/sq"], name=f"{p}/pow"),
        N("ReduceMean", [f"{p}/sq"], [f"{p}/var"], axes=[-1], keepdims=1, name=f"{p}/var"),
        N("Add", [f"{p}/var", "eps"], [f"{p}/var_eps"], name=f"{p}/add_eps"),
        N("Sqrt", [f"{p}/var_eps"], [f"{p}/std"], name=f"{p}/sqrt"),
        N("Div", [f"{p}/centered", f"{p}/std"], [f"{p}/normed"], name=f"{p}/div"),
        *broadcast,
        N("Mul", [f"{p}/normed", scale], [f"{p}/scaled"], name=f"{p}/mul"),
        N("Add", [f"{p}/scaled", beta], [f"{p}/out"], name=f"{p}/add"),
    ]


def _layernorm_sum(x: str, p: str, gamma: str, beta: str, width: int) -> list:
    """jax2tf's LayerNorm: ReduceSum x (1/width) for mean and variance, x*x, Rsqrt as
    Sqrt + Reciprocal."""
    N = helper.make_node
    return [
        N("ReduceSum", [x, "last_axis"], [f"{p}/sum"], keepdims=1, name=f"{p}/sum"),
        N("Mul", [f"{p}/sum", "inv_width"], [f"{p}/mean"], name=f"{p}/mean"),
        N("Sub", [x, f"{p}/mean"], [f"{p}/centered"], name=f"{p}/sub"),
        N("Mul", [f"{p}/centered", f"{p}/centered"], [f"{p}/sq"], name=f"{p}/square"),
        N("ReduceSum", [f"{p}/sq", "last_axis"], [f"{p}/sqsum"], keepdims=1, name=f"{p}/sqsum"),
        N("Mul", [f"{p}/sqsum", "inv_width"], [f"{p}/var"], name=f"{p}/var"),
        N("Add", [f"{p}/var", "eps"], [f"{p}/var_eps"], name=f"{p}/add_eps"),
        N("Sqrt", [f"{p}/var_eps"], [f"{p}/std"], name=f"{p}/sqrt"),
        N("Reciprocal", [f"{p}/std"], [f"{p}/rsqrt"], name=f"{p}/rsqrt"),
        N("Mul", [f"{p}/centered", f"{p}/rsqrt"], [f"{p}/normed"], name=f"{p}/normalize"),
        N("Mul", [f"{p}/normed", gamma], [f"{p}/scaled"], name=f"{p}/mul"),
        N("Add", [f"{p}/scaled", beta], [f"{p}/out"], name=f"{p}/add"),
    ]


def _torch_layernorm(x: torch.Tensor, gamma: np.ndarray, beta: np.ndarray, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], torch.from_numpy(gamma), torch.from_numpy(beta), eps)


def build_tf_bytes(path: Path):
    """jax2tf -> tf2onnx-style byte classifier (opset 15): bytes [batch, 64] int32 -> Gather
    embedding [256, 16] -> Conv1D as tf2onnx writes it (Unsqueeze, NHWC->NCHW Transpose, Conv2D 1x3,
    Transpose back, Squeeze) -> bias as Expand of a [1, 1, 32] constant to [1, 64, 32] + Add -> Relu ->
    LayerNorm (ReduceMean/Pow, gamma via Expand to a run-time shape) -> FFN with Einsum 'bld,df->blf'
    (32 -> 64 -> 32, Relu) + residual -> LayerNorm (ReduceSum/Mul/Reciprocal) -> mean over the
    bytes -> Einsum 'bd,dk->bk' (32 -> 5) + bias. Returns a reference on numpy inputs."""
    rng = np.random.default_rng(1717)
    L, E, C, H, K = 64, 16, 32, 64, 5

    def w(*shape, scale=None):
        return (rng.standard_normal(shape) * (scale or 1 / np.sqrt(np.prod(shape[:-1])))).astype(np.float32)

    emb, conv_w, conv_b = w(256, E, scale=1.0), w(C, E, 1, 3, scale=0.25), w(1, 1, C, scale=0.1)
    g1, b1, g2, b2 = (0.5 + rng.random(C)).astype(np.float32), w(C, scale=0.1), \
        (0.5 + rng.random(C)).astype(np.float32), w(C, scale=0.1)
    f1, fb1, f2, fb2, head, hb = w(C, H), w(H, scale=0.1), w(H, C), w(C, scale=0.1), w(C, K), w(K, scale=0.1)
    params = {"embedding": emb, "conv/kernel": conv_w, "conv/bias": conv_b, "ln1/gamma": g1, "ln1/beta": b1,
              "ln2/gamma": g2, "ln2/beta": b2, "ffn/w1": f1, "ffn/b1": fb1, "ffn/w2": f2, "ffn/b2": fb2,
              "head/kernel": head, "head/bias": hb,
              "two": np.float32(2.0), "eps": np.float32(1e-6), "inv_width": np.float32(1.0 / C),
              "last_axis": np.array([-1], np.int64), "axis1": np.array([1], np.int64),
              "bias_shape": np.array([1, L, C], np.int64)}
    N = helper.make_node
    nodes = [
        N("Gather", ["embedding", "bytes"], ["emb"], axis=0, name="embed/take"),
        N("Unsqueeze", ["emb", "axis1"], ["emb4"], name="conv/ExpandDims"),
        N("Transpose", ["emb4"], ["nchw"], perm=[0, 3, 1, 2], name="conv/Transpose_in"),
        N("Conv", ["nchw", "conv/kernel"], ["conv"], kernel_shape=[1, 3], pads=[0, 1, 0, 1], name="conv/Conv2D"),
        N("Transpose", ["conv"], ["nhwc"], perm=[0, 2, 3, 1], name="conv/Transpose_out"),
        N("Squeeze", ["nhwc", "axis1"], ["conv_out"], name="conv/Squeeze"),
        N("Expand", ["conv/bias", "bias_shape"], ["bias_b"], name="conv/BroadcastTo"),
        N("Add", ["conv_out", "bias_b"], ["biased"], name="conv/BiasAdd"),
        N("Relu", ["biased"], ["act"], name="conv/Relu"),
        *_layernorm_mean_pow("act", "ln1", "ln1/gamma", "ln1/beta", 1e-6),
        N("Einsum", ["ln1/out", "ffn/w1"], ["h1"], equation="bld,df->blf", name="ffn/dense1/einsum"),
        N("Add", ["h1", "ffn/b1"], ["h1b"], name="ffn/dense1/add"),
        N("Relu", ["h1b"], ["h1r"], name="ffn/relu"),
        N("Einsum", ["h1r", "ffn/w2"], ["h2"], equation="blf,fd->bld", name="ffn/dense2/einsum"),
        N("Add", ["h2", "ffn/b2"], ["h2b"], name="ffn/dense2/add"),
        N("Add", ["ln1/out", "h2b"], ["res"], name="residual/add"),
        *_layernorm_sum("res", "ln2", "ln2/gamma", "ln2/beta", C),
        N("ReduceMean", ["ln2/out"], ["pooled"], axes=[1], keepdims=0, name="pool/mean"),
        N("Einsum", ["pooled", "head/kernel"], ["logits0"], equation="bd,dk->bk", name="head/einsum"),
        N("Add", ["logits0", "head/bias"], ["logits"], name="head/add"),
    ]
    graph = helper.make_graph(
        nodes, "jax2tf_byte_classifier",
        [helper.make_tensor_value_info("bytes", TensorProto.INT32, ["batch", L])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", K])],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in params.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)],
                                producer_name="tf2onnx-style, from jax2tf (handmade)", ir_version=8), str(path))

    def reference(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(emb)[torch.from_numpy(x.astype(np.int64))]                 # [b, L, E]
        t = F.conv2d(t.unsqueeze(1).permute(0, 3, 1, 2), torch.from_numpy(conv_w), padding=(0, 1))
        t = F.relu(t.permute(0, 2, 3, 1).squeeze(1) + torch.from_numpy(conv_b))
        t = _torch_layernorm(t, g1, b1, 1e-6)
        h = F.relu(t @ torch.from_numpy(f1) + torch.from_numpy(fb1)) @ torch.from_numpy(f2) + torch.from_numpy(fb2)
        t = _torch_layernorm(t + h, g2, b2, 1e-6)
        return (t.mean(1) @ torch.from_numpy(head) + torch.from_numpy(hb)).numpy()

    return reference


def _conv_bn_swish(x: str, p: str, params: dict, rng, cin: int, cout: int, k: int, fused: bool = False) -> list:
    """Paddle ConvBNLayer: Conv (no bias) + BatchNormalization + swish (Sigmoid, Mul); `fused`: the
    swish as ORT's offline optimizer leaves it, com.microsoft QuickGelu(alpha=1)."""
    params[f"{p}/w"] = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
    params[f"{p}/scale"] = (0.5 + rng.random(cout)).astype(np.float32)
    params[f"{p}/bias"] = (0.2 * rng.standard_normal(cout)).astype(np.float32)
    params[f"{p}/mean"] = (0.2 * rng.standard_normal(cout)).astype(np.float32)
    params[f"{p}/var"] = (0.5 + rng.random(cout)).astype(np.float32)
    N = helper.make_node
    nodes = [N("Conv", [x, f"{p}/w"], [f"{p}/conv"], kernel_shape=[k, k], pads=[k // 2] * 4, name=f"{p}/conv2d"),
             N("BatchNormalization", [f"{p}/conv"] + [f"{p}/{n}" for n in ("scale", "bias", "mean", "var")],
               [f"{p}/bn"], epsilon=1e-5, name=f"{p}/batch_norm")]
    if fused:
        return nodes + [N("QuickGelu", [f"{p}/bn"], [f"{p}/out"], alpha=1.0, domain="com.microsoft",
                          name=f"{p}/swish_fused")]
    return nodes + [N("Sigmoid", [f"{p}/bn"], [f"{p}/sig"], name=f"{p}/sigmoid"),
                    N("Mul", [f"{p}/bn", f"{p}/sig"], [f"{p}/out"], name=f"{p}/swish")]


def _svtr_block(x: str, params: dict, rng, dim: int, heads: int) -> list:
    """PP-OCRv4 SVTR Block (prenorm=False): LN(x + Attn(x)), LN(. + MLP(.)), LayerNorms written out
    as paddle2onnx does below opset 17; heads via Reshape [0, -1, 3, heads, hd] + Transpose
    [2, 0, 3, 1, 4] + Gather on axis 0, merged by Transpose + Reshape [0, -1, dim]."""
    hd = dim // heads

    def w(name, *shape):
        params[name] = (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)

    def v(name, n, base=0.0, spread=0.1):
        params[name] = (base + spread * rng.standard_normal(n)).astype(np.float32)

    w("attn/qkv/w", dim, 3 * dim), v("attn/qkv/b", 3 * dim), w("attn/proj/w", dim, dim), v("attn/proj/b", dim)
    w("mlp/fc1/w", dim, 2 * dim), v("mlp/fc1/b", 2 * dim), w("mlp/fc2/w", 2 * dim, dim), v("mlp/fc2/b", dim)
    for n in ("norm1", "norm2"):
        v(f"{n}/gamma", dim, 1.0, 0.25), v(f"{n}/beta", dim)
    params |= {"attn/qkv_shape": np.array([0, -1, 3, heads, hd], np.int64),
               "attn/merge_shape": np.array([0, -1, dim], np.int64), "attn/scale": np.float32(hd ** -0.5),
               "idx0": np.int64(0), "idx1": np.int64(1), "idx2": np.int64(2)}
    N = helper.make_node
    nodes = [
        N("MatMul", [x, "attn/qkv/w"], ["attn/qkv_mm"], name="attn/qkv/matmul"),
        N("Add", ["attn/qkv_mm", "attn/qkv/b"], ["attn/qkv"], name="attn/qkv/add"),
        N("Reshape", ["attn/qkv", "attn/qkv_shape"], ["attn/qkv5"], name="attn/reshape_qkv"),
        N("Transpose", ["attn/qkv5"], ["attn/qkvT"], perm=[2, 0, 3, 1, 4], name="attn/transpose_qkv"),
        *[N("Gather", ["attn/qkvT", f"idx{i}"], [f"attn/{t}"], axis=0, name=f"attn/{t}_slice")
          for i, t in enumerate("qkv")],
        N("Mul", ["attn/q", "attn/scale"], ["attn/qs"], name="attn/scale_q"),
        N("Transpose", ["attn/k"], ["attn/kT"], perm=[0, 1, 3, 2], name="attn/transpose_k"),
        N("MatMul", ["attn/qs", "attn/kT"], ["attn/scores"], name="attn/qk"),
        N("Softmax", ["attn/scores"], ["attn/probs"], axis=-1, name="attn/softmax"),
        N("MatMul", ["attn/probs", "attn/v"], ["attn/ctx"], name="attn/av"),
        N("Transpose", ["attn/ctx"], ["attn/ctxT"], perm=[0, 2, 1, 3], name="attn/transpose_ctx"),
        N("Reshape", ["attn/ctxT", "attn/merge_shape"], ["attn/merged"], name="attn/reshape_ctx"),
        N("MatMul", ["attn/merged", "attn/proj/w"], ["attn/proj_mm"], name="attn/proj/matmul"),
        N("Add", ["attn/proj_mm", "attn/proj/b"], ["attn/out"], name="attn/proj/add"),
        N("Add", [x, "attn/out"], ["res1"], name="block/add1"),
        *_layernorm_mean_pow("res1", "norm1", "norm1/gamma", "norm1/beta", 1e-6, expand=False),
        N("MatMul", ["norm1/out", "mlp/fc1/w"], ["mlp/h_mm"], name="mlp/fc1/matmul"),
        N("Add", ["mlp/h_mm", "mlp/fc1/b"], ["mlp/h"], name="mlp/fc1/add"),
        N("Sigmoid", ["mlp/h"], ["mlp/sig"], name="mlp/sigmoid"),
        N("Mul", ["mlp/h", "mlp/sig"], ["mlp/act"], name="mlp/swish"),
        N("MatMul", ["mlp/act", "mlp/fc2/w"], ["mlp/o_mm"], name="mlp/fc2/matmul"),
        N("Add", ["mlp/o_mm", "mlp/fc2/b"], ["mlp/out"], name="mlp/fc2/add"),
        N("Add", ["norm1/out", "mlp/out"], ["res2"], name="block/add2"),
        *_layernorm_mean_pow("res2", "norm2", "norm2/gamma", "norm2/beta", 1e-6, expand=False),
    ]
    return nodes


def _runtime_shape(p: str, dims: list) -> list:
    """Paddle's run-time Reshape target: Shape -> Cast(int32) -> Gather the dims -> Unsqueeze ->
    Concat with int32 constants -> Cast(int64). dims: int (constant) or ("in", axis) of `src`."""
    N = helper.make_node
    nodes, parts = [], []
    for i, d in enumerate(dims):
        name = f"{p}/part{i}"
        if isinstance(d, tuple):
            nodes += [N("Gather", [f"{d[0]}/shape32", f"idx{d[1]}"], [name + "_s"], axis=0, name=name + "/gather"),
                      N("Unsqueeze", [name + "_s", "axes0"], [name], name=name + "/unsqueeze")]
        else:
            nodes.append(_const(name, np.array([d], np.int32)))
        parts.append(name)
    return nodes + [N("Concat", parts, [f"{p}/shape32"], axis=0, name=f"{p}/concat"),
                    N("Cast", [f"{p}/shape32"], [f"{p}/shape"], to=TensorProto.INT64, name=f"{p}/cast")]


def build_svtr_neck(path: Path, fused: bool = False):
    """PP-OCRv4 rec neck (EncoderWithSVTR) as paddle2onnx writes it (opset 14): every weight a
    Constant node; input [batch, 32, 1, width] -> ConvBN-swish 3x3 32->8, 1x1 8->32 -> flatten(2) by a
    run-time Reshape target [b, c, -1] -> Transpose -> SVTR block (4 heads x 8) -> Reshape back by a
    run-time target [0, h, w, 32] -> Transpose -> ConvBN-swish 1x1 32->32 -> Concat with the input
    (shortcut) -> ConvBN-swish 3x3 64->8 -> 1x1 8->16. `fused`: the second swish is ORT's fused
    com.microsoft QuickGelu, which ONNX shape inference does not know: ranks below it stay unknown."""
    rng = np.random.default_rng(1718)
    params: dict = {"axes0": np.array([0], np.int64), "idx3": np.int64(3),
                    "two": np.float32(2.0), "eps": np.float32(1e-6)}
    N = helper.make_node
    nodes = [*_conv_bn_swish("x", "conv1", params, rng, 32, 8, 3),
             *_conv_bn_swish("conv1/out", "conv2", params, rng, 8, 32, 1, fused=fused),
             N("Shape", ["conv2/out"], ["h/shape64"], name="h/shape"),
             N("Cast", ["h/shape64"], ["h/shape32"], to=TensorProto.INT32, name="h/cast"),
             *_runtime_shape("flatten", [("h", 0), ("h", 1), -1]),
             N("Reshape", ["conv2/out", "flatten/shape"], ["flat"], name="flatten/reshape"),
             N("Transpose", ["flat"], ["tokens"], perm=[0, 2, 1], name="flatten/transpose"),
             *_svtr_block("tokens", params, rng, 32, 4),
             *_runtime_shape("unflatten", [0, ("h", 2), ("h", 3), 32]),
             N("Reshape", ["norm2/out", "unflatten/shape"], ["grid"], name="unflatten/reshape"),
             N("Transpose", ["grid"], ["grid_nchw"], perm=[0, 3, 1, 2], name="unflatten/transpose"),
             *_conv_bn_swish("grid_nchw", "conv3", params, rng, 32, 32, 1),
             N("Concat", ["x", "conv3/out"], ["shortcut"], axis=1, name="shortcut/concat"),
             *_conv_bn_swish("shortcut", "conv4", params, rng, 64, 8, 3),
             *_conv_bn_swish("conv4/out", "conv1x1", params, rng, 8, 16, 1)]
    consts = [_const(k, v) for k, v in params.items()]
    graph = helper.make_graph(
        consts + nodes, "svtr_neck",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32, 1, "width"])],
        [helper.make_tensor_value_info("conv1x1/out", TensorProto.FLOAT, ["batch", 16, 1, "width"])])
    opsets = [helper.make_opsetid("", 14)] + ([helper.make_opsetid("com.microsoft", 1)] if fused else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=8,
                                producer_name="paddle2onnx-style (handmade)"), str(path))
    return lambda x: svtr_reference(params, torch.from_numpy(x)).numpy()


def svtr_reference(p: dict, x: torch.Tensor) -> torch.Tensor:
    def t(name):
        return torch.from_numpy(np.asarray(p[name]))

    def cbs(x, n):
        y = F.conv2d(x, t(f"{n}/w"), padding=t(f"{n}/w").shape[-1] // 2)
        y = F.batch_norm(y, t(f"{n}/mean"), t(f"{n}/var"), t(f"{n}/scale"), t(f"{n}/bias"), eps=1e-5)
        return y * torch.sigmoid(y)

    h = cbs(cbs(x, "conv1"), "conv2")
    b, c, hh, ww = h.shape
    z = h.reshape(b, c, -1).transpose(1, 2)
    qkv = (z @ t("attn/qkv/w") + t("attn/qkv/b")).reshape(b, -1, 3, 4, 8).permute(2, 0, 3, 1, 4)
    probs = ((qkv[0] * 8 ** -0.5) @ qkv[1].transpose(-1, -2)).softmax(-1)
    ctx = (probs @ qkv[2]).transpose(1, 2).reshape(b, -1, 32)
    z = _torch_layernorm(z + ctx @ t("attn/proj/w") + t("attn/proj/b"), p["norm1/gamma"], p["norm1/beta"], 1e-6)
    m = z @ t("mlp/fc1/w") + t("mlp/fc1/b")
    m = (m * torch.sigmoid(m)) @ t("mlp/fc2/w") + t("mlp/fc2/b")
    z = _torch_layernorm(z + m, p["norm2/gamma"], p["norm2/beta"], 1e-6)
    g = cbs(z.reshape(b, hh, ww, 32).permute(0, 3, 1, 2), "conv3")
    return cbs(cbs(torch.cat([x, g], 1), "conv4"), "conv1x1")


HANDMADE17 = {   # name -> (builder(path) -> reference, input name, input shape without batch, dtype, note)
    "tf_bytes": (build_tf_bytes, "bytes", (64,), "int32", "jax2tf -> tf2onnx byte-level classifier"),
    "svtr_neck": (build_svtr_neck, "x", (32, 1, 20), "float32", "PP-OCRv4 SVTR neck, paddle2onnx style"),
    "svtr_neck_fused": (lambda p: build_svtr_neck(p, fused=True), "x", (32, 1, 20), "float32",
                        "svtr_neck after ORT's offline fusion of one swish into com.microsoft QuickGelu"),
}


def build_handmade17(only, manifest: list) -> list:
    """Build the issue-17 handmade graphs; returns (path, check) pairs, check() -> max abs diff."""
    checks = []
    for name, (build, inp, shape, dtype, note) in HANDMADE17.items():
        if only and name not in only:
            continue
        p = ZOO_DIR / f"{name}.onnx"
        ref = build(p)
        doc = (build_svtr_neck if name.startswith("svtr") else build_tf_bytes).__doc__
        desc = note + ": " + " ".join(doc.split(". Returns")[0].split())
        calib = ({inp: "int32 byte values in [0, 256)"} if dtype == "int32"
                 else {inp: "standard normal", "dims": "width: any >= 1 (checked at 20 and 7)"})
        manifest.append({**manifest_entry(name, p, "handmade", desc), "family": "exporter_idiom", "calib": calib})
        checks.append((p, lambda p=p, ref=ref, inp=inp, shape=shape, dtype=dtype:
                       verify_handmade(p, ref, inp, shape, dtype)))
    return checks


def verify_handmade(path: Path, ref, inp: str, shape: tuple, dtype: str) -> float:
    """full_check + onnxruntime vs reference at batch 1 and 3 (and a second width for the neck)."""
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng, worst = np.random.default_rng(0), 0.0
    for batch, last in [(1, shape[-1]), (3, shape[-1] if dtype == "int32" else 7)]:
        full = (batch, *shape[:-1], last)
        x = rng.integers(0, 256, full).astype(np.int32) if dtype == "int32" else \
            rng.standard_normal(full).astype(np.float32)
        got, want = sess.run(None, {inp: x})[0], ref(x)
        if got.shape != want.shape:
            raise AssertionError(f"{path.name}: shape {got.shape} != {want.shape}")
        worst = max(worst, float(np.max(np.abs(got - want))))
    return worst


# --------------------------------------------------------------------------
# manifest and verification
# --------------------------------------------------------------------------

DTYPES = {TensorProto.FLOAT: "float32", TensorProto.INT64: "int64", TensorProto.FLOAT16: "float16"}


def io_desc(vis):
    out = []
    for vi in vis:
        tt = vi.type.tensor_type
        shape = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in tt.shape.dim]
        out.append({"name": vi.name, "shape": shape, "dtype": DTYPES.get(tt.elem_type, str(tt.elem_type))})
    return out


def manifest_entry(name, path, exporter, description):
    m = onnx.load(str(path))
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    inits = {i.name for i in m.graph.initializer}
    return {
        "name": name,
        "file": path.name,
        "exporter": exporter,
        "opset": opset,
        "inputs": io_desc([i for i in m.graph.input if i.name not in inits]),
        "outputs": io_desc(m.graph.output),
        "description": description,
    }


def with_family(entry: dict, family: str | None) -> dict:
    return entry if family is None else {**entry, "family": family}


def verify(path, reference, in_shape, batch):
    """full_check + onnxruntime vs reference on a random batch. Returns max abs diff."""
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *in_shape)).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    want = reference(x)
    if got.shape != want.shape:
        raise AssertionError(f"{path.name}: shape {got.shape} != {want.shape}")
    return float(np.max(np.abs(got - want)))


def torch_ref(model):
    def ref(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    return ref


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def main(only=None):
    known = set(ZOO_BY_NAME) | set(TZOO_BY_NAME) | set(HFZOO_BY_NAME) | set(HANDMADE17) | {"nhwc", "paddle_style"}
    if only and not only <= known:
        print(f"unknown zoo entries: {sorted(only - known)}; known: {sorted(known)}", file=sys.stderr)
        return 2
    ZOO_DIR.mkdir(parents=True, exist_ok=True)
    manifest, checks, failures = [], [], []   # checks: (path, reference, in_shape, batch)
    tchecks = []                               # transformer checks: (path, model, kind)

    for entry in ZOO:
        if only and entry.name not in only:
            continue
        t0 = time.time()
        model = build_model(entry)
        ref = torch_ref(model)
        x = torch.randn(2, *entry.input_shape, generator=torch.Generator().manual_seed(1))

        path = ZOO_DIR / f"{entry.name}.onnx"
        export_legacy(model, x, path)
        manifest.append(with_family(manifest_entry(entry.name, path, "legacy", entry.description),
                                     entry.family))
        checks.append((path, ref, entry.input_shape, 2))

        for suffix, kw, note in entry.extra_legacy:
            kw = dict(kw)
            name = entry.name + suffix
            p = ZOO_DIR / f"{name}.onnx"
            batch = 1 if kw.get("fixed_batch") else 2
            export_legacy(model, x[:batch], p, **kw)
            manifest.append(manifest_entry(name, p, "legacy", note))
            checks.append((p, ref, entry.input_shape, batch))

        if entry.dynamo:
            p = ZOO_DIR / f"{entry.name}_dynamo.onnx"
            try:
                export_dynamo(model, x, p)
                manifest.append(with_family(manifest_entry(entry.name + "_dynamo", p, "dynamo",
                                                           entry.description + " (dynamo exporter)"),
                                            entry.family))
                checks.append((p, ref, entry.input_shape, 2))
            except Exception as e:  # noqa: BLE001 - report and move on
                msg = f"dynamo export of {entry.name} failed: {type(e).__name__}: {str(e)[:300]}"
                print("WARNING:", msg)
                failures.append(msg)
                if p.exists():
                    p.unlink()
        print(f"exported {entry.name:20s} {time.time() - t0:5.1f}s", flush=True)

    if not only or "nhwc" in only:
        p = ZOO_DIR / "nhwc.onnx"
        ref = build_nhwc(p)
        manifest.append(manifest_entry("nhwc", p, "handmade",
            "Keras/tf2onnx-style NHWC graph: input [batch,16,16,3], Transpose-Conv-Transpose around each conv, "
            "bias Add in NHWC (bias [C]), Relu, ReduceMean over axes [1,2], MatMul [16,10] + Add bias"))
        checks.append((p, ref, (16, 16, 3), 2))

    if not only or "paddle_style" in only:
        src = ZOO_DIR / "vgg_bn.onnx"
        if not src.exists():
            export_legacy(build_model(ZOO_BY_NAME["vgg_bn"]), torch.randn(2, *IMG), src)
        p = ZOO_DIR / "paddle_style.onnx"
        build_paddle_style(src, p)
        manifest.append(manifest_entry("paddle_style", p, "handmade",
            "vgg_bn.onnx (legacy, BN kept) rewritten Paddle-style: no initializers, every weight produced by a "
            "Constant node, every third one passed through an Identity node before use"))
        checks.append((p, torch_ref(build_model(ZOO_BY_NAME["vgg_bn"])), IMG, 2))

    for entry in TZOO:
        if only and entry.name not in only:
            continue
        t0 = time.time()
        model = build_transformer(entry)
        exports = [(entry.name, entry.opset, entry.description)]
        exports += [(entry.name + suffix, opset, note) for suffix, opset, note in entry.extra_opsets]
        for name, opset, desc in exports:
            p = ZOO_DIR / f"{name}.onnx"
            export_legacy_tf(model, entry.kind, p, opset)
            manifest.append({**manifest_entry(name, p, "legacy", desc), "family": "transformer"})
            tchecks.append((p, model, entry.kind))
        if entry.dynamo:
            p = ZOO_DIR / f"{entry.name}_dynamo.onnx"
            try:
                export_dynamo_tf(model, entry.kind, p)
                manifest.append({**manifest_entry(entry.name + "_dynamo", p, "dynamo",
                                                  entry.description + " (dynamo exporter)"),
                                 "family": "transformer"})
                tchecks.append((p, model, entry.kind))
            except Exception as e:  # noqa: BLE001 - report and move on
                msg = f"dynamo export of {entry.name} failed: {type(e).__name__}: {str(e)[:300]}"
                print("WARNING:", msg)
                failures.append(msg)
                if p.exists():
                    p.unlink()
        print(f"exported {entry.name:20s} {time.time() - t0:5.1f}s", flush=True)

    hchecks = build_hf_zoo(only, manifest, failures)   # (path, model, kind)
    mchecks = build_handmade17(only, manifest)        # (path, check)

    if only:  # merge into an existing manifest, keeping its order
        mpath = ZOO_DIR / "manifest.json"
        if mpath.exists():
            fresh = {e["name"]: e for e in manifest}
            old = json.loads(mpath.read_text())
            merged = [fresh.pop(e["name"], e) for e in old]
            manifest = merged + list(fresh.values())
    (ZOO_DIR / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")

    # ---- verification ----
    print("\nverification (onnx full_check + onnxruntime vs reference):")
    bad = []

    def check(path: Path, run, extra: str = "") -> None:
        try:
            diff = run()
            ok = diff < TOL
        except Exception as e:  # noqa: BLE001
            diff, ok = f"{type(e).__name__}: {e}", False
        print(f"  {'OK ' if ok else 'BAD'} {path.name:32s} {path.stat().st_size / 1024:7.1f} KB  max|diff|={diff}{extra}")
        if not ok:
            bad.append(path.name)

    for path, ref, shape, batch in checks:
        check(path, lambda: verify(path, ref, shape, batch))
    for path, model, kind in tchecks:
        shapes = ", ".join(f"{b}x{s}" if s else f"{b}" for b, s in TF_CHECK_SHAPES[kind])
        check(path, lambda: verify_tf(path, model, kind), f"  (batch x seq: {shapes})")
    for path, run in mchecks:
        check(path, run)
    for path, model, kind in hchecks:
        check(path, lambda: verify_hf(path, model, kind))
    total = sum(p.stat().st_size for p in ZOO_DIR.glob("*.onnx")) / 1024 / 1024
    print(f"\n{len(checks) + len(tchecks) + len(hchecks) + len(mchecks)} files checked, zoo total {total:.2f} MB")
    for f in failures:
        print("NOTE:", f)
    if bad:
        print("FAILED:", ", ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(set(sys.argv[1:]) or None))
