"""Carry an unfinished campaign to another machine (or a later session on a fresh one) through the repository.

    python tune/carry.py pack results/campaign-cpu carried/cpu        # on the machine that ran it
    python tune/carry.py unpack carried/cpu results/campaign-cpu      # on the next one, from a clone
    python tune/campaign.py --budget cpu --resume ...                 # the finished searches are skipped

A campaign folder holds checkpoints, Ray's state (pickles that name this machine's folders) and logs: too big and
too local to commit. `pack` writes what a later `--resume` needs from every *finished* search: its tables
(trials.parquet, evals.parquet), Optuna journal, experiment.json, stratum ledgers, and each run's record (config,
provenance without the process's command line, metrics, evaluations, summary, reuse note and sample grids; not its
checkpoints), so that the report reads them and later searches reuse their runs (tune/reuse.py) instead of
training them again. The absolute paths of the campaign folder, the folder it lies in and the repository are
replaced by placeholders that `unpack` fills in with the new locations; a packed file that still names one of
them, the home folder or the temporary folder fails the pack, and so does a packed file that .gitignore would
leave out of a commit. Run `pack` from the clone that ran the campaign, so that its repository is the one
replaced. A search that was not finished is left behind and marked pending, so `--resume` starts it over; its
runs are lost (pack between searches to lose nothing), the wall time spent on it stays counted. campaign.json
keeps the sessions and commits, so the exported README still names every session that ran the campaign.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

if __name__ == "__main__" and __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ict_core import rundir
from ict_core.fileio import atomic_write_text
from tune import REPO_ROOT
from tune.findings import TEXT_SUFFIXES, copy_search_files
from tune.reuse import REUSED_FILE

STATE_FILE = "campaign.json"  # tune/campaign.py's state file
RECORD_FILES = (rundir.CONFIG, rundir.PROVENANCE, rundir.METRICS, rundir.EVALS, rundir.SUMMARY, REUSED_FILE)
# Placeholders for this machine's absolute paths in packed files, the longest path first when nested.
CAMPAIGN_TOKEN = "{carried-campaign}"  # the campaign folder
STORAGE_TOKEN = "{carried-storage}"  # the folder it lies in (--storage)
REPO_TOKEN = "{carried-repo}"  # the repository that ran it
CARRY_NOTE = "CARRIED.md"
TEXT = TEXT_SUFFIXES | {".jsonl"}  # metrics.jsonl and evals.jsonl are text too
# A path counts only as a whole path: followed by a separator, a quote, a space, punctuation or the end.
_END = r"""([/\\"'\s,;:)\]}]|$)"""  # kept by the replacement as group 1 (pyarrow's RE2 has no lookahead)


class CarryError(RuntimeError):
    pass


def _pairs(campaign_dir: Path) -> list[tuple[str, str]]:
    """(absolute path, token), longest first, so a path inside another gets its own token."""
    pairs = {}
    for token, path in ((CAMPAIGN_TOKEN, campaign_dir), (STORAGE_TOKEN, campaign_dir.parent), (REPO_TOKEN, REPO_ROOT)):
        for form in (path, path.resolve()):
            if str(form) not in ("/", "") and str(form) not in pairs:
                pairs[str(form)] = token
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def _scrub(text: str, pairs) -> str:
    for old, new in pairs:
        text = re.sub(re.escape(old) + _END, lambda m, new=new: new + m.group(1), text)
    return text


def _scrub_parquet(src: Path, dest: Path, pairs) -> None:
    table = pq.read_table(src)
    columns = []
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            for old, new in pairs:
                column = pc.replace_substring_regex(column, re.escape(old) + _END, new.replace("\\", "\\\\") + "\\1")
        columns.append(column)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    pq.write_table(pa.Table.from_arrays(columns, schema=table.schema), tmp)
    os.replace(tmp, dest)


def _without_argv(text: str) -> str:
    """A provenance record (a run's provenance.json, experiment.json's "provenance") without the command line of
    the process that wrote it: a Ray worker's names this machine's sockets and addresses."""
    record = json.loads(text)
    record.pop("argv", None)
    if isinstance(record.get("provenance"), dict):
        record["provenance"].pop("argv", None)
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


def _copy_file(src: Path, dest: Path, pairs) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix == ".parquet":
        _scrub_parquet(src, dest, pairs)
    elif src.suffix in TEXT:
        text = src.read_text()
        if src.name in (rundir.PROVENANCE, "experiment.json"):
            text = _without_argv(text)
        atomic_write_text(dest, _scrub(text, pairs))
    else:
        shutil.copyfile(src, dest)


def _machine_paths(campaign_dir: Path) -> list[str]:
    """Absolute paths no packed file may name: the campaign's, its storage's, the repository's, the home and
    temporary folders."""
    paths = {str(p) for p in (campaign_dir, campaign_dir.parent, REPO_ROOT, Path.home(), Path(tempfile.gettempdir()))}
    paths |= {str(Path(p).resolve()) for p in list(paths)}
    return sorted(p for p in paths if p not in ("/", ""))


def _leaks(folder: Path, paths: list[str]) -> list[str]:
    """Packed files (text, and Parquet string columns) that still name one of `paths`."""
    bad = []
    patterns = [(p, re.compile(re.escape(p) + _END)) for p in paths]
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            text = "\n".join(str(v) for c in table.columns if pa.types.is_string(c.type) or
                             pa.types.is_large_string(c.type) for v in c.to_pylist() if v)
        elif path.suffix in TEXT:
            text = path.read_text(errors="replace")
        else:
            continue
        bad += [f"{path.relative_to(folder)} names {p}" for p, rx in patterns if rx.search(text)]
    return bad


def _git_ignored(staging: Path, dest: Path) -> list[str]:
    """Files packed in `staging` that, moved to `dest`, the repository's .gitignore would leave out of a commit
    (none when `dest` lies outside the repository)."""
    if REPO_ROOT not in dest.parents or not (REPO_ROOT / ".git").exists():
        return []
    files = [str((dest / p.relative_to(staging)).relative_to(REPO_ROOT)) for p in staging.rglob("*") if p.is_file()]
    try:
        out = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO_ROOT, input="\n".join(files),
                             capture_output=True, text=True, check=False)
    except OSError:  # no git on this machine: nothing to check against
        return []
    return out.stdout.split()


def _state(folder: Path) -> dict:
    path = folder / STATE_FILE
    if not path.is_file():
        raise CarryError(f"{folder} holds no {STATE_FILE}: give a campaign folder "
                         f"(tune/campaign.py's --storage/--name)")
    return json.loads(path.read_text())


def pack(campaign_dir, dest) -> dict:
    """Write the finished searches of `campaign_dir` into `dest` (replacing an earlier pack there); returns
    {"packed": [...], "left": [...], "runs": n}."""
    from tune.campaign import _experiment_finished

    campaign_dir, dest = Path(campaign_dir).absolute(), Path(dest).absolute()
    state = _state(campaign_dir)
    for inside in (campaign_dir, REPO_ROOT):
        if dest == inside or dest in inside.parents or (inside == campaign_dir and campaign_dir in dest.parents):
            raise CarryError(f"pack {dest}: would overwrite {inside}; give a new folder outside the campaign")
    if dest.exists() and not (dest / CARRY_NOTE).is_file():
        raise CarryError(f"pack {dest}: exists and was not written by pack ({CARRY_NOTE} missing); give a new folder")
    pairs = _pairs(campaign_dir)
    staging = dest.with_name(dest.name + ".packing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # A search whose experiment says finished is done even where the driver died before campaign.json said so.
    done = [n for n, e in state["searches"].items()
            if e.get("state") == "done" or _experiment_finished(campaign_dir / n)]
    left = [n for n in state["searches"] if n not in done]
    runs = 0
    for name in done:
        exp = campaign_dir / name
        copy_search_files(exp, staging / name, lambda src, dest: _copy_file(src, dest, pairs))
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
    for name in done:
        carried["searches"][name]["state"] = "done"
    for name in left:  # started over by --resume; the wall time already spent on them stays counted
        entry = carried["searches"][name]
        carried["searches"][name] = {**{k: entry[k] for k in ("experiment", "started", "wall_s") if k in entry},
                                     "state": "pending"}
    carried.pop("finished", None)
    carried.pop("report", None)
    atomic_write_text(staging / STATE_FILE, _scrub(json.dumps(carried, indent=2, sort_keys=True) + "\n", pairs))
    atomic_write_text(staging / CARRY_NOTE, _note(state, done, left, runs))
    problems = _leaks(staging, _machine_paths(campaign_dir))
    if problems:
        shutil.rmtree(staging, ignore_errors=True)
        raise CarryError("pack: packed files still name this machine's folders: " + "; ".join(problems[:5]))
    ignored = _git_ignored(staging, dest)
    if ignored:
        shutil.rmtree(staging, ignore_errors=True)
        raise CarryError(f"pack: .gitignore would leave {len(ignored)} packed file(s) out of a commit, e.g. "
                         f"{ignored[0]}; pack into a folder the repository keeps")
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
        raise CarryError(f"unpack {src}: not a folder written by `tune/carry.py pack` "
                         f"(no {STATE_FILE} and {CARRY_NOTE})")
    if campaign_dir.exists():
        raise CarryError(f"unpack: {campaign_dir} exists; unpack into a new folder (a campaign there would be mixed "
                         f"with the carried one)")
    back = [(CAMPAIGN_TOKEN, str(campaign_dir)), (STORAGE_TOKEN, str(campaign_dir.parent)),
            (REPO_TOKEN, str(REPO_ROOT))]
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
