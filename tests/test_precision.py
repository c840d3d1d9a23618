"""The presets' precision keeps iCT's teacher-student signal: the rule of ict_core.precision, checked on the CPU
(bf16 autocast runs there) with a briefly trained network over the whole N=1281 grid."""
from __future__ import annotations

import pytest
import torch

from ict_core import trainer
from ict_core.config import ConfigError, list_presets, load_config, load_preset
from ict_core.data import load_dataset
from ict_core.precision import MAX_RELATIVE_ERROR, passing_precisions, relative_errors, wrap_precision
from ict_core.schedule import karras_sigmas


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny digits network after 150 real training steps (no evaluation, so no feature network)."""
    cfg = load_config("tiny", ["train.total_steps=150", "train.num_threads=1", "network.channels=16"])
    run = trainer.Run(cfg, None, tmp_path_factory.mktemp("precision_run"), None)
    for _ in range(cfg.train.total_steps):
        run.train_step()
        run.step += 1
    return run.cfg, run.model.eval()


@pytest.mark.slow
def test_every_presets_precision_keeps_the_teacher_student_difference(trained):
    cfg, net = trained
    images = load_dataset(cfg.data).heldout[:2]
    sigmas = karras_sigmas(1281, cfg.precond.sigma_min, cfg.precond.sigma_max, cfg.precond.rho).float()
    errors = {p: relative_errors(net, images, sigmas, p) for p in ("bf16", "bf16_stem")}
    assert errors["bf16"].shape == (1280,)
    passing = passing_precisions(errors)
    print({p: (float(e.max()), float(e.median())) for p, e in errors.items()}, passing)
    # bf16 autocast loses the signal somewhere on the grid (the issue measured errors of 0.57 to 39) ...
    assert float(errors["bf16"].max()) > MAX_RELATIVE_ERROR and "bf16" not in passing
    # ... so every preset runs a precision that keeps it below 1% at every sigma.
    for name in list_presets():
        assert load_preset(name).train.precision in passing, name
    # fp32 against itself: exactly zero, so the measurement has no noise of its own
    assert float(relative_errors(net, images, sigmas[:40], "fp32").max()) == 0.0


@pytest.mark.slow
def test_bf16_stem_keeps_embedding_and_first_conv_in_fp32_under_autocast(trained):
    cfg, net = trained
    seen = {}
    hook = net.backbone.conv_in.register_forward_hook(lambda m, i, o: seen.update(conv=o.dtype))
    hook2 = net.backbone.embed_mlp.register_forward_hook(lambda m, i, o: seen.update(emb=o.dtype))
    try:
        x = torch.zeros(2, 1, 8, 8)
        for precision, expected in (("bf16", torch.bfloat16), ("bf16_stem", torch.float32)):
            out = wrap_precision(net, precision, "cpu")(x, torch.tensor([0.5, 1.0]))
            assert out.dtype == torch.float32 and seen == {"conv": expected, "emb": expected}, precision
    finally:
        hook.remove()
        hook2.remove()
        from ict_core.network import set_fp32_stem

        set_fp32_stem(net, False)
    with pytest.raises(ConfigError, match="train.precision must be one of"):
        wrap_precision(net, "fp16", "cpu")
