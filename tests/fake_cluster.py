"""An autoscaling Ray cluster on this machine: Ray's own autoscaler with its fake multi-node provider, which starts
and stops real raylets as "nodes" (used by tests/test_autoscaling.py and benchmarks/autoscaling.py).

The head has CPUs and no GPU; the `gpu_worker` node type (min_workers 0) has 1 CPU and 1 GPU, so anything that
asks for a GPU makes the autoscaler add a node. Everything runs under a temp dir and on ports of its own, and
`stop()` ends only the processes that name that temp dir or this cluster's GCS address (never `ray stop`, which
would end every Ray on the machine).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

HEAD_TYPE = "ray.head.default"
GPU_TYPE = "gpu_worker"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def node_ip() -> str:
    import ray._private.services

    return ray._private.services.get_node_ip_address()


def autoscaling_config(gcs_address: str, *, head_cpus: int, worker_cpus: int, max_workers: int,
                       idle_timeout_minutes: float) -> dict:
    return {
        "cluster_name": "ict-fake",
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            HEAD_TYPE: {"resources": {"CPU": head_cpus}, "max_workers": 0, "node_config": {}},
            GPU_TYPE: {"resources": {"CPU": worker_cpus, "GPU": 1}, "min_workers": 0, "max_workers": max_workers,
                       "node_config": {}},
        },
        "head_node_type": HEAD_TYPE,
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


class FakeCluster:
    """`RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...` under a private temp dir and free ports."""

    def __init__(self, *, head_cpus: int = 2, worker_cpus: int = 1, max_workers: int = 2,
                 idle_timeout_minutes: float = 0.1):
        self.head_cpus, self.worker_cpus, self.max_workers = head_cpus, worker_cpus, max_workers
        self.idle_timeout_minutes = idle_timeout_minutes
        # Short: Ray's socket paths live under the temp dir and must stay within the OS limit.
        self.root = Path(tempfile.mkdtemp(prefix="ictfc"))
        self.temp_dir = self.root / "ray"
        self.port = free_port()
        self.address = f"{node_ip()}:{self.port}"
        self.config_path = self.root / "autoscaling.yaml"
        self.token = uuid.uuid4().hex  # its own token: token authentication stays on, as on a real cluster
        self.started = False

    @property
    def env(self) -> dict:
        """What a driver on the head needs to join this cluster (what cluster.yaml's ~/ict_env.sh sets)."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                "ICT_CODE_ON_NODES": "1"}

    def start(self, timeout: float = 120) -> "FakeCluster":
        self.config_path.write_text(yaml.safe_dump(autoscaling_config(
            self.address, head_cpus=self.head_cpus, worker_cpus=self.worker_cpus, max_workers=self.max_workers,
            idle_timeout_minutes=self.idle_timeout_minutes)))
        env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
               "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
               # A node whose raylet died is declared dead after ~3 s instead of ~30 s.
               "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
               "RAY_health_check_initial_delay_ms": "1000"}
        env.pop("RAY_ADDRESS", None)
        ray_bin = Path(sys.executable).with_name("ray")
        cmd = [str(ray_bin), "start", "--head", f"--port={self.port}", f"--num-cpus={self.head_cpus}", "--num-gpus=0",
               f"--temp-dir={self.temp_dir}", f"--autoscaling-config={self.config_path}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
               f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
               "--disable-usage-stats"]
        self.started = True
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        return self

    # ---- state (a fresh interpreter each time: this process must not connect, see tests) --------------------
    def nodes(self) -> list[dict]:
        """Alive nodes as [{node_id, gpus, cpus}], read through the GCS with `ray.util.state` in a subprocess."""
        code = ("import json, ray; ray.init(logging_level='ERROR', log_to_driver=False);"
                "print(json.dumps([{'node_id': n['NodeID'], 'cpus': n['Resources'].get('CPU', 0),"
                " 'gpus': n['Resources'].get('GPU', 0)} for n in ray.nodes() if n['Alive']]))")
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **self.env}, capture_output=True,
                             text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        return json.loads(out.stdout.strip().splitlines()[-1])

    def processes(self) -> list:
        """This cluster's processes: their command line names its temp dir or its GCS address."""
        import psutil

        marks = (str(self.root), f":{self.port}")
        mine = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmdline = " ".join(proc.info["cmdline"] or [])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if proc.pid != os.getpid() and any(mark in cmdline for mark in marks):
                mine.append(proc)
        return mine

    def stop(self) -> None:
        import psutil

        if self.started:
            procs = self.processes()
            for proc in procs:
                try:
                    proc.send_signal(signal.SIGTERM)
                except psutil.NoSuchProcess:
                    pass
            _, alive = psutil.wait_procs(procs, timeout=3)
            for proc in alive:
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(alive, timeout=10)
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)


# ---- the scenario of tests/test_autoscaling.py and benchmarks/autoscaling.py ------------------------------
REPO = Path(__file__).resolve().parent.parent
# A few seconds of real training per run on a CPU: tiny U-Net on the bundled digits, a checkpoint at every
# evaluation (every 100 steps), so a node killed after the first evaluation costs at most 100 steps.
SCENARIO_SPACE = """name: cluster_e2e
fixed: {{data.name: digits, network.channels: 8, network.channel_mult: [1], network.dropout: 0.0,
        train.total_steps: {steps}, train.batch_size: 32, optim.lr: 1.0e-3, train.ema_rate: 0.9,
        train.log_every: 1000, eval.every: {every}, eval.num_samples: 100, eval.grid: false,
        eval.cache_dir: "{cache}"}}
search: {{algorithm: grid}}
metric: fd
mode: min
seeds: 1
max_concurrent: 2
points:
{points}"""


