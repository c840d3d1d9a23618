"""Network: boundary condition, preconditioning, U-Net shapes, parameter count of the paper's CIFAR-10 preset."""

import pytest
import torch
from torch import nn

from ict_core.config import load_config
from ict_core.network import Precond, UNet, boundary_scalings, build_network, count_parameters, diffusion_scalings


def _net(cfg, in_channels, resolution):
    """The network of a whole config, built as the trainer builds it (its objective's preconditioning)."""
    from ict_core.objectives import objective_class

    return build_network(cfg.network, cfg.precond, objective_class(cfg.loss.objective).precond, in_channels,
                         resolution)


def _tiny_unet(in_channels=1, resolution=8, **kw):
    args = dict(in_channels=in_channels, resolution=resolution, channels=16, channel_mult=(1, 2), num_blocks=1,
                attn_resolutions=(4,), dropout=0.0, fourier_scale=0.02)
    args.update(kw)
    return UNet(**args)


def _randomize_(module: nn.Module, seed=0):
    """Non-zero weights everywhere, so F is not 0 (the zero-initialised output would hide mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.1)
    return module


class RecordingBackbone(nn.Module):
    """A real backbone (one conv) that also keeps what Precond fed it."""

    def __init__(self, channels=1):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x_in, c_noise):
        self.x_in, self.c_noise = x_in, c_noise
        return self.conv(x_in) + c_noise[:, None, None, None]


# ---- preconditioning ------------------------------------------------------------------------------------------

def test_boundary_scalings_exact_at_sigma_min():
    for dtype in (torch.float32, torch.float64):
        sigma = torch.full((3,), 0.002, dtype=dtype)
        c_skip, c_out = boundary_scalings(sigma, 0.5, 0.002)
        assert torch.equal(c_skip, torch.ones_like(sigma)) and torch.equal(c_out, torch.zeros_like(sigma))


def test_boundary_scalings_formula_and_limit():
    sigma = torch.tensor([0.01, 0.5, 80.0], dtype=torch.float64)
    c_skip, c_out = boundary_scalings(sigma, 0.5, 0.002)
    assert torch.allclose(c_skip, 0.25 / ((sigma - 0.002) ** 2 + 0.25))
    assert torch.allclose(c_out, (sigma - 0.002) * 0.5 / torch.sqrt(0.25 + sigma**2))
    # Far from sigma_min they approach EDM's scalings (the shift matters only near the boundary).
    e_skip, e_out = diffusion_scalings(sigma[-1:], 0.5)
    assert torch.allclose(c_skip[-1:], e_skip, rtol=1e-4) and torch.allclose(c_out[-1:], e_out, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_precond_boundary_condition_exact(dtype):
    torch.manual_seed(0)
    net = Precond(_randomize_(_tiny_unet(dropout=0.3)), "consistency", sigma_min=0.002, sigma_data=0.5).to(dtype)
    net.train()
    x = torch.randn(4, 1, 8, 8, dtype=dtype)
    assert torch.equal(net(x, torch.full((4,), 0.002, dtype=dtype)), x)
    assert torch.equal(net(x, 0.002), x)
    # ... and a proper function of x elsewhere (F is not zero here).
    assert not torch.allclose(net(x, 0.5), x)


def test_precond_c_in_and_c_noise():
    backbone = RecordingBackbone()
    net = Precond(backbone, "consistency", 0.002, 0.5)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    backbone.double()
    sigma = torch.tensor([0.002, 1.0, 80.0], dtype=torch.float64)
    out = net(x, sigma)
    c_in = 1 / torch.sqrt(sigma**2 + 0.25)
    assert torch.allclose(backbone.x_in, c_in[:, None, None, None] * x)
    assert torch.allclose(backbone.c_noise, torch.log(sigma) / 4)
    c_skip, c_out = boundary_scalings(sigma[:, None, None, None], 0.5, 0.002)
    expected = c_skip * x + c_out * backbone.conv(backbone.x_in) + c_out * (torch.log(sigma) / 4)[:, None, None, None]
    assert torch.allclose(out, expected)


def test_precond_diffusion_kind_uses_edm_scalings():
    backbone = RecordingBackbone().double()
    net = Precond(backbone, "diffusion", 0.002, 0.5)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    sigma = torch.tensor([0.002, 3.0], dtype=torch.float64)
    out = net(x, sigma)
    s = sigma[:, None, None, None]
    F_out = backbone.conv(backbone.x_in) + backbone.c_noise[:, None, None, None]
    assert torch.allclose(out, 0.25 / (s**2 + 0.25) * x + s * 0.5 / torch.sqrt(s**2 + 0.25) * F_out)
    assert not torch.equal(out[:1], x[:1])  # EDM's D has no exact boundary condition


def test_precond_bad_kind():
    with pytest.raises(ValueError, match="consistency, diffusion"):
        Precond(RecordingBackbone(), "edm")


# ---- U-Net ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("in_channels, resolution, channel_mult, attn", [
    (1, 8, (1, 2), ()),
    (3, 8, (1, 2), (4,)),
    (3, 16, (1, 2, 2), (8,)),
    (3, 32, (1, 2, 2), (16,)),
    (3, 64, (1, 1, 2, 2), (16,)),
])
def test_unet_forward_shapes(in_channels, resolution, channel_mult, attn):
    data = {"data.name": "patches", "data.resolution": resolution} if in_channels == 3 else {}
    cfg = load_config(overrides={"network.channels": 8, "network.channel_mult": list(channel_mult),
                                 "network.attn_resolutions": list(attn), "network.num_blocks": 1, **data})
    net = _randomize_(_net(cfg, in_channels, resolution))
    x = torch.randn(2, in_channels, resolution, resolution)
    out = net(x, torch.tensor([0.1, 10.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_unet_group_norm_adapts_to_small_channel_counts():
    for channels in (1, 3, 6, 12, 40):
        net = _tiny_unet(channels=channels, attn_resolutions=())
        groups = {m.num_groups for m in net.modules() if isinstance(m, nn.GroupNorm)}
        assert all(g >= 1 for g in groups)
        assert net(torch.randn(2, 1, 8, 8), torch.zeros(2)).shape == (2, 1, 8, 8)
    net = _tiny_unet(channels=128, channel_mult=(2,), attn_resolutions=())
    assert max(m.num_groups for m in net.modules() if isinstance(m, nn.GroupNorm)) == 32


def test_zero_initialised_output_gives_c_skip_x():
    net = _net(load_config(), 1, 8)
    x = torch.randn(2, 1, 8, 8)
    sigma = torch.tensor([0.3, 5.0])
    c_skip, _ = boundary_scalings(sigma[:, None, None, None], 0.5, 0.002)
    assert torch.allclose(net(x, sigma), c_skip * x)


def test_fourier_embedding_scale_from_config():
    torch.manual_seed(0)
    net = _net(load_config(overrides={"network.channels": 256, "network.fourier_scale": 16.0}), 1, 8)
    freqs = net.backbone.embed.freqs
    assert freqs.shape == (128,) and 10.0 < freqs.std().item() < 22.0
    assert "backbone.embed.freqs" in net.state_dict()  # checkpoints keep the fixed frequencies
    assert not freqs.requires_grad
    torch.manual_seed(0)
    small = _net(load_config(overrides={"network.channels": 256}), 1, 8).backbone.embed.freqs
    assert torch.allclose(small * (16.0 / 0.02), freqs)


def test_dropout_active_in_train_mode_only():
    torch.manual_seed(0)
    net = Precond(_randomize_(_tiny_unet(dropout=0.5)))
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 1.0])
    net.train()
    assert not torch.equal(net(x, sigma), net(x, sigma))
    net.eval()
    assert torch.equal(net(x, sigma), net(x, sigma))


def test_channels_last_matches():
    net = Precond(_randomize_(_tiny_unet(in_channels=3, resolution=16, channel_mult=(1, 2), attn_resolutions=(8,))))
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 2.0])
    ref = net(x, sigma)
    net_cl = net.to(memory_format=torch.channels_last)
    out = net_cl(x.contiguous(memory_format=torch.channels_last), sigma)
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.slow
def test_forward_traces_as_one_graph():
    """No data-dependent Python control flow: dynamo captures the whole forward without graph breaks."""
    import torch._dynamo

    torch._dynamo.reset()
    net = Precond(_randomize_(_tiny_unet(dropout=0.0)))
    net.eval()
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 2.0])
    assert torch.allclose(compiled(x, sigma), net(x, sigma), atol=1e-6)


def test_bf16_autocast_output_is_fp32_and_boundary_holds():
    net = Precond(_randomize_(_tiny_unet()))
    x = torch.randn(2, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, torch.tensor([0.002, 1.0]))
    assert out.dtype == torch.float32
    assert torch.equal(out[0], x[0])


def test_unet_bad_resolution_and_build_kind():
    with pytest.raises(ValueError, match="divisible"):
        _tiny_unet(resolution=6, channel_mult=(1, 2, 2))
    assert _net(load_config(), 1, 8).kind == "consistency"
    assert _net(load_config(overrides={"loss.objective": "diffusion"}), 1, 8).kind == "diffusion"


# ---- size of the paper's network ------------------------------------------------------------------------------

def _paper_count(num_blocks):
    cfg = load_config(overrides={"data.name": "patches", "data.resolution": 32,
                                 "network.channels": 128, "network.channel_mult": [2, 2, 2],
                                 "network.num_blocks": num_blocks, "network.attn_resolutions": [16],
                                 "network.dropout": 0.3})
    with torch.device("meta"):
        return count_parameters(_net(cfg, 3, 32))


def test_paper_cifar10_network_size():
    params = _paper_count(4)
    assert abs(params - 56e6) / 56e6 < 0.15, params  # 56,787,459 with this block design
    deep = _paper_count(8)
    # iCT-deep doubles the number of residual blocks per level.
    assert 1.6 < deep / params < 2.0, deep
