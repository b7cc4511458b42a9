"""crfgan.layers.up2_conv: the fused nearest ×2 upsampling + conv is the same function as the two steps."""

import pytest
import torch
import torch.nn.functional as F

from crfgan.layers import up2, up2_conv


@pytest.mark.parametrize("shape", [(2, 16, 4, 4, 4), (1, 8, 2, 6, 3)])  # cubes and the renderer's thin slabs
def test_fused_upsample_conv_equals_upsample_then_conv_in_values_and_gradients(shape):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(shape[1], 12, 3, padding=1)
    x = torch.randn(*shape, requires_grad=True)
    ref, out = conv(up2(x)), up2_conv(conv, x)
    assert out.shape == ref.shape == (shape[0], 12, *(2 * n for n in shape[2:]))
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ref, [x, conv.weight, conv.bias], g),
                    torch.autograd.grad(out, [x, conv.weight, conv.bias], g)):
        assert torch.allclose(a, b, atol=1e-4 * float(a.abs().max()), rtol=0)


def test_other_convs_and_fused_false_take_the_plain_two_steps():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 3, 3, 3)
    for conv in (torch.nn.Conv3d(4, 4, 3, padding=1, padding_mode="replicate"), torch.nn.Conv3d(4, 4, 1)):
        assert torch.equal(up2_conv(conv, x), conv(up2(x)))
    conv = torch.nn.Conv3d(4, 4, 3, padding=1)
    assert torch.equal(up2_conv(conv, x, fused=False), conv(F.interpolate(x, scale_factor=2, mode="nearest")))


def test_channels_last_input_gives_a_channels_last_output_of_the_same_values():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(8, 8, 3, padding=1).to(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 8, 4, 4, 4).contiguous(memory_format=torch.channels_last_3d)
    out = up2_conv(conv, x)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(out, conv(up2(x)), atol=1e-5, rtol=0)
