"""Carry an unfinished campaign to another machine (or a later session on a fresh one) through the repository.

    python tune/carry.py pack results/campaign-cpu carried/cpu        # on the machine that ran it
    python tune/carry.py unpack carried/cpu results/campaign-cpu      # on the next one, from a clone
    python tune/campaign.py --budget cpu --resume ...                 # the finished searches are skipped

A campaign folder holds checkpoints, Ray's state (pickles that name this machine's folders) and logs: too big and
too local to commit. `pack` writes what a later `--resume` needs from every *finished* search: its tables
(trials.parquet, evals.parquet), Optuna journal, experiment.json, stratum ledgers, and each run's record (config,
provenance without the worker's command line, metrics, evaluations, summary, reuse note and sample grids;
not its checkpoints), so that the report reads them and later searches reuse their runs (tune/reuse.py) instead of
training them again. The campaign folder's and the repository's absolute paths are replaced by placeholders that
`unpack` fills in with the new locations; a packed file that still names either fails the pack. Run `pack` from the
clone that ran the campaign, so that its repository is the one scrubbed. A search that was not finished is left behind and marked pending, so `--resume`
starts it over; its runs are lost (pack between searches to lose nothing). campaign.json keeps the sessions, wall
times and commits, so the exported README still names every session that ran the campaign.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ict_core import rundir
from ict_core.fileio import atomic_write_text
from tune import REPO_ROOT
from tune.findings import EXPERIMENT_FILES, TEXT_SUFFIXES, _copy, _scrub_text
from tune.reuse import REUSED_FILE

STATE_FILE = "campaign.json"  # tune/campaign.py's state file
RECORD_FILES = (rundir.CONFIG, rundir.PROVENANCE, rundir.METRICS, rundir.EVALS, rundir.SUMMARY, REUSED_FILE)
CAMPAIGN_TOKEN = "{carried-campaign}"  # stands for the campaign folder's absolute path in packed files
REPO_TOKEN = "{carried-repo}"  # ... and for the repository's
CARRY_NOTE = "CARRIED.md"


TEXT = TEXT_SUFFIXES | {".jsonl"}  # metrics.jsonl and evals.jsonl are text too


class CarryError(RuntimeError):
    pass


def _copy_file(src: Path, dest: Path, pairs) -> None:
    if src.name == rundir.PROVENANCE:  # without the Ray worker's command line: it names this machine's sockets
        record = json.loads(src.read_text())
        record.pop("argv", None)
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(dest, _scrub_text(json.dumps(record, indent=2, sort_keys=True) + "\n", pairs))
    elif src.suffix == ".jsonl":
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(dest, _scrub_text(src.read_text(), pairs))
    else:
        _copy(src, dest, pairs)


def _leaks(folder: Path, pairs) -> list[str]:
    """Packed text files that still name an absolute path of this machine."""
    bad = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in TEXT:
            text = path.read_text(errors="replace")
            bad += [f"{path.relative_to(folder)} names {old}" for old, _ in pairs if old in text]
    return bad


def _pairs(campaign_dir: Path) -> list[tuple[str, str]]:
    """(absolute path, token), the campaign folder before the repository (it may lie inside it)."""
    pairs = []
    for path in dict.fromkeys([campaign_dir, campaign_dir.resolve()]):
        pairs.append((str(path), CAMPAIGN_TOKEN))
    for path in dict.fromkeys([REPO_ROOT, REPO_ROOT.resolve()]):
        pairs.append((str(path), REPO_TOKEN))
    return pairs


def _state(folder: Path) -> dict:
    path = folder / STATE_FILE
    if not path.is_file():
        raise CarryError(f"{folder} holds no {STATE_FILE}: give a campaign folder (tune/campaign.py's --storage/--name)")
    return json.loads(path.read_text())


def pack(campaign_dir, dest) -> dict:
    """Write the finished searches of `campaign_dir` into `dest` (replaced); returns {"packed": [...], "left": [...],
    "runs": n}."""
    campaign_dir, dest = Path(campaign_dir).absolute(), Path(dest).absolute()
    state = _state(campaign_dir)
    if dest == campaign_dir or campaign_dir in dest.parents:
        raise CarryError(f"pack {dest}: must lie outside the campaign folder {campaign_dir}")
    pairs = _pairs(campaign_dir)
    staging = dest.with_name(dest.name + ".packing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    done = [n for n, e in state["searches"].items() if e.get("state") == "done"]
    left = [n for n in state["searches"] if n not in done]
    runs = 0
    for name in done:
        exp = campaign_dir / name
        for fname in EXPERIMENT_FILES:
            if (exp / fname).exists():
                _copy_file(exp / fname, staging / name / fname, pairs)
        for ledger in sorted((exp / "strata").glob("*.json")):
            _copy_file(ledger, staging / name / "strata" / ledger.name, pairs)
        for summary in sorted((exp / "runs").rglob(rundir.SUMMARY)):
            seed_dir = summary.parent
            if rundir.CHECKPOINTS in seed_dir.relative_to(exp).parts:
                continue
            rel = seed_dir.relative_to(exp)
            for fname in RECORD_FILES:
                if (seed_dir / fname).is_file():
                    _copy_file(seed_dir / fname, staging / name / rel / fname, pairs)
            for png in sorted((seed_dir / rundir.SAMPLES).glob("*.png")):
                _copy_file(png, staging / name / rel / rundir.SAMPLES / png.name, pairs)
            runs += 1
    carried = json.loads(json.dumps(state))
    for name in left:  # started over by --resume: the runs behind them are not carried
        carried["searches"][name] = {"state": "pending", "wall_s": 0.0}
    carried.pop("finished", None)
    carried.pop("report", None)
    atomic_write_text(staging / STATE_FILE, _scrub_text(json.dumps(carried, indent=2, sort_keys=True) + "\n", pairs))
    atomic_write_text(staging / CARRY_NOTE, _note(state, done, left, runs))
    leaks = _leaks(staging, pairs)
    if leaks:
        shutil.rmtree(staging, ignore_errors=True)
        raise CarryError("pack: packed files still name this machine's folders: " + "; ".join(leaks[:5]))
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(staging, dest)
    return {"packed": done, "left": left, "runs": runs}


def _note(state: dict, done: list[str], left: list[str], runs: int) -> str:
    commits = [s.get("git_commit") for s in state.get("sessions", []) if s.get("git_commit")]
    return "\n".join([
        f"# An unfinished `{state['budget']}` campaign, carried by `tune/carry.py pack`\n",
        "Not findings: the finished searches of a campaign still running, so that a later session or machine can "
        "resume it. Written by `tune/carry.py pack`; no file here is edited by hand.\n",
        f"- finished and carried: {', '.join(done) or 'none'} ({runs} run records, no checkpoints)",
        f"- still to run (started over by `--resume`): {', '.join(left) or 'none'}",
        f"- commits that ran it so far: {', '.join(f'`{c}`' for c in dict.fromkeys(commits)) or 'unknown'}\n",
        "To continue, from a clone of the repository:\n",
        "    python tune/carry.py unpack <this folder> results/campaign-" + state["budget"],
        f"    python tune/campaign.py --budget {state['budget']} --resume --export docs/findings/{state['budget']}\n",
    ])


def unpack(src, campaign_dir) -> dict:
    """Restore a packed campaign into `campaign_dir` (which must not exist yet); returns its campaign.json."""
    src, campaign_dir = Path(src).absolute(), Path(campaign_dir).absolute()
    if not (src / STATE_FILE).is_file() or not (src / CARRY_NOTE).is_file():
        raise CarryError(f"unpack {src}: not a folder written by `tune/carry.py pack` (no {STATE_FILE} and {CARRY_NOTE})")
    if campaign_dir.exists():
        raise CarryError(f"unpack: {campaign_dir} exists; unpack into a new folder (a campaign there would be mixed "
                         f"with the carried one)")
    back = [(CAMPAIGN_TOKEN, str(campaign_dir)), (REPO_TOKEN, str(REPO_ROOT))]
    staging = campaign_dir.with_name(campaign_dir.name + ".unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    for path in sorted(src.rglob("*")):
        if path.is_file() and path.name != CARRY_NOTE:
            _copy_file(path, staging / path.relative_to(src), back)
    os.replace(staging, campaign_dir)
    return json.loads((campaign_dir / STATE_FILE).read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="write a campaign's finished searches into a folder meant for the repository")
    a.add_argument("campaign", help="the campaign folder (e.g. results/campaign-cpu)")
    a.add_argument("dest", help="the folder to write (replaced)")
    b = sub.add_parser("unpack", help="restore a packed campaign into a new campaign folder")
    b.add_argument("src", help="a folder written by pack")
    b.add_argument("campaign", help="the campaign folder to create (e.g. results/campaign-cpu)")
    args = p.parse_args(argv)
    try:
        if args.command == "pack":
            out = pack(args.campaign, args.dest)
            print(f"packed {', '.join(out['packed']) or 'no finished search'} ({out['runs']} runs) into {args.dest}; "
                  f"left to run: {', '.join(out['left']) or 'none'}")
        else:
            state = unpack(args.src, args.campaign)
            todo = [n for n, e in state["searches"].items() if e.get("state") != "done"]
            print(f"unpacked into {args.campaign}; continue with: python tune/campaign.py --budget "
                  f"{state['budget']} --resume (searches to run: {', '.join(todo) or 'none'})")
    except CarryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
