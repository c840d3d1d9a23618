"""Hyperparameter searches over iCT with Ray Tune + Optuna; results land in Parquet tables.

    python tune/search.py --space c_scaling --budget smoke
    python tune/search.py --space my_space.yaml --budget cpu --num-samples 20 --storage /data/results
    python tune/search.py --space c_scaling --budget smoke --resume      # after a crash or Ctrl-C
    python tune/search.py --space c_scaling --budget smoke --num-samples 6 --resume --extend   # search further
    python tune/search.py --space dropout --dry-run                     # print the plan, start nothing
    python tune/search.py --list-spaces

Each stratum of a space (e.g. one data set) is searched on its own, with its own searcher, scheduler and trial
budget, and all strata at the same time, sharing the machine or cluster. Results: EXPERIMENT_DIR/trials.parquet (one row per training run = one seed of one
configuration), evals.parquet (one row per evaluation), both built from the run folders, and experiment.json
(space, budget, plan and its hash, status, provenance). Every seed's run folder goes to
EXPERIMENT_DIR/runs/<stratum>/<trial_id>/seed_<seed>, Ray's own files to EXPERIMENT_DIR/ray/<stratum> (both under
the shared storage instead when one is given). With --storage s3://BUCKET/PREFIX all of it goes to the bucket
(tune/store.py), and --resume and analysis/report.py read it from there. Exit codes: 0 finished, 1 trials
errored (the first error is printed; --resume retries them), 2 bad input, 130 interrupted (--resume continues).
docs/ARCHITECTURE.md has the details.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from ict_core.cli import bad_input, command
from ict_core.errors import BadInput
from ict_core.config import parse_overrides
from ict_core.records import EVALS_FILE, INTERRUPTED, SEARCH_FAILED, TRIALS_FILE
from tune import REPO_ROOT
from tune.cluster import resolve_address
from tune.launch import DEFAULT_CLUSTER_FAILURES, DEFAULT_STORAGE, run_search
from tune.plan import (SearchError, check_max_failures, check_plan_paths, compute_lines, format_plan, plan_power,
                       resolve_plan, resources, total_line)
from tune.space import load_space
from tune.space_schema import BUDGETS, list_spaces
from tune.store import check_storage_option, is_uri, join

def print_summary(exp_dir: Path, metric: str, mode: str, location: str | None = None) -> None:
    """The end of a search: where its tables are (`location`: the URI of an experiment in storage) and the best
    configuration per stratum."""
    import pandas as pd

    from tune.progress import summary_lines

    trials = exp_dir / TRIALS_FILE
    where = location or str(exp_dir)
    if not trials.exists():  # interrupted before any run was recorded: point at nothing that is not there
        print(f"\nno run recorded yet in {where} ({TRIALS_FILE} is written when the first run ends)")
        return
    print(f"\ntrials: {join(where, TRIALS_FILE)}"
          + (f"\nevals:  {join(where, EVALS_FILE)}" if (exp_dir / EVALS_FILE).exists() else ""))
    code = f"import pandas as pd; print(pd.read_parquet({join(where, TRIALS_FILE)!r}))"
    print(f"read:   {shlex.quote(sys.executable)} -c {shlex.quote(code)}")
    for line in summary_lines(pd.read_parquet(trials), metric, mode):
        print(line)
    print(f"report: {command('ict-report', shlex.quote(str(REPO_ROOT / 'analysis' / 'report.py')))} "
          f"{shlex.quote(where)}")


# ---- CLI --------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", help="a shipped space name (see --list-spaces) or a path to a .yaml file")
    p.add_argument("--budget", default="smoke", help=f"one of {', '.join(BUDGETS)} (default smoke)")
    p.add_argument("--num-samples", type=int, help="configurations per stratum (default: the budget's)")
    p.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers per trial (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (default 0)")
    p.add_argument("--storage", default=os.environ.get("ICT_STORAGE") or DEFAULT_STORAGE,
                   help="where experiments go: a folder or a URI such as s3://BUCKET/PREFIX (then the tables, "
                        "run folders and Ray's state all go there; a resume reads them back from it) "
                        "(default $ICT_STORAGE when set, else ./results)")
    p.add_argument("--ray-storage", default=None,
                   help="the experiment's shared storage (run folders in runs/, Ray's state in ray/); must be seen "
                        "by every node, e.g. s3://BUCKET/ict/NAME (default: the experiment folder, or "
                        "$ICT_STORAGE/NAME when ICT_STORAGE is set)")
    p.add_argument("--name", help="experiment name (default <space>-<budget>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted experiment of the same name")
    p.add_argument("--extend", action="store_true",
                   help="with --resume: accept a changed plan (e.g. more --num-samples) and search the changed "
                        "strata further, telling the searcher what they already measured")
    p.add_argument("--ray-train", action="store_true",
                   help="run every trial's seeds through Ray Train, even with one CPU worker (the GPU path)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved plan and its compute (runs, steps, images, and the time a few real "
                        "training steps measured here give) and exit without Ray")
    p.add_argument("--no-timing", action="store_true", help="with --dry-run: count runs and images, time no steps")
    p.add_argument("--list-spaces", action="store_true", help="list the shipped spaces and exit")
    p.add_argument("--reuse", nargs="+", metavar="DIR",
                   help="experiment (or campaign) folders whose finished runs are copied, not trained again, "
                        "where a trial's run_key matches (tune/reuse.py); this experiment's own runs always are")
    p.add_argument("--pilot", nargs="+", metavar="DIR",
                   help="with --dry-run: earlier experiment folder(s) whose seed spread gives each claim's smallest "
                        "detectable effect (80%% power at seeds_max), e.g. docs/findings/cpu/weighting")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a dotted config override for every trial, e.g. --set data.path=/data/cifar (repeatable)")
    p.add_argument("--strata", help="comma-separated strata to run (default: all)")
    p.add_argument("--max-concurrent", type=int, help="concurrent trials (default: the space's)")
    p.add_argument("--address", help="Ray cluster address; 'local' starts a private local instance (default: "
                                     "RAY_ADDRESS, else the cluster running on this node, else a new local one)")
    p.add_argument("--max-failures", type=int, default=None,
                   help=f"retries of a failed trial (a lost node), each from its run folder's last checkpoint; -1 "
                        f"retries without limit (default: 0 on a new local instance, {DEFAULT_CLUSTER_FAILURES} on a "
                        f"cluster)")
    p.add_argument("--tracker", action="append", default=[], metavar="NAME",
                   help="also log every recorded run (full config, every evaluation metric) to mlflow or wandb "
                        "(repeatable; the mlflow / wandb extras); W&B runs offline unless WANDB_MODE is set")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for --tracker mlflow (default: a local SQLite store, "
                                          "EXPERIMENT_DIR/mlflow.db)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.list_spaces:
            for name in list_spaces():
                space = load_space(name)
                print(f"{name:<16} {space.question or space.description}")
            return 0
        if not args.space:
            raise SearchError("--space is required (a shipped name or a .yaml path); see --list-spaces")
        extra = parse_overrides(args.set)
        strata = [s for s in (args.strata or "").split(",") if s]
        check_storage_option(args.storage, "--storage", SearchError)
        from tune.trackers import check_trackers

        check_trackers(args.tracker, args.tracking_uri)
        check_max_failures(args.max_failures)
        if args.dry_run:
            plan = resolve_plan(args.space, args.budget, args.num_samples, extra, strata)
            check_plan_paths(plan)
            if args.max_concurrent:
                plan.max_concurrent = args.max_concurrent
            name = args.name or f"{plan.space}-{args.budget}"
            res = resources(plan, args.workers_per_trial, args.gpus_per_worker, None, args.ray_train)
            res["ray"] = "would use " + resolve_address(args.address).describe()
            exp_dir = None if is_uri(args.storage) else Path(args.storage).expanduser().resolve() / name
            print(format_plan(plan, res, join(args.storage, name) if exp_dir is None else exp_dir))
            lines, total = compute_lines(plan, res, {}, measure=not args.no_timing)
            print("\n".join(lines + [total_line(f"search: {len(plan.strata)} stratum(s)", total)]))
            print("\n".join(plan_power(plan, args.pilot, exp_dir)))
            return 0
        exp_dir = run_search(args.space, args.budget, args.num_samples, args.storage, args.name, args.resume,
                             args.workers_per_trial, args.gpus_per_worker, extra=extra, strata=strata,
                             address=args.address, max_concurrent=args.max_concurrent,
                             ray_storage=args.ray_storage, extend=args.extend, ray_train=args.ray_train,
                             reuse=args.reuse or (), trackers=args.tracker, tracking_uri=args.tracking_uri,
                             max_failures=args.max_failures)
    except BadInput as err:
        return bad_input(err)
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: {_resume_command(argv)}", file=sys.stderr)
        return 130
    plan = load_space(args.space)
    info = json.loads((exp_dir / "experiment.json").read_text())
    print_summary(exp_dir, plan.metric, plan.mode, info.get("experiment_dir"))
    if info.get("status") == INTERRUPTED:
        print(f"interrupted; continue with: {_resume_command(argv)}", file=sys.stderr)
        return 130
    if info.get("status") == SEARCH_FAILED:
        first = (info.get("first_error") or "unknown error").strip().splitlines()[0]
        print(f"error: trials errored in stratum(s) {', '.join(info.get('failed_strata', []))}; the first error:\n"
              f"  {first}\n(the whole traceback is in the error column of {join(str(info.get('experiment_dir') or exp_dir), TRIALS_FILE)}, the "
              f"trial's output in its runs/<stratum>/<trial_id>/stderr.log)\nfix it, then retry the errored trials "
              f"with: {_resume_command(argv)}", file=sys.stderr)
        return 1
    return 0


def _resume_command(argv) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in args:
        args.append("--resume")
    return f"{search_command()} " + " ".join(shlex.quote(a) for a in args)


def search_command() -> str:
    """ict-search as a printed hint gives it: a command that works from any folder (ict_core.cli.command)."""
    return command("ict-search", shlex.quote(str(REPO_ROOT / "tune" / "search.py")))


if __name__ == "__main__":
    sys.exit(main())
