"""Does a forward precision keep iCT's training signal? The error of the teacher-student output difference.

iCT's loss is a distance between f(x + sigma_{i+1} z, sigma_{i+1}) (student) and f(x + sigma_i z, sigma_i)
(teacher) for adjacent sigmas of the discretization grid; with N = 1281 adjacent sigmas differ by less than
bf16's resolution (2^-8 relative) near sigma_min. A precision keeps the signal when the difference

    D_i = f(x + sigma_{i+1} z, sigma_{i+1}) - f(x + sigma_i z, sigma_i)

computed in it stays close to D_i computed in fp32. relative_errors() gives ||D_i^p - D_i^fp32|| / ||D_i^fp32||
for every interval i of the grid; benchmarks/precision.py prints them for a trained checkpoint, and the rule
the presets follow (docs/MEASUREMENT.md) is: the default precision is one whose error stays below
MAX_RELATIVE_ERROR at every sigma, fp32 if none does.

training_forwards() builds what the trainer's step runs: the network in train.precision (wrap_precision),
compiled (train.compile; check_compile refuses it where it would break the objective's shared dropout masks) and
wrapped for data parallelism across ranks.
"""
from __future__ import annotations

import torch

from .config import ConfigError, TrainConfig, choices

MAX_RELATIVE_ERROR = 0.01
PRECISIONS = choices(TrainConfig, "precision")  # fp32 first, then the bf16 variants


class Bf16Net(torch.nn.Module):
    """Runs the network under bf16 autocast and hands back fp32, so the loss (lambda up to ~2.6e4) stays fp32.

    keep_stem_fp32 (train.precision=bf16_stem) keeps the noise embedding and the first convolution, which see
    c_in * x and ln(sigma) / 4 directly, in fp32 (network.set_fp32_stem): adjacent sigmas of the N=1281 grid
    differ by less than one bf16 step there. benchmarks/precision.py measures what each variant keeps.
    """

    def __init__(self, net: torch.nn.Module, device_type: str, keep_stem_fp32: bool = False):
        from .network import set_fp32_stem

        super().__init__()
        self.net = set_fp32_stem(net, keep_stem_fp32)
        self.device_type = device_type

    def forward(self, x, sigma):
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.net(x, sigma)
        return out.float()


def wrap_precision(net: torch.nn.Module, precision: str, device_type: str) -> torch.nn.Module:
    """The network as train.precision runs it: itself (fp32) or under bf16 autocast (bf16, bf16_stem)."""
    if precision not in PRECISIONS:  # benchmarks/precision.py calls this with names of its own
        raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "fp32":
        return net
    return Bf16Net(net, device_type, keep_stem_fp32=precision == "bf16_stem")


def check_compile(compile: bool, dropout: float, objective) -> None:
    """train.compile with dropout is refused where teacher and student passes must share dropout masks
    (`objective.shares_dropout`, the consistency objective): under inductor the teacher's no-grad graph and the
    student's training graph draw their dropout masks independently."""
    if compile and dropout > 0 and objective.shares_dropout:
        raise ConfigError(f"train.compile=true needs network.dropout=0 for the {objective.name} objective, got "
                          f"network.dropout={dropout}: compiled teacher and student passes draw different "
                          f"dropout masks; set train.compile=false or network.dropout=0")


def training_forwards(model: torch.nn.Module, teacher: torch.nn.Module | None, precision: str, compile: bool,
                      device: torch.device, world_size: int) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """(student, teacher_forward): the forward the optimizer step trains (`precision` = train.precision, `compile`
    = train.compile, DDP when world_size > 1) and what the loss's teacher pass runs: the EMA `teacher` in
    `precision` when there is one; else, under DDP, the student without its DDP wrapper (no hooks, no gradient
    sync for a stop-gradient pass); else None (the loss runs the student itself). The caller has run
    check_compile."""
    forward = wrap_precision(model, precision, device.type)
    inner = torch.compile(forward) if compile else forward
    if world_size > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )
        student, stopgrad_teacher = (torch.compile(ddp) if compile else ddp), inner
    else:
        student, stopgrad_teacher = inner, None
    if teacher is not None:
        return student, wrap_precision(teacher, precision, device.type)
    return student, stopgrad_teacher


@torch.no_grad()
def output_differences(net: torch.nn.Module, images: torch.Tensor, sigmas: torch.Tensor, precision: str,
                       seed: int = 0, chunk: int = 64) -> torch.Tensor:
    """(N-1, B, C, H, W) teacher-student differences D_i of `net` (eval mode) in `precision`, the noise z fixed
    by `seed` and shared by every interval and every precision."""
    device = images.device
    was_training = net.training
    net.eval()
    forward = wrap_precision(net, precision, device.type)
    z = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)).to(device)
    sigmas = sigmas.to(device=device, dtype=torch.float32)
    out = []
    try:
        for start in range(0, sigmas.shape[0] - 1, chunk):
            lo = sigmas[start:start + chunk]
            hi = sigmas[start + 1:start + 1 + chunk]
            lo = lo[: hi.shape[0]]
            count, batch = lo.shape[0], images.shape[0]
            x = images.repeat(count, 1, 1, 1)
            noise = z.repeat(count, 1, 1, 1)
            s_lo, s_hi = lo.repeat_interleave(batch), hi.repeat_interleave(batch)
            view = (-1, 1, 1, 1)
            student = forward(x + s_hi.view(view) * noise, s_hi).float()
            teacher = forward(x + s_lo.view(view) * noise, s_lo).float()
            out.append((student - teacher).reshape(count, batch, *images.shape[1:]).cpu())
    finally:
        net.train(was_training)
        if precision != "fp32":
            from .network import set_fp32_stem

            set_fp32_stem(net, False)
    return torch.cat(out)


def relative_errors(net: torch.nn.Module, images: torch.Tensor, sigmas: torch.Tensor, precision: str,
                    reference: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """(N-1,) ||D_i^precision - D_i^fp32|| / ||D_i^fp32|| over the batch, one per grid interval."""
    if reference is None:
        reference = output_differences(net, images, sigmas, "fp32", seed)
    diff = output_differences(net, images, sigmas, precision, seed)
    num = (diff - reference).flatten(1).double().norm(dim=1)
    den = reference.flatten(1).double().norm(dim=1).clamp_min(1e-30)
    return (num / den).float()


def passing_precisions(errors: dict[str, torch.Tensor]) -> list[str]:
    """Precisions whose relative error stays below MAX_RELATIVE_ERROR at every sigma (fp32 always passes)."""
    return ["fp32"] + [p for p, e in errors.items() if p != "fp32" and bool((e < MAX_RELATIVE_ERROR).all())]
