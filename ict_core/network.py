"""The consistency-model network: an NCSN++-style U-Net backbone F and the preconditioning wrapper
f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)) (iCT Sec. 2 / EDM Table 1).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

PRECOND_KINDS = ("consistency", "diffusion")
_SKIP_SCALE = 1.0 / math.sqrt(2.0)
_EMB_MULT = 4  # noise-embedding width = 4 * channels, as in DDPM++ / NCSN++


def boundary_scalings(sigma, sigma_data: float = 0.5, sigma_min: float = 0.002):
    """(c_skip, c_out) of CT Eq. 3 / iCT, shifted by sigma_min so that c_skip = 1 and c_out = 0 at sigma_min.

    c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)
    c_out  = (sigma - sigma_min) sigma_data / sqrt(sigma_data^2 + sigma^2)
    In floating point sigma - sigma_min is exactly 0 at sigma = sigma_min, so f(x, sigma_min) == x bit for bit.
    """
    shifted = sigma - sigma_min
    c_skip = sigma_data**2 / (shifted**2 + sigma_data**2)
    c_out = shifted * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def diffusion_scalings(sigma, sigma_data: float = 0.5):
    """(c_skip, c_out) of EDM (Karras et al. 2022, Table 1): sd^2/(s^2+sd^2), s sd/sqrt(s^2+sd^2)."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def _num_groups(channels: int, max_groups: int = 32, min_channels_per_group: int = 4) -> int:
    """Largest group count <= 32 that divides `channels` and keeps >= 4 channels per group (1 for tiny layers)."""
    groups = max(1, min(max_groups, channels // min_channels_per_group))
    while channels % groups:
        groups -= 1
    return groups


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_num_groups(channels), channels, eps=1e-6)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Dropout(nn.Module):
    """Inverted dropout. On the CPU the mask comes from torch.rand (about 2.5x faster than bernoulli_ there, and
    dropout runs twice per iCT step); elsewhere it is F.dropout. Both consume the default generator, so forking it
    replays the same masks."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        # fp32 uniforms: a bf16 draw has too few levels to hit the keep probability.
        keep = torch.rand_like(x, dtype=torch.float32).ge_(self.p)
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class FourierEmbedding(nn.Module):
    """Gaussian Fourier features of c_noise with fixed random frequencies ~ N(0, scale^2) (iCT: scale 0.02)."""

    def __init__(self, num_channels: int, scale: float):
        super().__init__()
        if num_channels % 2:
            raise ValueError(f"Fourier embedding width must be even, got {num_channels}")
        # Persistent buffer: a checkpoint restores the same frequencies.
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        phase = (2 * math.pi) * c_noise.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return torch.cat([phase.cos(), phase.sin()], dim=1)


class Attention(nn.Module):
    """Self-attention over pixels with a residual connection rescaled by 1/sqrt(2)."""

    def __init__(self, channels: int, head_channels: int = 64):
        super().__init__()
        self.num_heads = max(1, channels // head_channels)
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = (t.transpose(-1, -2) for t in qkv.unbind(1))  # (b, heads, hw, c_head)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return (x + self.proj(out)) * _SKIP_SCALE


class ResBlock(nn.Module):
    """BigGAN-style residual block: GN-SiLU-conv, + noise embedding, GN-SiLU-dropout-conv, skip, / sqrt(2).

    `resample` = "down" (2x2 average pool) or "up" (nearest 2x) happens inside the block on both paths.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, dropout: float,
                 resample: str | None = None, attention: bool = False):
        super().__init__()
        self.resample = resample
        self.norm0 = _norm(in_channels)
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_channels, out_channels)
        self.norm1 = _norm(out_channels)
        self.dropout = Dropout(dropout)
        self.conv1 = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        needs_skip_conv = in_channels != out_channels or resample is not None
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if needs_skip_conv else nn.Identity()
        self.attn = Attention(out_channels) if attention else nn.Identity()

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(self._resample(F.silu(self.norm0(x))))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        x = (self.skip(self._resample(x)) + h) * _SKIP_SCALE
        return self.attn(x)


