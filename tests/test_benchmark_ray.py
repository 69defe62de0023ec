"""Benchmark grids on a real multi-node Ray cluster, started on this machine's loopback address.

The command runs as a user runs it, ``--ray-address`` pointing at the cluster; its workers import
this checkout (``PYTHONPATH``). One test kills a worker node with SIGKILL in the middle of a run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'sb3-ppo-variants[ray]'")
from ray.cluster_utils import Cluster  # noqa: E402
from run_records import without_timing  # noqa: E402

from sb3_ppo_variants.benchmark.runs import Run, grid, train_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OBJECT_STORE_BYTES = 100 * 1024**2
GRID = ["--tasks", "CartPole-v1", "--algorithms", "ppo", "logit", "--lr-scales", "1", "3", "--seeds", "0"]  # 4 runs
RUNS = grid(["CartPole-v1"], ["ppo", "logit"], [0], [1.0, 3.0])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def environment() -> dict[str, str]:
    return {
        **os.environ,
        # Ray binds the machine's outward address unless told this is a single-machine cluster
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A head node and a worker node on 127.0.0.1, one CPU each; their workers import this checkout."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment().items():
            patch.setenv(name, value)
        # ray read RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when this module imported it; the nodes started
        # here take their address from this constant, the processes they start from the variable
        patch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "object_store_memory": OBJECT_STORE_BYTES,
                "include_dashboard": False,
                "gcs_server_port": free_port(),
            },
        )
        try:
            cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE_BYTES)
            cluster.wait_for_nodes()
            assert {node.node_ip_address for node in cluster.list_all_nodes()} == {"127.0.0.1"}
            yield cluster
        finally:
            cluster.shutdown()


def benchmark(*arguments: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sb3_ppo_variants.benchmark", *arguments],
        cwd=cwd,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 900) -> tuple[str, str]:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"the grid did not finish in {timeout} s\n{stdout[-3000:]}\n{stderr[-5000:]}")
    assert process.returncode == 0, f"exit {process.returncode}\n{stdout[-3000:]}\n{stderr[-5000:]}"
    return stdout, stderr


def assert_every_run_written_once(directory: Path, stdout: str, timesteps: int, runs: list[Run]) -> dict[Run, dict]:
    """Each run's file parses and is complete, nothing else is in the folder, and the driver wrote it once."""
    files = sorted(path.relative_to(directory).as_posix() for path in directory.rglob("*") if path.is_file())
    assert files == sorted(run.path(Path()).as_posix() for run in runs), files
    records = {}
    for run in runs:
        record = json.loads(run.path(directory).read_text())
        assert (record["algorithm"], record["learning_rate_scale"], record["seed"]) == (
            run.algorithm,
            run.learning_rate_scale,
            run.seed,
        )
        assert record["timesteps"] >= timesteps and record["evaluations"][-1]["step"] == record["timesteps"]
        assert record["torch_threads"] == 1
        assert stdout.count(f"{run}: return ") == 1, stdout
        records[run] = record
    return records


@pytest.mark.slow
def test_grid_on_a_two_node_cluster_writes_every_run_as_a_local_run_would(cluster: Cluster, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    process = benchmark(
        "collapse", "--runs", str(runs), "--ray-address", cluster.address, *GRID, "--timesteps", "512", cwd=tmp_path
    )
    stdout, _ = finish(process)
    assert f"4 of 4 runs to do (0 on disk) on the Ray cluster at {cluster.address}, 1 CPU(s) per run" in stdout
    records = assert_every_run_written_once(runs, stdout, 512, RUNS)

    # the same seed gives the same file as a run in this process, apart from wall-clock fields
    for run, record in records.items():
        assert without_timing(record) == without_timing(train_run(run, timesteps=512, threads=1)), run

    again = benchmark(
        "collapse", "--runs", str(runs), "--ray-address", cluster.address, *GRID, "--timesteps", "512", cwd=tmp_path
    )
    stdout, _ = finish(again)
    assert "seed" not in stdout  # everything was on disk: nothing ran


def descendants(pid: int) -> dict[int, str]:
    """Command lines of every process below ``pid``, read from /proc (Ray titles a task's worker ``ray::<name>``)."""
    parents, commands = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes()
            except OSError:  # gone meanwhile
                continue
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
            commands[int(entry.name)] = command.replace(b"\0", b" ").decode(errors="replace").strip()
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent:
                found[child] = commands[child]
                frontier.append(child)
    return found


def runs_on(node) -> dict[int, str]:
    """The worker processes of ``node`` that are running a run, with its label."""
    raylet = node.all_processes["raylet"][0].process.pid
    return {
        pid: command.removeprefix("ray::")
        for pid, command in descendants(raylet).items()
        if command.startswith("ray::") and " seed " in command
    }


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the task's worker process through /proc")
def test_a_worker_node_killed_mid_run_has_its_run_retried(cluster: Cluster, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    arguments = ["--runs", str(runs), "--ray-address", cluster.address, *GRID, "--timesteps", "2048"]
    process = benchmark("collapse", *arguments, cwd=tmp_path)
    (worker_node,) = cluster.worker_nodes

    # kill the worker node's first run as soon as its worker process runs it (whether it is still importing
    # or already training: either way the task dies mid-run)
    running: dict[int, str] = {}
    deadline = time.monotonic() + 300
    while not running and time.monotonic() < deadline and process.poll() is None:
        running = runs_on(worker_node)
        time.sleep(0.05)
    assert running, "the worker node ran no run before the grid ended"
    for pid in running:
        os.kill(pid, signal.SIGKILL)
    cluster.remove_node(worker_node, allow_graceful=False)  # SIGKILL to its raylet and the rest of the node

    stdout, _ = finish(process)
    records = assert_every_run_written_once(
        runs, stdout, 2048, grid(["CartPole-v1"], ["ppo", "logit"], [0], [1.0, 3.0])
    )
    killed = list(running.values())
    assert len(killed) == 1 and stdout.count(f"{killed[0]}: return ") == 1, (killed, stdout)
    assert "FAILED" not in stdout and "[4/4: 4 done, 0 running, 0 failed, 0 to do]" in stdout, stdout
    assert len(records) == 4
