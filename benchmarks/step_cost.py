"""Cost of one iCT training step relative to one forward+backward of the same network on the same batch.

An iCT step is a no-grad teacher forward, a student forward+backward, the optimizer step and the EMA
update(s), so its floor is about 4/3 of a forward+backward. Both are timed in this one process, interleaved
after a warm-up, and the medians are compared. Prints peak memory (ru_maxrss on the CPU, the CUDA
allocator's peak on a GPU) and, on a GPU, images/s and model FLOP utilization.

    python benchmarks/step_cost.py --preset digits --steps 20
    python benchmarks/step_cost.py --preset cifar10 --device cuda --batch-size 256 --bf16 --channels-last
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time

import torch

from ict_core.config import ConfigError, load_config
from ict_core.trainer import Run


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="digits")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's train.batch_size")
    p.add_argument("--bf16", action="store_true", help="network under bf16 autocast (train.precision=bf16)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (train.compile=true)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--steps", type=int, default=20, help="timed repetitions of each kind, after warm-up")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="accelerator peak for MFU (default: H100/H200 dense bf16)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = [f"train.device={args.device}", f"train.num_threads={args.threads}",
                 f"train.precision={'bf16' if args.bf16 else 'fp32'}", f"train.compile={args.compile}",
                 f"train.channels_last={args.channels_last}", *args.overrides]
    if args.batch_size:
        overrides.append(f"train.batch_size={args.batch_size}")
    try:
        cfg = load_config(args.preset, overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="step-cost-") as run_dir:
        run = Run(cfg, None, run_dir, None)
        run.step = cfg.train.total_steps // 2  # mid-curriculum; N(k) does not change the cost
        device = run.device
        run.student.train()
        x, extra = run.draw_batch()
        sigma = run.objective.student_sigma(run.step, extra).to(device=device, dtype=x.dtype)
        x_noisy = x + sigma.view(-1, 1, 1, 1) * extra["z"].to(device)

        def forward_backward():
            run.optimizer.zero_grad(set_to_none=True)
            run.student(x_noisy, sigma).float().square().mean().backward()

        def forward_no_grad():
            with torch.no_grad():
                run.student(x_noisy, sigma)

        def ict_step():
            run.train_step()

        kinds = (("fwd_bwd", forward_backward), ("fwd_no_grad", forward_no_grad), ("ict_step", ict_step))
        timings = {name: [] for name, _ in kinds}
        peak_mem = {name: 0 for name, _ in kinds}
        for _ in range(args.warmup):
            forward_backward()
            ict_step()
        for _ in range(args.steps):
            for name, fn in kinds:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                timings[name].append(time.perf_counter() - t0)
                if device.type == "cuda":
                    peak_mem[name] = max(peak_mem[name], torch.cuda.max_memory_allocated(device))

        med = {k: statistics.median(v) for k, v in timings.items()}
        out = {
            "preset": args.preset,
            "device": str(device),
            "batch_size": cfg.train.batch_size,
            "precision": cfg.train.precision,
            "compile": cfg.train.compile,
            "channels_last": cfg.train.channels_last,
            "params_M": round(run.num_params / 1e6, 3),
            "fwd_bwd_ms": round(1e3 * med["fwd_bwd"], 3),
            "ict_step_ms": round(1e3 * med["ict_step"], 3),
            "ratio_ict_step_over_fwd_bwd": round(med["ict_step"] / med["fwd_bwd"], 3),
            "fwd_no_grad_ms": round(1e3 * med["fwd_no_grad"], 3),
            # The teacher pass is one no-grad forward: 4/3 when backward costs two forwards, measured here.
            "floor": round(4 / 3, 3),
            "floor_measured": round(1 + med["fwd_no_grad"] / med["fwd_bwd"], 3),
        }
        if device.type == "cuda":
            out["peak_mem_GiB"] = {k: round(v / 2**30, 3) for k, v in peak_mem.items()}
            out["images_per_s"] = round(cfg.train.batch_size / med["ict_step"], 1)
            from torch.utils.flop_counter import FlopCounterMode

            from ict_core.precision import Bf16Net

            # Counted on the eager module: FlopCounterMode does not see inside compiled graphs.
            compiled, run.student = run.student, (Bf16Net(run.model, "cuda") if args.bf16 else run.model)
            counter = FlopCounterMode(display=False)
            with counter:
                run.optimizer.zero_grad(set_to_none=True)
                loss_vec, _ = run.step_loss(x, extra)
                loss_vec.float().mean().backward()
            run.student = compiled
            step_flops = counter.get_total_flops()
            out["ict_step_TFLOP"] = round(step_flops / 1e12, 4)
            out["mfu"] = round(step_flops / med["ict_step"] / (args.peak_tflops * 1e12), 4)
            out["peak_tflops"] = args.peak_tflops
        else:
            out["peak_rss_GiB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
            out["threads"] = torch.get_num_threads()
    print(json.dumps(out))
    print(f"iCT step / fwd+bwd = {out['ratio_ict_step_over_fwd_bwd']:.3f} (floor 4/3 = 1.333, "
          f"1 + fwd/fwd_bwd measured = {out['floor_measured']:.3f}); "
          f"{out['ict_step_ms']:.2f} ms vs {out['fwd_bwd_ms']:.2f} ms on {out['device']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
