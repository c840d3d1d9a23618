"""Command line: `python -m ict_core.train --preset digits --set train.total_steps=500 [--dry-run]`.

Configuration comes from the defaults in config.py, then the preset YAML, then each --set key=value.
A bad key or value prints the ConfigError message and exits with code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from .config import ConfigError, from_dict, list_presets, load_config

EXIT_CONFIG_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ict_core.train",
        description="Train a consistency model (iCT) or a diffusion baseline on one device.",
    )
    parser.add_argument("--preset", default="digits", help="preset name in ict_core/presets or a path to a .yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one dotted config key, e.g. --set loss.huber_c=0.03 (repeatable)")
    parser.add_argument("--out", default=None, help="run folder (default: runs/<preset>-<timestamp>)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR (or a checkpoint folder) from its newest checkpoint")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--format", choices=("yaml", "json"), default="yaml", help="format of --dry-run output")
    parser.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    return parser


def _resolve(args: argparse.Namespace):
    """(config, run_dir, resume_from) from the arguments."""
    if args.resume:
        from .trainer import latest_checkpoint

        try:
            ckpt = latest_checkpoint(args.resume)
        except FileNotFoundError as err:
            raise ConfigError(str(err)) from None
        run_dir = Path(args.out) if args.out else (ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent)
        saved = run_dir / "config.json"
        if not saved.exists():
            raise ConfigError(f"--resume {args.resume}: {saved} is missing, so the run's config is unknown")
        cfg = from_dict(json.loads(saved.read_text())).with_overrides(args.overrides)
        return cfg, run_dir, str(ckpt)
    cfg = load_config(args.preset, args.overrides)
    if args.out:
        run_dir = Path(args.out)
    else:
        stem = Path(args.preset).stem
        run_dir = Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg, run_dir, None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_presets:
        print("\n".join(list_presets()))
        return 0
    try:
        cfg, run_dir, resume_from = _resolve(args)
        if args.dry_run:
            tree = cfg.to_dict()
            if args.format == "json":
                print(json.dumps(tree, indent=2, sort_keys=True))
            else:
                print(yaml.safe_dump(tree, sort_keys=False), end="")
                if cfg.loss.huber_c is None:
                    print("# loss.huber_c: null is resolved at run time to 0.00054 * sqrt(C*H*W) of the data set")
            return 0
        from .trainer import train

        summary = train(cfg, run_dir=run_dir, resume_from=resume_from)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except ValueError as err:  # DataError and friends: a bad path or file, not a bug
        if type(err).__name__ != "DataError":
            raise
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    keys = ("status", "step", "fd", "fd_2step", "kid", "best_fd", "wall_s", "run_dir")
    from .trainer import _json_safe

    print(json.dumps(_json_safe({k: summary.get(k) for k in keys}), default=str))
    return 0 if summary.get("status") == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
