"""HA-GAN's low-resolution real input, computed by the training step (shards do not store it)."""

import torch

from crfgan.hagan import low_res


def test_low_res_picks_every_fourth_voxel():
    # nearest ×1/4 in the reference picks voxel 4i along each axis: an independent expectation by index arithmetic
    s = 16
    z, y, x = torch.meshgrid(torch.arange(s), torch.arange(s), torch.arange(s), indexing="ij")
    vol = (z * 10000 + y * 100 + x).float()[None, None]  # every voxel holds its own coordinates
    lr = low_res(vol, s // 4)
    assert lr.shape == (1, 1, 4, 4, 4)
    for i, j, k in [(0, 0, 0), (1, 2, 3), (3, 3, 3), (2, 0, 1)]:
        assert lr[0, 0, i, j, k].item() == (4 * i) * 10000 + (4 * j) * 100 + 4 * k