def _raylets(cluster: FakeCluster) -> dict:
    """{node_id: raylet process} of the cluster's nodes (the head's included)."""
    out = {}
    for proc in cluster.processes():
        try:
            if proc.name() != "raylet":
                continue
            for part in proc.cmdline():
                if part.startswith("--node_id="):
                    out[part.split("=", 1)[1]] = proc
        except Exception:  # noqa: BLE001 - the process ended meanwhile
            continue
    return out


def _read_jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def run_cluster_search(cluster: FakeCluster, work: Path, *, configs: int = 2, steps: int = 200, every: int = 100,
                       kill: bool = True, timeout: float = 300, say=print) -> dict:
    """The README's cluster search (`python tune/search.py --space ... --workers-per-trial 1 --gpus-per-worker 1`,
    nothing else) on `cluster`, with the environment cluster.yaml's ~/ict_env.sh gives a driver on the head.
    Kills a node that runs a trial (its raylet and the processes it started) once that trial has written a
    checkpoint (`kill`), waits for the
    search to end and the cluster to scale back down. Returns the timeline and where things are."""
    work.mkdir(parents=True, exist_ok=True)
    values = [0.003 * 3 ** i for i in range(configs)]
    space = work / "cluster_e2e.yaml"
    space.write_text(SCENARIO_SPACE.format(steps=steps, every=every, cache=work / "featnet-cache",
                                           points="".join(f"  - {{loss.huber_c: {v:.6g}}}\n" for v in values)))
    storage = work / "results"
    cmd = [sys.executable, "tune/search.py", "--space", str(space), "--budget", "smoke", "--workers-per-trial", "1",
           "--gpus-per-worker", "1", "--storage", str(storage), "--name", "e2e"]
    env = {**os.environ, **cluster.env, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    env.pop("ICT_JOIN_RUNNING_CLUSTER", None)
    head = set(_raylets(cluster))
    t0 = time.time()
    timeline: list[tuple[float, str]] = []

    def event(text: str) -> None:
        timeline.append((round(time.time() - t0, 1), text))
        say(f"[{timeline[-1][0]:6.1f} s] {text}")

    event(f"search started: {' '.join(cmd[1:])}")
    log = open(work / "search.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    up: set[str] = set()
    placed: set[tuple] = set()
    killed = pending = None
    runs = storage / "e2e" / "runs"
    try:
        while proc.poll() is None:
            if time.time() - t0 > timeout:
                raise TimeoutError(f"search still running after {timeout:g} s; see {work / 'search.log'}")
            raylets = _raylets(cluster)
            workers_now = set(raylets) - head
            for node in sorted(workers_now - up):
                event(f"node up   {node[-8:]} ({len(workers_now)} worker node(s))")
            for node in sorted(up - workers_now):
                event(f"node gone {node[-8:]} ({len(workers_now)} worker node(s))")
            up = workers_now
            for path in runs.glob("*/*/seed_*.node.json"):
                try:
                    row = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                key = (str(path), row["node_id"], row["pid"])
                if key not in placed:
                    placed.add(key)
                    trial = path.parent.name
                    event(f"trial {trial} placed on node {row['node_id'][-8:]}"
                          + (f" (resumes from its checkpoint at step {row['resume_step']})"
                             if row.get("resume_step") is not None else ""))
                    if kill and killed is None and pending is None and row["node_id"] not in head:
                        pending = (path.with_name(path.name.removesuffix(".node.json")), row["node_id"])
            if kill and killed is None and pending is not None:
                run_dir, node = pending
                # The evaluation's line lands before its checkpoint: kill only once a complete checkpoint (the
                # trainer renames a finished checkpoint folder into place) holds the step, as the test expects.
                steps_done = [int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*")
                              if (p / "state.pt").is_file() and p.name.split("_")[1].isdigit()]
                if steps_done and node in raylets and not (run_dir / "summary.json").exists():
                    # As a lost machine: its raylet and every process it started (a trial process can otherwise
                    # outlive its raylet and finish the run before Ray notices).
                    for child in raylets[node].children(recursive=True) + [raylets[node]]:
                        try:
                            child.kill()
                        except Exception:  # noqa: BLE001 - ended meanwhile
                            pass
                    killed = {"node_id": node, "run_dir": str(run_dir), "step": max(steps_done),
                              "t": time.time() - t0}
                    event(f"killed node {node[-8:]} (its raylet, pid {raylets[node].pid}, and the processes it started) "
                          f"while its trial was past step {max(steps_done)}")
            time.sleep(0.5)
        event(f"search exited with {proc.returncode}")
        down_by = time.time() + 120
        while time.time() < down_by:
            workers_now = set(_raylets(cluster)) - head
            for node in sorted(up - workers_now):
                event(f"node gone {node[-8:]} ({len(workers_now)} worker node(s))")
            up = workers_now
            if not workers_now:
                event("scaled back down to the head alone")
                break
            time.sleep(1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    return {"returncode": proc.returncode, "timeline": timeline, "killed": killed, "head_nodes": sorted(head),
            "exp_dir": storage / "e2e", "expected_rows": configs, "log": (work / "search.log").read_text(),
            "worker_nodes_left": sorted(up)}