class UNet(nn.Module):
    """NCSN++-style U-Net backbone F(x_in, c_noise) (Song et al. 2021, DDPM++/NCSN++ layout as in EDM).

    Encoder per level: (a down-sampling block unless first), num_blocks residual blocks; decoder per level: (an
    up-sampling block unless lowest), num_blocks + 1 blocks on concatenated skips; attention after blocks at
    resolutions in attn_resolutions (those the net does not have are ignored), and at the bottleneck when
    attn_resolutions is non-empty. Output conv zero-initialised so F = 0 at init.
    """

    def __init__(self, *, in_channels: int, resolution: int, channels: int, channel_mult, num_blocks: int,
                 attn_resolutions, dropout: float, fourier_scale: float, out_channels: int | None = None):
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        levels = len(channel_mult)
        if not channel_mult or any(m < 1 for m in channel_mult):
            raise ValueError(f"channel_mult must be a non-empty sequence of positive ints, got {channel_mult}")
        if resolution < 1 or resolution % (2 ** (levels - 1)):
            raise ValueError(
                f"resolution {resolution} must be divisible by 2^(len(channel_mult)-1) = {2 ** (levels - 1)} "
                f"for channel_mult={channel_mult}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        attn_resolutions = {int(r) for r in attn_resolutions}
        out_channels = in_channels if out_channels is None else out_channels
        emb_channels = _EMB_MULT * channels

        noise_channels = channels + channels % 2  # cos/sin pairs need an even width
        self.embed = FourierEmbedding(noise_channels, fourier_scale)
        self.embed_mlp = nn.Sequential(nn.Linear(noise_channels, emb_channels), nn.SiLU(),
                                       nn.Linear(emb_channels, emb_channels))

        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [channels]
        width = channels
        for level, mult in enumerate(channel_mult):
            res = resolution >> level
            if level > 0:
                self.down.append(ResBlock(width, width, emb_channels, dropout, resample="down"))
                skip_channels.append(width)
            for _ in range(num_blocks):
                self.down.append(ResBlock(width, channels * mult, emb_channels, dropout, attention=res in attn_resolutions))
                width = channels * mult
                skip_channels.append(width)

        self.mid = nn.ModuleList([
            ResBlock(width, width, emb_channels, dropout, attention=bool(attn_resolutions)),
            ResBlock(width, width, emb_channels, dropout),
        ])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = resolution >> level
            if level < levels - 1:
                self.up.append(ResBlock(width, width, emb_channels, dropout, resample="up"))
            for _ in range(num_blocks + 1):
                self.up.append(ResBlock(width + skip_channels.pop(), channels * mult, emb_channels, dropout,
                                        attention=res in attn_resolutions))
                width = channels * mult
        self.norm_out = _norm(width)
        self.conv_out = _zero(nn.Conv2d(width, out_channels, 3, padding=1))

    fp32_stem = False  # set by set_fp32_stem(): keep the noise embedding and conv_in out of autocast

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        if self.fp32_stem and torch.is_autocast_enabled(x_in.device.type):
            # c_in * x and ln(sigma) / 4 of adjacent grid sigmas differ by less than a bf16 step (docs/MEASUREMENT.md).
            with torch.autocast(x_in.device.type, enabled=False):
                emb = self.embed_mlp(self.embed(c_noise.float()))
                h = self.conv_in(x_in.float())
        else:
            emb = self.embed_mlp(self.embed(c_noise))
            h = self.conv_in(x_in)
        skips = [h]
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        for block in self.up:
            if block.resample is None:
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))


class Precond(nn.Module):
    """f(x, sigma) = c_skip x + c_out F(c_in x, c_noise), c_in = 1/sqrt(sigma^2 + sigma_data^2), c_noise = ln(sigma)/4.

    kind="consistency" uses boundary_scalings (f(x, sigma_min) = x exactly); kind="diffusion" is EDM's denoiser D.
    The skip combination runs in x's dtype (fp32) even when the backbone ran under bf16 autocast.
    """

    def __init__(self, backbone: nn.Module, kind: str = "consistency", sigma_min: float = 0.002, sigma_data: float = 0.5):
        super().__init__()
        if kind not in PRECOND_KINDS:
            raise ValueError(f"Precond kind must be one of {', '.join(PRECOND_KINDS)}; got {kind!r}")
        if not sigma_min > 0 or not sigma_data > 0:
            raise ValueError(f"sigma_min and sigma_data must be > 0, got sigma_min={sigma_min}, sigma_data={sigma_data}")
        self.backbone = backbone
        self.kind = kind
        self.sigma_min = float(sigma_min)
        self.sigma_data = float(sigma_data)

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        sigma = sigma.reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
        if self.kind == "consistency":
            c_skip, c_out = boundary_scalings(sigma, self.sigma_data, self.sigma_min)
        else:
            c_skip, c_out = diffusion_scalings(sigma, self.sigma_data)
        c_in = (sigma**2 + self.sigma_data**2).rsqrt()
        c_noise = sigma.log().flatten() / 4
        out = self.backbone(c_in * x, c_noise)
        return c_skip * x + c_out * out.to(x.dtype)


def set_fp32_stem(net: nn.Module, enabled: bool = True) -> nn.Module:
    """Every UNet inside `net` runs its noise embedding and first convolution in fp32 even under autocast
    (train.precision=bf16_stem); outside autocast the flag changes nothing."""
    for module in net.modules():
        if isinstance(module, UNet):
            module.fp32_stem = enabled
    return net


def build_network(network, precond, kind: str, in_channels: int, resolution: int) -> Precond:
    """The Precond-wrapped UNet of the network settings `network` (NetworkConfig) for images of `in_channels` x
    `resolution`^2, preconditioned as `kind` (PRECOND_KINDS; the objective's `precond`) with the constants of
    `precond` (PrecondConfig: sigma_min, sigma_data)."""
    backbone = UNet(
        in_channels=in_channels,
        resolution=resolution,
        channels=network.channels,
        channel_mult=network.channel_mult,
        num_blocks=network.num_blocks,
        attn_resolutions=network.attn_resolutions,
        dropout=network.dropout,
        fourier_scale=network.fourier_scale,
    )
    return Precond(backbone, kind=kind, sigma_min=precond.sigma_min, sigma_data=precond.sigma_data)


def count_parameters(module: nn.Module) -> int:
    """The number of parameters of `module` (the trainer's num_params)."""
    return sum(p.numel() for p in module.parameters())
