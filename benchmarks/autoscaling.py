"""The README's cluster search on an autoscaling cluster made on this machine by Ray's own autoscaler (its fake
multi-node provider: a 0-GPU head and a `gpu_worker` node type, 1 CPU + 1 GPU, min_workers 0, max_workers 2),
with a worker node's raylet killed mid-search. Prints the timeline (nodes up, trials placed, node killed, nodes
down) and the rows written against the rows expected.

    .venv/bin/python benchmarks/autoscaling.py [--configs 2] [--no-kill]

The same scenario is tests/test_autoscaling.py; it takes 2-4 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fake_cluster import FakeCluster, run_cluster_search  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", type=int, default=2, help="configurations searched (one seed each)")
    p.add_argument("--no-kill", action="store_true", help="do not kill a worker node")
    args = p.parse_args(argv)
    import pandas as pd

    cluster = FakeCluster()
    work = Path(tempfile.mkdtemp(prefix="ict_autoscaling_"))
    try:
        cluster.start()
        print(f"cluster: head {cluster.address}, node type gpu_worker (1 CPU, 1 GPU) x0..{cluster.max_workers}, "
              f"idle timeout {cluster.idle_timeout_minutes * 60:g} s; work folder {work}")
        out = run_cluster_search(cluster, work, configs=args.configs, kill=not args.no_kill)
    finally:
        cluster.stop()
    plan_line = next((line for line in out["log"].splitlines() if line.startswith("ray ")), "(no plan line)")
    print(f"\nplan line: {plan_line}")
    trials_path = out["exp_dir"] / "trials.parquet"
    rows = pd.read_parquet(trials_path) if trials_path.exists() else pd.DataFrame()
    print(f"search exit code {out['returncode']}; rows written {len(rows)}, expected {out['expected_rows']}; "
          f"distinct trial ids {rows['trial_id'].nunique() if len(rows) else 0}")
    if len(rows):
        print(rows[["trial_id", "status", "steps", "node_id"]].assign(
            node_id=lambda d: d["node_id"].str[-8:]).to_string(index=False))
    if out["killed"]:
        print(f"killed node {out['killed']['node_id'][-8:]} after step {out['killed']['step']} of its run")
    print(f"worker nodes left after the search: {len(out['worker_nodes_left'])}")
    return 0 if out["returncode"] == 0 and len(rows) == out["expected_rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
