"""A campaign: several search spaces at one budget, one after the other, resumable, ending with one report.

    python tune/campaign.py --budget cpu                                   # every shipped space
    python tune/campaign.py --budget cpu --spaces c_scaling,dropout --dry-run
    python tune/campaign.py --budget cpu --resume                          # after a crash, a kill or Ctrl-C

Each space is one search (tune.launch.run_search) into CAMPAIGN_DIR/<space>; CAMPAIGN_DIR/campaign.json records
the campaign's settings and each space's state (pending, running, done) and wall time. --resume skips the spaces
that are done and resumes the unfinished one where its search stopped (searches resume trial by trial). When every
space is done, analysis/report.py writes CAMPAIGN_DIR/report/report.md over all of them. --export DIR then
copies the evidence (tables, journals, report, state) into DIR for the repository (tune/findings.py).

--dry-run prints every search's plan and an estimate of its compute on this machine: the runs, steps and images
it trains (an upper bound where ASHA stops runs early), and the hours they take, from a few real training steps
of each distinct configuration timed here at the thread count a trial gets. Nothing is started.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from ict_core.cli import bad_input, check_writable_folder
from ict_core.errors import BadInput
from ict_core.config import parse_overrides
from tune.findings import ExportError, export_findings, hours_text
from tune.launch import run_search
from tune.plan import (check_max_failures, check_plan_paths, compute_lines, format_plan, plan_power, resolve_plan, resources, total_line)
from tune.space_schema import BUDGETS, SpaceError, list_spaces
from tune.experiment_folder import ExperimentFolder
from tune.store import check_storage_option, is_uri, join, report_copy

STATE_FILE = "campaign.json"
DEFAULT_STORAGE = "results"
# The order: the paper's open questions first, then the ablation grids.
ORDER = ("c_scaling", "c_ladder", "lognormal", "dropout", "curriculum", "ema_teacher", "metric", "noise_schedule",
         "weighting", "fourier_scale")


class CampaignError(BadInput):
    """A campaign that cannot start or continue (bad arguments, a changed campaign on --resume)."""


def shipped_spaces() -> list[str]:
    names = list_spaces()
    return [s for s in ORDER if s in names] + [s for s in names if s not in ORDER]


def _space_list(spaces) -> list[str]:
    if spaces is None:
        return shipped_spaces()
    if isinstance(spaces, str):
        spaces = [s.strip() for s in spaces.split(",")]
    spaces = [s for s in spaces if s]
    if not spaces:
        raise CampaignError(f"--spaces names no space; shipped spaces: {', '.join(shipped_spaces())}")
    dupes = sorted({s for s in spaces if spaces.count(s) > 1})
    if dupes:
        raise CampaignError(f"--spaces names {dupes[0]!r} twice")
    return spaces


def plan_campaign(spaces, budget: str, num_samples=None, extra=None) -> list:
    """Resolve and validate every search of the campaign without Ray: [(space name, Plan)] in order.

    Raises CampaignError for an unknown budget and SpaceError (from tune.space) for an unknown space or a plan
    that cannot run, naming the space."""
    if budget not in BUDGETS:
        raise CampaignError(f"unknown budget {budget!r}; allowed: {', '.join(BUDGETS)}")
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                    or num_samples < 1):
        raise CampaignError(f"--num-samples must be an integer >= 1, got {num_samples!r}")
    plans, names = [], set()
    for space in _space_list(spaces):
        try:
            plan = resolve_plan(space, budget, num_samples, extra)
        except SpaceError as err:
            raise SpaceError(f"space {space!r}: {err}") from None
        if plan.space in names:
            raise CampaignError(f"two spaces share the name {plan.space!r}; each needs its own experiment folder")
        names.add(plan.space)
        plans.append((space, plan))
    return plans


def dry_run(plans, campaign_dir: Path, measure: bool = True, out=print, pilot=None) -> dict:
    """Print each search's plan, its compute and each claim's detectable effect (from `pilot` folders, or the
    campaign's own experiments; tune/pilot.py); returns the totals {runs, images, seconds}."""
    family = sum(len(plan.claims) for _, plan in plans)  # Holm runs over every claim of the campaign
    timings: dict[str, tuple[float, str]] = {}
    total = {"runs": 0, "images": 0, "seconds": 0.0, "timed": 0, "untimed": 0, "skipped": 0, "cap_runs": 0,
             "cap_seconds": 0.0}
    for space, plan in plans:
        res = resources(plan, 1, 0, None)
        out(f"==== {plan.space} ({plan.budget}) ====")
        out(format_plan(plan, res, join(str(campaign_dir), plan.space)))
        lines, sub = compute_lines(plan, res, timings, measure)
        for line in lines:
            out(line)
        for key in total:
            if key.startswith("cap_"):  # a search without a design trains its first round only
                total[key] += sub.get(key, sub["runs"] if key == "cap_runs" else sub.get("seconds", 0.0))
            else:
                total[key] += sub.get(key, 0)
        own = None if is_uri(campaign_dir) else Path(campaign_dir) / plan.space  # a bucket's tables: use --pilot
        for line in plan_power(plan, pilot, own, family):
            out(line)
        out("")
    out(total_line(f"campaign: {len(plans)} search(es)", total))
    return total


# ---- state -----------------------------------------------------------------------------------------------------
def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write_state(path: Path, state: dict, camp=None) -> None:
    from ict_core.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(state, indent=2, sort_keys=True) + "\n")
    if camp is not None:
        camp.push()  # a URI campaign: campaign.json to storage at once


