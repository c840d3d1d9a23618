"""Budget pilot: final FD against training steps, to choose a budget's steps from where the curve flattens.

    python tune/budget_pilot.py --budget cpu --datasets digits,patches-8,patches-16 --steps 400,800,1600,3200 \
        --seeds 3 --out docs/findings/cpu/pilot [--set key=value ...]

For every data set, step count and seed it trains one run of the budget's preset (tune/budgets/<budget>.yaml)
with train.total_steps set to that count (so the curriculum and the EMA ramp follow that run length, as they would
in a search at that budget) and one evaluation at its end. It writes OUT/pilot.csv (one row per run: fd, fd_se,
fd_student, wall seconds, the commit that trained it), OUT/curves.csv (per data set and step count: mean fd over
seeds, its standard error, and the gain of the last doubling), OUT/curves.png (the curves) and OUT/README.md (the
command and commit that wrote them, the commits that trained their runs, the table, and per data set whether the
curve has flattened). Runs already in pilot.csv are skipped, so an interrupted pilot continues where it stopped;
--no-train only rewrites the outputs from the runs already in pilot.csv and lists the planned runs still missing.

"Flattened" (issue 22): going from the second-largest to the largest step count improves the mean final FD by
less than the standard error of that difference, or by less than 10%.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import subprocess
import sys
from collections import Counter
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ict_core.cli import bad_input  # noqa: E402
from ict_core.errors import BadInput  # noqa: E402
from ict_core.config import ConfigError, load_config  # noqa: E402
from ict_core import datasets  # noqa: E402
from ict_core.fileio import atomic_write_text  # noqa: E402

BUDGET_DIR = Path(__file__).parent / "budgets"
FIELDS = ("dataset", "steps", "seed", "fd", "fd_se", "fd_student", "wall_s", "commit")
NOT_RECORDED = "not recorded"  # the commit of a run from a pilot.csv written before runs recorded theirs
FLAT_RELATIVE = 0.10  # a last doubling that gains less than this share of FD counts as flat


def dataset_overrides(key: str) -> list[str]:
    """`digits`, `patches-16`, `patches_grey-8` -> data.* overrides; an unknown name is a one-line error."""
    name, _, res = key.rpartition("-") if "-" in key else (key, "", "")
    try:
        datasets.spec(name)
    except ValueError as err:
        raise BadInput(f"--datasets {key!r}: {err}") from None
    out = [f"data.name={name}"]
    if res:
        if not res.isdigit():
            raise BadInput(f"--datasets {key!r}: the part after '-' must be a resolution in pixels, got {res!r}")
        out.append(f"data.resolution={res}")
    return out


def run_config(budget: str, key: str, steps: int, seed: int, extra: list[str]):
    overrides = dataset_overrides(key) + [f"train.total_steps={steps}", f"eval.every={steps}", f"train.seed={seed}",
                                          "eval.grid=false"] + list(extra)
    try:
        return load_config(str(BUDGET_DIR / f"{budget}.yaml"), overrides)
    except ConfigError as err:
        raise BadInput(f"{key} at {steps} steps: {err}") from None


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [{k: (r.get(k) or NOT_RECORDED if k == "commit" else r[k] if k == "dataset" else float(r[k]))
                 for k in FIELDS} for r in csv.DictReader(handle)]


def write_rows(path: Path, rows: list[dict]) -> None:
    """pilot.csv from `rows`, replaced in one step (an interrupted write leaves the old file)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def curves(rows: list[dict]) -> list[dict]:
    """Per data set and step count: seeds, mean fd, its standard error over seeds, and (from the second step count
    on) the gain over the previous count with that gain's standard error, its share of FD and `flat`."""
    out = []
    for key in dict.fromkeys(r["dataset"] for r in rows):
        previous = None
        for steps in sorted({r["steps"] for r in rows if r["dataset"] == key}):
            fds = [r["fd"] for r in rows if r["dataset"] == key and r["steps"] == steps]
            mean = sum(fds) / len(fds)
            se = (math.sqrt(sum((x - mean) ** 2 for x in fds) / (len(fds) - 1) / len(fds)) if len(fds) > 1
                  else float("nan"))
            row = {"dataset": key, "steps": int(steps), "seeds": len(fds), "fd_mean": mean, "fd_se_seeds": se,
                   "gain": float("nan"), "gain_se": float("nan"), "gain_share": float("nan"), "flat": ""}
            if previous is not None:
                gain = previous["fd_mean"] - mean
                gain_se = math.hypot(previous["fd_se_seeds"], se)
                row.update(gain=gain, gain_se=gain_se, gain_share=gain / previous["fd_mean"],
                           flat=bool(gain < gain_se or gain < FLAT_RELATIVE * previous["fd_mean"]))
            out.append(row)
            previous = row
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == key]
        ax.errorbar([r["steps"] for r in mine], [r["fd_mean"] for r in mine],
                    yerr=[0 if math.isnan(r["fd_se_seeds"]) else r["fd_se_seeds"] for r in mine],
                    marker="o", capsize=3, label=key)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("training steps (train.total_steps)")
    ax.set_ylabel("final FD (mean over seeds, +- se)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def commit_text() -> str:
    """The checkout's commit, "<sha> with local changes" when tracked files differ from it."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" with local changes" if dirty else "")


def provenance(rows: list[dict]) -> str:
    """Which commits trained the runs: a resumed pilot (or --no-train) reuses runs an earlier commit trained, so
    the README names each run's own commit, not only the one that wrote it."""
    counts = Counter(r.get("commit") or NOT_RECORDED for r in rows)
    return "; ".join(f"{n} run{'s' if n != 1 else ''} at commit `{c}`" if c != NOT_RECORDED
                     else f"{n} run{'s' if n != 1 else ''} whose commit was not recorded" for c, n in counts.items())


def write_outputs(out: Path, rows: list[dict], command: str, missing=()) -> list[dict]:
    table = curves(rows)
    with open(out / "curves.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]) if table else ["dataset"])
        writer.writeheader()
        writer.writerows(table)
    if table:
        plot(table, out / "curves.png")
    lines = ["# Budget pilot: final FD against training steps", "",
             f"Written by `{command}` at commit `{commit_text()}` (tune/budget_pilot.py). Trained: {provenance(rows)}"
             " (a pilot resumes from pilot.csv, so its runs may come from earlier commits).", "",
             "| data set | steps | seeds | mean FD | se (seeds) | gain of the last doubling | share | flat |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table:
        gain = "" if math.isnan(r["gain"]) else f"{r['gain']:.1f} +- {r['gain_se']:.1f}"
        share = "" if math.isnan(r["gain_share"]) else f"{100 * r['gain_share']:.0f}%"
        lines.append(f"| {r['dataset']} | {r['steps']} | {r['seeds']} | {r['fd_mean']:.1f} | {r['fd_se_seeds']:.1f} "
                     f"| {gain} | {share} | {r['flat']} |")
    lines += ["", "flat: the doubling to this step count gained less than its standard error or less than "
              f"{FLAT_RELATIVE:.0%} of FD (issue 22's rule). ![curves](curves.png)", ""]
    if missing:
        lines += ["Planned runs not yet trained (run the command without --no-train to add them): "
                  + ", ".join(f"{k} {s} steps seed {seed}" for k, s, seed in missing) + ".", ""]
    (out / "README.md").write_text("\n".join(lines))
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", default="cpu", help="preset tune/budgets/<budget>.yaml (default cpu)")
    p.add_argument("--datasets", default="digits,patches-8,patches-16", help="comma-separated, e.g. patches-16")
    p.add_argument("--steps", default="400,800,1600,3200", help="comma-separated train.total_steps values")
    p.add_argument("--seeds", type=int, default=3, help="runs per data set and step count (train.seed 0..N-1)")
    p.add_argument("--out", required=True, help="folder for pilot.csv, curves.csv, curves.png, README.md")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-train", action="store_true",
                   help="only rewrite curves.csv, curves.png and README.md from the runs in pilot.csv")
    args = p.parse_args(argv)
    try:
        if not (BUDGET_DIR / f"{args.budget}.yaml").is_file():
            raise BadInput(f"--budget {args.budget!r}: no tune/budgets/{args.budget}.yaml")
        try:
            steps = sorted({int(s) for s in args.steps.split(",")})
        except ValueError:
            raise BadInput(f"--steps {args.steps!r}: give comma-separated positive integers") from None
        if not steps or steps[0] < 1:
            raise BadInput(f"--steps {args.steps!r}: give comma-separated positive integers")
        if args.seeds < 2:
            raise BadInput(f"--seeds {args.seeds}: at least 2 (the flattening rule needs a standard error)")
        keys = [k for k in args.datasets.split(",") if k]
        plans = [(k, s, seed, run_config(args.budget, k, s, seed, args.overrides))
                 for k in keys for s in steps for seed in range(args.seeds)]  # every config checked up front
    except BadInput as err:
        return bad_input(err)
    from ict_core.trainer import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "pilot.csv"
    rows = read_rows(path)
    done = {(r["dataset"], int(r["steps"]), int(r["seed"])) for r in rows}
    command = "python tune/budget_pilot.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for key, s, seed, cfg in plans:
        if (key, s, seed) in done or args.no_train:
            continue
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="budget-pilot-") as run_dir:
            summary = train(cfg, run_dir=run_dir)
        row = {"dataset": key, "steps": s, "seed": seed, "fd": summary["fd"], "fd_se": summary["fd_se"],
               "fd_student": summary.get("fd_student", float("nan")), "wall_s": time.perf_counter() - started,
               "commit": commit_text()}
        rows.append(row)
        write_rows(path, rows)  # whole, so a pilot.csv from before the commit column gets that column too
        print(f"{key} steps={s} seed={seed}: fd={row['fd']:.2f} +- {row['fd_se']:.2f} ({row['wall_s']:.0f} s)",
              flush=True)
    wanted = {(k, s) for k in keys for s in steps}
    missing = [(k, s, seed) for k, s, seed, _ in plans
               if (k, s, seed) not in {(r["dataset"], int(r["steps"]), int(r["seed"])) for r in rows}]
    table = write_outputs(out, [r for r in rows if (r["dataset"], int(r["steps"])) in wanted], command, missing)
    for r in table:
        print(f"{r['dataset']} {r['steps']}: fd {r['fd_mean']:.1f} +- {r['fd_se_seeds']:.1f}"
              + (f", flat={r['flat']}" if r["flat"] != "" else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
