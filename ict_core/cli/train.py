"""Command line: `python -m ict_core.train --preset digits --set train.total_steps=500 [--dry-run]`.

Configuration comes from the defaults in ict_core/config/schema.py, then the preset YAML, then each --set key=value.
A bad key or value prints the ConfigError message and exits with code 2; so does an --out folder that already
holds a run (continue it with --resume instead). Ctrl-C (SIGINT) or SIGTERM stops after the current step with a
checkpoint and exits with 130 or 143; every run ends by printing where its samples and checkpoints are and the
command that continues it.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import textwrap
import time
from pathlib import Path

import yaml

from . import bad_input, check_data_paths, command
from ..errors import BadInput
from ..config import ConfigError, from_dict, list_presets, load_config, preset_description, resolve_config
from ..datasets import dataset_dim
from ..rundir import RUN_FILES

EXIT_ON_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal number, as a shell reports a killed job


def train_command() -> str:
    """ict-train as a hint prints it: a command that works from any folder (cli.command)."""
    return command("ict-train", "-m ict_core.train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ict_core.train",
        description="Train a consistency model (iCT) or a diffusion baseline on one device.",
    )
    parser.add_argument("--preset", default="digits", help="preset name in ict_core/presets or a path to a .yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one dotted config key, e.g. --set loss.huber_c=0.03 (repeatable)")
    parser.add_argument("--out", default=None,
                        help="new run folder (default: runs/<preset>-<timestamp>); one that holds a run is refused")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR (or a checkpoint folder) from its newest checkpoint")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--format", choices=("yaml", "json"), default="yaml", help="format of --dry-run output")
    parser.add_argument("--list-presets", action="store_true", help="list the presets with what each is for, and exit")
    return parser


def run_files(path: Path) -> list[str]:
    """The run files that `path` already holds (empty if it is no run folder)."""
    return [name for name in RUN_FILES if (path / name).exists()] if path.is_dir() else []


def _refuse_existing(run_dir: Path, flag: str) -> None:
    found = run_files(run_dir)
    if found:
        raise ConfigError(
            f"{flag} {run_dir} already holds a run ({', '.join(found)}); writing a new run there would mix its logs, "
            f"samples and checkpoints with the old ones. Continue that run with --resume {shlex.quote(str(run_dir))}, "
            f"or choose another --out folder"
        )


def _resolve(args: argparse.Namespace):
    """(config, run_dir, resume_from) from the arguments."""
    if args.resume:
        from ..rundir import CONFIG, latest_checkpoint, run_dir_of

        source = Path(args.resume).expanduser()
        if not source.exists():
            raise ConfigError(f"--resume {args.resume}: no such folder; give a run folder (the one printed at the end "
                              f"of a run, e.g. runs/digits-20261126-101500) or one of its checkpoints/step_* folders")
        if not source.is_dir():
            raise ConfigError(f"--resume {args.resume} is a file; give a run folder or one of its checkpoints/step_* folders")
        try:
            ckpt = latest_checkpoint(source)
        except FileNotFoundError as err:
            raise ConfigError(str(err).replace("resume_from=", "--resume ")) from None
        source_run = run_dir_of(ckpt)
        saved = source_run / CONFIG
        if not saved.exists():
            raise ConfigError(f"--resume {args.resume}: {saved} is missing, so the run's config is unknown")
        run_dir = source_run
        if args.out and Path(args.out).resolve() != source_run.resolve():
            run_dir = Path(args.out)
            _refuse_existing(run_dir, "--out")
        cfg = from_dict(json.loads(saved.read_text())).with_overrides(args.overrides)
        return cfg, run_dir, str(ckpt)
    cfg = load_config(args.preset, args.overrides)
    if args.out:
        run_dir = Path(args.out)
    else:
        stem = Path(args.preset).stem
        run_dir = Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    _refuse_existing(run_dir, "--out" if args.out else "the run folder")
    return cfg, run_dir, None


def _describe_presets() -> str:
    names = list_presets()
    width = max(map(len, names))
    lines = [textwrap.fill(f"{name:<{width}}  {preset_description(name)}", 110, subsequent_indent=" " * (width + 2))
             for name in names]
    return "\n".join(lines) + f"\n\nuse one with --preset NAME (or --preset path/to/file.yaml); {train_command()} --preset NAME --dry-run shows all its values"


def _newest(paths) -> Path | None:
    paths = sorted(paths)
    return paths[-1] if paths else None


def _fmt(value, spec: str = ".4g") -> str:
    return "n/a" if not isinstance(value, (int, float)) or value != value else format(value, spec)


def end_message(summary: dict) -> str:
    """What a person needs when a run ends: how it ended, where its samples and checkpoints are, how to go on."""
    from ..records import COMPLETED, DIVERGED, INTERRUPTED  # here, not at the top: pyarrow slows --help
    from ..rundir import latest_checkpoint

    run_dir = Path(summary["run_dir"])
    quoted = shlex.quote(str(run_dir))
    status, step = summary.get("status"), summary.get("step")
    total = summary.get("total_steps")
    if status == INTERRUPTED:
        head = f"[ict] interrupted by {summary.get('signal', 'a signal')} at step {step}/{total}"
    elif status == DIVERGED:
        head = f"[ict] diverged at step {step}/{total}: the loss became non-finite"
    else:
        head = (f"[ict] {status} {step} steps in {_fmt(summary.get('wall_s'), '.0f')} s: fd {_fmt(summary.get('fd'))}, "
                f"fd_2step {_fmt(summary.get('fd_2step'))}, kid(x1e3) {_fmt(summary.get('kid'))}, "
                f"best fd {_fmt(summary.get('best_fd'))}")
    samples = _newest((run_dir / "samples").glob("step_*.png"))
    try:
        checkpoint = latest_checkpoint(run_dir)
    except FileNotFoundError:
        checkpoint = None
    rows = [("samples", str(samples) if samples else "none (a grid is written at each evaluation when eval.grid is true)"),
            ("checkpoint", str(checkpoint) if checkpoint else "none"),
            ("summary", str(run_dir / "summary.json"))]
    if (run_dir / "tensorboard").is_dir():
        rows.append(("tensorboard", f"{command('tensorboard')} --logdir {quoted}"))
    train_cmd = train_command()
    if status == INTERRUPTED:
        rows.append(("resume", f"{train_cmd} --resume {quoted}"))
    elif status == DIVERGED and checkpoint is not None:
        rows.append(("retry", f"{train_cmd} --resume {shlex.quote(str(checkpoint))} --set optim.lr=<lower>"))
    elif status == COMPLETED and isinstance(total, int):
        # The curriculum keeps its K on such a resume (config.keep_schedule): the run trains on at its final N(k).
        rows.append(("train longer", f"{train_cmd} --resume {quoted} --set train.total_steps={2 * total}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join([head] + [f"  {name:<{width}}  {value}" for name, value in rows])


def _resolved_note(cfg) -> str:
    """YAML comment lines naming the values a null key resolves to at run time (config.resolve_config)."""
    resolved = resolve_config(cfg)
    dataset, dim = dataset_dim(cfg.data.name, cfg.data.resolution)
    own = f"loss.objective={cfg.loss.objective}'s own"
    why = {"loss.huber_c": f"0.00054 * sqrt(d), d = C*H*W = {dim} ({dataset})", "loss.p_mean": own, "loss.p_std": own}
    given, final = cfg.flat(), resolved.flat()
    lines = [f"#   {key}: {final[key]!r}  ({why.get(key, 'derived')})" for key in final if given[key] != final[key]]
    return "".join(f"{line}\n" for line in ["# null keys resolve at run time to:"] + lines) if lines else ""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_presets:
        print(_describe_presets())
        return 0
    run_dir = None
    try:
        cfg, run_dir, resume_from = _resolve(args)
        if args.dry_run:
            check_data_paths(cfg)
            tree = cfg.to_dict()
            if args.format == "json":
                print(json.dumps(tree, indent=2, sort_keys=True))
            else:
                print(yaml.safe_dump(tree, sort_keys=False), end="")
                print(_resolved_note(cfg), end="")
            return 0
        from ..trainer import train

        summary = train(cfg, run_dir=run_dir, resume_from=resume_from, handle_signals=True)
    except BadInput as err:  # ConfigError, DataError, a missing file: not a bug
        return bad_input(err)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        hint = ""
        if run_dir is not None and (Path(run_dir) / "checkpoints").is_dir() and any((Path(run_dir) / "checkpoints").glob("step_*")):
            hint = f"; continue from its newest checkpoint with {train_command()} --resume {shlex.quote(str(run_dir))}"
        print(f"\n[ict] interrupted before a checkpoint of the current step was written{hint}", file=sys.stderr)
        return EXIT_ON_SIGNAL["SIGINT"]
    from ..records import COMPLETED, INTERRUPTED
    from ..rundir import json_safe

    keys = ("status", "step", "fd", "fd_2step", "kid", "best_fd", "wall_s", "run_dir")
    print(json.dumps(json_safe({k: summary.get(k) for k in keys}), default=str))
    print(end_message(summary), flush=True)
    if summary.get("status") == INTERRUPTED:
        return EXIT_ON_SIGNAL.get(summary.get("signal"), 1)
    return 0 if summary.get("status") == COMPLETED else 1


def cli() -> int:
    """The ict-train command: main() with a late Ctrl-C reported as an interrupt, not a traceback."""
    try:
        return main()
    except KeyboardInterrupt:  # a Ctrl-C after training returned, while the end message was printed
        print("\n[ict] interrupted", file=sys.stderr)
        return EXIT_ON_SIGNAL["SIGINT"]


if __name__ == "__main__":
    sys.exit(cli())