def _experiment_finished(exp_dir: Path) -> bool:
    """A search that ran to its end marks its experiment.json "finished" (tune.launch.run_search)."""
    try:
        return bool(json.loads((exp_dir / "experiment.json").read_text()).get("finished"))
    except (OSError, ValueError):
        return False


def load_state(campaign_dir: Path) -> dict | None:
    path = campaign_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise CampaignError(f"{path} is not valid JSON ({err}); move it away to start the campaign afresh") from None


def _settings(budget, spaces, num_samples, extra) -> dict:
    return {"budget": budget, "spaces": list(spaces), "num_samples": num_samples,
            "extra": {k: v for k, v in sorted((extra or {}).items())}}


def _check_resume(state: dict, settings: dict, campaign_dir: Path) -> None:
    for key in ("budget", "spaces", "num_samples", "extra"):
        old, new = state.get(key), json.loads(json.dumps(settings[key]))
        if old != new:
            raise CampaignError(f"--resume: {campaign_dir} was started with {key}={old!r}, not {new!r}; "
                                f"use the same settings, or --name for a new campaign")


def run_campaign(budget: str, spaces=None, storage=DEFAULT_STORAGE, name=None, resume=False, num_samples=None,
                 extra=None, report=True, quiet=False, address=None, command: str | None = None,
                 reuse=(), max_failures: int | None = None) -> Path:
    """Run (or resume) the campaign; returns its folder. Every plan is validated before Ray starts.

    Every start and resume is recorded in campaign.json's `sessions` (time, command, git commit, local changes),
    so the findings name the code that produced each search. A run already trained in an earlier search of the
    campaign, or in the experiments below the `reuse` folders, is copied, not trained (tune/reuse.py)."""
    from ict_core.provenance import git_commit

    from tune.reuse import reuse_index

    extra = dict(extra or {})
    plans = plan_campaign(spaces, budget, num_samples, extra)
    reuse_index(reuse)  # each --reuse folder must hold an experiment: checked before anything starts
    space_args = [space for space, _ in plans]
    names = [plan.space for _, plan in plans]
    cname = name or f"campaign-{budget}"
    # A URI campaign (s3://...): campaign.json and the report go there, each search into its own folder below it
    # (tune/store.py); the folder returned is the driver's local copy.
    camp = ExperimentFolder(join(str(storage), cname) if is_uri(storage)
                            else Path(storage).expanduser().resolve() / cname, skip=("runs", "ray", *names))
    camp.pull()
    campaign_dir = camp.dir
    state_path = campaign_dir / STATE_FILE
    settings = _settings(budget, space_args, num_samples, extra)
    state = load_state(campaign_dir)
    if state is not None and not resume:
        raise CampaignError(f"campaign {camp} exists; pass --resume to continue it or --name for a new one")
    if state is None:
        state = {**settings, "created": _now(),
                 "searches": {n: {"state": "pending", "wall_s": 0.0, "experiment": n} for n in names}}
    else:
        _check_resume(state, settings, campaign_dir)

    def say(text: str) -> None:
        if not quiet:
            print(text, flush=True)

    campaign_dir.mkdir(parents=True, exist_ok=True)
    state["order"] = names  # the searches in the order they run (the settings keep the arguments as given)
    state.setdefault("sessions", []).append(
        {"started": _now(), "command": command or f"run_campaign(budget={budget!r}, spaces={space_args!r})",
         **git_commit(), "pending": [n for n in names if state["searches"][n]["state"] != "done"]})
    _write_state(state_path, state, camp)
    family = sum(len(plan.claims) for _, plan in plans)  # the error rate is held over the campaign's claims
    search_args = dict(extra=extra, address=address, quiet=quiet, reuse=reuse, reuse_optional=[campaign_dir],
                       family=family, max_failures=max_failures)
    for space, plan in plans:
        _run_space(space, plan, budget, num_samples, camp, state, say, search_args)
    if report:
        _campaign_report(camp, names)
        state["report"] = str(Path("report") / "report.md")
    state["finished"] = _now()
    _write_state(state_path, state, camp)
    say("[campaign] wall time per search: " + ", ".join(
        f"{n} {hours_text(state['searches'][n]['wall_s'])}" for n in names))
    return campaign_dir


