"""The published protocol's features: MedicalNet (Med3D) 3D ResNet-50, when the user supplies its weights.

HA-GAN and CRF-GAN report FID/MMD on 2048-d features of Med3D ResNet-50 (Chen et al., 2019; shortcut type B,
layer3/layer4 dilated 2/4 with stride 1, the segmentation head replaced by global average pooling), fed volumes in
[-1, 1]. Those weights are downloaded from a hub and cannot be fetched here, so this path runs only when the user
gives a local file (``eval.med3d_weights``) and its SHA-256 (``eval.med3d_sha256``); otherwise the metrics are
skipped with one line. The weights must be safetensors (nothing is unpickled); MedicalNet's ``resnet_50.pth`` converts
once, on a trusted machine, with
``d = torch.load('resnet_50.pth', weights_only=True)['state_dict']``, then
``safetensors.torch.save_file({k: v.contiguous() for k, v in d.items()}, 'resnet_50.safetensors')``.
Keys may carry DataParallel's ``module.`` prefix; ``conv_seg.*`` (the segmentation head) is ignored.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, stride=stride, dilation=dilation, padding=dilation, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class Med3DResNet50(nn.Module):
    """MedicalNet ``resnet50(shortcut_type='B')`` up to layer4, then global average pooling → (B, 2048)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv3d(1, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        self.cin = 64
        self.layer1 = self._layer(64, 3)
        self.layer2 = self._layer(128, 4, stride=2)
        self.layer3 = self._layer(256, 6, dilation=2)
        self.layer4 = self._layer(512, 3, dilation=4)

    def _layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        down = None
        if stride != 1 or self.cin != planes * 4:  # shortcut B: a projection conv + BN
            down = nn.Sequential(nn.Conv3d(self.cin, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm3d(planes * 4))
        layers = [Bottleneck(self.cin, planes, stride, dilation, down)]
        self.cin = planes * 4
        layers += [Bottleneck(self.cin, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3, 4))


def load_med3d(path: str | Path, expected_sha256: str) -> Med3DResNet50:
    """The network with the user's weights; errors name the file (missing, wrong hash, not safetensors, wrong keys)."""
    from safetensors.torch import load as st_load

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: MedicalNet weights not found (eval.med3d_weights)")
    raw = p.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    if sha != expected_sha256.lower():
        raise ValueError(f"{p}: SHA-256 {sha} does not match eval.med3d_sha256 {expected_sha256}")
    try:
        sd = st_load(raw)
    except Exception as e:
        raise ValueError(f"{p}: not a safetensors file ({e}); convert the .pth once as crfgan.metrics.med3d says") from None
    sd = {k.removeprefix("module."): v for k, v in sd.items() if not k.removeprefix("module.").startswith("conv_seg")}
    net = Med3DResNet50()
    missing, unexpected = net.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{p}: not MedicalNet ResNet-50 weights (missing {missing[:3]}…, unexpected {unexpected[:3]}…)")
    return net.eval().requires_grad_(False)


@torch.no_grad()
def med3d_features(net: Med3DResNet50, volumes, batch: int = 1) -> np.ndarray:
    vols = np.asarray(volumes, dtype=np.float32)
    return np.concatenate([net(torch.from_numpy(np.array(vols[i : i + batch]))[:, None]).double().numpy()
                           for i in range(0, len(vols), batch)])
