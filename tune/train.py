"""Command line: one iCT run under Ray Train, data-parallel over W workers (CPU gloo or GPU NCCL).

    python tune/train.py --preset digits --workers 2 [--set key=value ...] [--gpus-per-worker 1]
        [--storage PATH|s3://BUCKET/PREFIX] [--name NAME] [--max-failures F] [--resume] [--dry-run]

Ray: a local Ray by default (dashboard on 127.0.0.1); RAY_ADDRESS joins a running cluster (with token auth,
RAY_AUTH_MODE=token); under `ray job submit` the job's cluster is used. Results: STORAGE/NAME/run is the run
folder (same layout as `python -m ict_core.train`), STORAGE/NAME/checkpoint_* are Ray's checkpoints.
Bad input exits with code 2 before Ray starts; a failed run exits with 1.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from ict_core.cli import bad_input, check_data_paths, check_writable_folder, command
from ict_core.errors import BadInput
from ict_core.config import list_presets, load_config
from ict_core.records import COMPLETED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python tune/train.py",
        description="Train one iCT model with Ray Train (multi-worker / multi-GPU / multi-node DDP).",
    )
    parser.add_argument("--preset", default=None,
                        help="preset name in ict_core/presets or a .yaml path (default: digits; with --resume: the "
                             "run's saved config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one dotted config key, e.g. --set train.total_steps=500 (repeatable)")
    parser.add_argument("--workers", type=int, default=1, help="data-parallel workers; train.batch_size is global")
    parser.add_argument("--gpus-per-worker", type=float, default=0, help="0 trains on CPUs with gloo, >0 uses NCCL")
    parser.add_argument("--cpus-per-worker", type=float, default=None,
                        help="default: the cluster's free CPUs split evenly (1 per GPU worker)")
    parser.add_argument("--storage", default=None,
                        help="where runs live: a local folder (default ./runs; on a multi-node cluster an NFS path) or "
                             "s3://BUCKET/PREFIX; default on a cluster: $ICT_STORAGE")
    parser.add_argument("--name", default=None, help="run name (default: <preset>-<timestamp>)")
    parser.add_argument("--max-failures", type=int, default=0,
                        help="worker-group restarts from the latest checkpoint after a failure (-1: unlimited)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run --name in --storage from its latest checkpoint")
    parser.add_argument("--ship-code", choices=("auto", "yes", "no"), default="auto",
                        help="send this repository to the workers as a runtime_env working_dir (auto: only to a "
                             "RAY_ADDRESS cluster whose nodes lack the package, see cluster.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and launch plan, then exit")
    parser.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    return parser


def _resolve(args: argparse.Namespace):
    from tune.launch_plan import plan_launch
    from tune.ray_train import load_run_config

    ship_code = {"auto": None, "yes": True, "no": False}[args.ship_code]
    name = args.name
    if name is None and not args.resume:
        name = f"{Path(args.preset or 'digits').stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = load_config(args.preset or "digits", args.overrides)
    plan = plan_launch(
        cfg, workers=args.workers, gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
        storage=args.storage, name=name, max_failures=args.max_failures, resume=args.resume, ship_code=ship_code,
    )
    if args.resume and args.preset is None:
        saved = load_run_config(plan)
        if saved is not None:
            cfg = saved.with_overrides(args.overrides)
            plan = plan_launch(
                cfg, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                cpus_per_worker=args.cpus_per_worker, storage=args.storage, name=name,
                max_failures=args.max_failures, resume=True, ship_code=ship_code,
            )
    return cfg, plan


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_presets:
        print("\n".join(list_presets()))
        return 0
    from tune.ray_train import run_ray_train

    try:
        check_writable_folder(args.storage, "--storage")
        cfg, plan = _resolve(args)
        if args.dry_run:
            check_data_paths(cfg)
    except BadInput as err:
        return bad_input(err)
    if args.dry_run:
        print(json.dumps({"config": cfg.to_dict(), "launch": plan.describe()}, indent=2))
        return 0

    import ray.train

    try:
        summary = run_ray_train(cfg, plan=plan)
    except BadInput as err:
        return bad_input(err)
    except ray.train.TrainingFailedError as err:
        print(f"error: the run failed after {plan.max_failures} restart(s): {err}\n"
              f"its checkpoints are in {plan.experiment_path}; continue with --resume --name {plan.name} "
              f"--storage {plan.storage}", file=sys.stderr)
        return 1
    keys = ("status", "step", "fd", "fd_2step", "kid", "best_fd", "wall_s")
    print(json.dumps({k: summary.get(k) for k in keys}, default=str))
    print(f"run folder:  {summary['run_uri'] or summary['run_dir']}  (config.json, metrics.jsonl, evals.jsonl, "
          "samples/, summary.json, workers.jsonl)\n"
          f"checkpoints: {summary['experiment_path']}  (latest {cfg.train.keep_checkpoints}; newest "
          f"{summary['checkpoint_path']})\n"
          f"continue:    {command('ict-train-ray', shlex.quote(str(Path(__file__).resolve())))} --resume --name {plan.name} --storage {plan.storage} "
          "[--set train.total_steps=...]")
    return 0 if summary.get("status") == COMPLETED else 1


if __name__ == "__main__":
    sys.exit(main())