def _run_space(space, plan, budget: str, num_samples, camp, state: dict, say, search_args: dict) -> None:
    """One search of the campaign, skipped when done, resumed when its experiment exists; its state and wall
    time go to campaign.json before and after it runs. Raises CampaignError when it stopped before its end."""
    state_path = camp.dir / STATE_FILE
    entry = state["searches"][plan.space]
    exp = ExperimentFolder(join(camp.location, plan.space))
    if entry["state"] == "done":
        say(f"[campaign] {plan.space}: done ({hours_text(entry['wall_s'])}), skipped")
        return
    again = exp.exists("experiment.json")
    say(f"[campaign] {plan.space}: {'resuming' if again else 'starting'} ({budget})")
    entry.update(state="running", started=entry.get("started") or _now())
    _write_state(state_path, state, camp)
    t0 = time.time()
    try:
        run_search(space, budget, num_samples, storage=camp.location, name=plan.space, resume=again, **search_args)
    finally:
        entry["wall_s"] = float(entry.get("wall_s", 0.0)) + (time.time() - t0)
        _write_state(state_path, state, camp)
    if not _experiment_finished(exp.dir):
        raise CampaignError(f"search {plan.space} stopped before its end; continue with --resume")
    entry.update(state="done", finished=_now())
    _write_state(state_path, state, camp)


def _campaign_report(camp, names: list[str]) -> None:
    """analysis/report.py over every search of the campaign, into its report folder."""
    from analysis.report import main as report_main

    code = report_main([join(camp.location, n) for n in names] + ["--out", join(camp.location, "report")])
    if code != 0:
        raise CampaignError(f"analysis/report.py exited with {code}; the searches are done, rerun with --resume "
                            f"to retry the report")


