"""Shared fixtures: ``zoo`` runs rl-zoo3's own commands as a user would, against the installed package;
``postgres_server`` is a throwaway PostgreSQL server for the distributed-tuning commands."""

import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """In-process training runs single-threaded, as the benchmark runs it: the test workers (pytest-xdist) then
    share the cores instead of oversubscribing them, which makes small torch operations many times slower."""
    import torch

    torch.set_num_threads(1)


class ZooRunner:
    """Runs ``python -m rl_zoo3.<script>`` (or any command) single-threaded and headless."""

    python = sys.executable

    def environment(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("SB3_PPO_VARIANTS_NO_ZOO_HOOK", None)
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", SDL_VIDEODRIVER="dummy")
        env.update(extra)
        return env

    def command(self, script: str, *args: str) -> list[str]:
        return [self.python, "-m", f"rl_zoo3.{script}", *args]

    def popen(self, args: list[str], cwd: Path, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(
            args,
            cwd=cwd,
            env=env or self.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kwargs,
        )

    def run(
        self, args: list[str], cwd: Path, timeout: float = 240, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            args, cwd=cwd, env=env or self.environment(), capture_output=True, text=True, timeout=timeout, check=False
        )

    @staticmethod
    def describe(result: subprocess.CompletedProcess) -> str:
        return (
            f"exit {result.returncode}\n--- stdout (tail) ---\n{result.stdout[-3000:]}\n"
            f"--- stderr (tail) ---\n{result.stderr[-5000:]}"
        )


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> ZooRunner:
    """Needs the wheel's import hook (``pip install .``); outside CI its absence skips, in CI it fails."""
    runner = ZooRunner()
    cwd = tmp_path_factory.mktemp("hook_check")
    result = runner.run([runner.python, "-c", "import _sb3_ppo_variants_zoo_hook"], cwd=cwd, timeout=60)
    if result.returncode != 0:
        message = "sb3-ppo-variants is not installed with its rl-zoo3 hook; run `pip install .` first"
        if os.environ.get("CI"):
            pytest.fail(f"{message}\n{runner.describe(result)}")
        pytest.skip(message)
    return runner


# --- PostgreSQL -------------------------------------------------------------------------------------------------


def _postgres_bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return candidates[-1].parent if candidates else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """A running server; ``url`` has the README's form, ``postgresql://user@host:port`` (SQLAlchemy's default
    driver for it is psycopg 3, which the ``postgres`` extra installs)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def new_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        name = re.sub(r"\W", "_", name).lower()[:60]
        with psycopg.connect(f"{self.url}/postgres", autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"{self.url}/{name}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster on a free port (as the ``postgres`` user when running as root)."""
    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql package")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="sb3-ppo-variants-pg-"))
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root
        try:
            postgres = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and no 'postgres' user to run the server as")
        os.chown(root, postgres.pw_uid, postgres.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()

    def pg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120, check=True)

    pg(str(bin_dir / "initdb"), "-D", str(data), *"-U postgres -A trust --no-sync --no-locale -E UTF8".split())
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-o", options, "-w", "start")
    try:
        yield PostgresServer(f"postgresql://postgres@127.0.0.1:{port}")
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], check=False)
        shutil.rmtree(root, ignore_errors=True)