# ---- CLI -------------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", required=True, help=f"one of {', '.join(BUDGETS)}")
    p.add_argument("--spaces", help="comma-separated spaces, shipped names or .yaml paths (default: every shipped "
                                    "space, open questions first)")
    p.add_argument("--storage", default=os.environ.get("ICT_STORAGE") or DEFAULT_STORAGE,
                   help="folder or URI (s3://BUCKET/PREFIX) above the campaign folder (default $ICT_STORAGE when "
                        "set, else ./results)")
    p.add_argument("--name", help="campaign folder name (default campaign-<budget>)")
    p.add_argument("--resume", action="store_true", help="continue the campaign of the same name")
    p.add_argument("--dry-run", action="store_true",
                   help="print every search's plan and compute estimate; start nothing")
    p.add_argument("--no-timing", action="store_true", help="with --dry-run: count runs and images, time no steps")
    p.add_argument("--reuse", nargs="+", metavar="DIR",
                   help="experiment or campaign folders whose finished runs are copied, not trained again, where "
                        "a trial's run_key matches; the campaign's own earlier searches always are")
    p.add_argument("--pilot", nargs="+", metavar="DIR",
                   help="with --dry-run: earlier experiment folder(s) (e.g. docs/findings/cpu, a finished campaign) "
                        "whose seed spread gives each claim's smallest detectable effect at seeds_max")
    p.add_argument("--num-samples", type=int, help="configurations per stratum of every search (default: budgets')")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a dotted config override for every trial of every search (repeatable)")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--export", metavar="DIR",
                   help="when the campaign is finished, copy its tables, journals, report and state into DIR with "
                        "a generated README.md naming the commands and commits (tune/findings.py), e.g. "
                        "docs/findings/cpu")
    p.add_argument("--address", help="Ray cluster address; 'local' starts a private local instance (default: "
                                     "RAY_ADDRESS, else the cluster running on this node, else a local Ray per search)")
    p.add_argument("--max-failures", type=int, default=None,
                   help="retries of a failed trial in every search, each from its run folder's last checkpoint "
                        "(default: 0 on a new local instance, 3 on a cluster; see tune/search.py)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        extra = parse_overrides(args.set)
        check_storage_option(args.storage, "--storage", CampaignError)
        check_max_failures(args.max_failures)
        if args.export:
            if args.no_report:
                raise CampaignError("--export copies the report; it cannot be combined with --no-report")
            check_writable_folder(str(Path(args.export).expanduser().absolute().parent), "--export's parent")
        if args.dry_run:
            plans = plan_campaign(args.spaces, args.budget, args.num_samples, extra)
            for _, plan in plans:
                check_plan_paths(plan)
            cname = args.name or f"campaign-{args.budget}"
            campaign_dir = (join(args.storage, cname) if is_uri(args.storage)
                            else Path(args.storage).expanduser().resolve() / cname)
            dry_run(plans, campaign_dir, measure=not args.no_timing, pilot=args.pilot)
            return 0
        command = "python tune/campaign.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                   else sys.argv[1:]))
        campaign_dir = run_campaign(args.budget, args.spaces, args.storage, args.name, args.resume,
                                    args.num_samples, extra, report=not args.no_report, address=args.address,
                                    command=command, reuse=args.reuse or (), max_failures=args.max_failures)
        where = (join(args.storage, args.name or f"campaign-{args.budget}") if is_uri(args.storage)
                 else str(campaign_dir))
        report_md = campaign_dir / "report" / "report.md"
        print(f"campaign: {where}" + (f"\nreport:   {join(where, 'report', 'report.md')}" if report_md.exists() else ""))
        if args.export:
            if is_uri(args.storage):  # every search's tables and samples, from storage into the local copy
                campaign_dir = report_copy(where).local
            try:
                dest = export_findings(campaign_dir, Path(args.export).expanduser())
            except ExportError as err:
                raise CampaignError(str(err)) from None
            print(f"exported: {dest} (README.md there names the commands and commits)")
        return 0
    except KeyboardInterrupt:
        args = list(sys.argv[1:] if argv is None else argv)
        args += [] if "--resume" in args else ["--resume"]
        script = command("ict-campaign", shlex.quote(str(Path(__file__).resolve())))
        print(f"\ninterrupted; continue with: {script} {' '.join(shlex.quote(a) for a in args)}", file=sys.stderr)
        return 130
    except BadInput as err:
        return bad_input(err)


if __name__ == "__main__":
    sys.exit(main())
