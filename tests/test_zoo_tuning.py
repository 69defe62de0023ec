"""``rl_zoo3.train -optimize`` with our samplers: in memory, and shared between workers through PostgreSQL and a
journal file, including a worker killed mid-trial.

The shared studies are created by the test with cheap enqueued trials (small rollouts, one epoch), which the
workers pick up before sampling their own, so the tests do not depend on how costly a random sample is.
"""

import pickle
import re
import signal
import subprocess
import threading
import time

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from sb3_ppo_variants.zoo.heartbeat import GRACE_PERIOD_VARIABLE, HEARTBEAT_INTERVAL_VARIABLE, storage_with_heartbeat

CHEAP = {"n_steps_pow": 5, "batch_size_pow": 6, "n_epochs": 1, "net_arch": "tiny"}  # 8 envs x 32 steps per rollout
COSTLY = {"n_steps_pow": 12, "batch_size_pow": 5, "n_epochs": 20, "net_arch": "medium"}  # runs for minutes
HEARTBEAT = {HEARTBEAT_INTERVAL_VARIABLE: "1", GRACE_PERIOD_VARIABLE: "3"}
FINISHED = re.compile(r"Trial (\d+) (?:finished with value|pruned)")


def _worker_command(zoo, storage, study_name, max_total_trials, seed, *extra):
    return zoo.command(
        "train",
        "--algo", "ppo_variant",
        "--env", "CartPole-v1",
        "-optimize",
        "--storage", storage,
        "--study-name", study_name,
        "--max-total-trials", str(max_total_trials),
        "--n-trials", "50",
        "--sampler", "tpe",
        "--pruner", "median",
        "-n", "1024",
        "--eval-episodes", "2",
        "--seed", str(seed),
        *extra,
    )  # fmt: skip


def _create_study(storage, study_name, first=None, n_cheap=10):
    """The shared study with ``first`` (if given) then ``n_cheap`` cheap trials waiting."""
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize")
    if first is not None:
        study.enqueue_trial(first)
    for _ in range(n_cheap):
        study.enqueue_trial(CHEAP)
    return study


def _finished(output: str) -> list[int]:
    return [int(number) for number in FINISHED.findall(output)]


def _communicate(zoo, process, timeout):
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _assert_shared_without_loss_or_duplicate(zoo, study, workers, max_total_trials):
    for result in workers:
        assert result.returncode == 0, zoo.describe(result)
    reported = [_finished(result.stderr) for result in workers]
    assert all(reported), "each worker finished trials of its own"
    assert not set(reported[0]) & set(reported[1]), f"a trial ran twice: {reported}"
    finished = [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert sorted(t.number for t in finished) == sorted(reported[0] + reported[1]), "a trial was lost"
    assert len(finished) >= max_total_trials
    assert not study.get_trials(states=(TrialState.RUNNING,))
    return finished


# --- PostgreSQL (the server: conftest.postgres_server) ----------------------------------------------------------


@pytest.fixture
def postgres_url(postgres_server, request):
    """A fresh, empty database for each test, with a ``postgresql://`` URL as the README writes it."""
    return postgres_server.new_database(request.node.name)


def test_workers_starting_together_on_an_empty_database_all_connect(postgres_server):
    """Optuna's table creation races between workers started at once; the heartbeat storage retries it."""
    for attempt in range(3):
        url = postgres_server.new_database(f"empty_{attempt}")
        start, errors = threading.Barrier(3), []

        def connect(url=url, start=start, errors=errors):
            start.wait()
            try:
                storage_with_heartbeat(url)
            except Exception as exc:
                errors.append(repr(exc))

        workers = [threading.Thread(target=connect) for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert not errors


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study(zoo, postgres_url, tmp_path):
    study = _create_study(postgres_url, "shared")
    env = zoo.environment(**HEARTBEAT)
    workers = []
    for index in range(2):
        cwd = tmp_path / f"machine_{index}"
        cwd.mkdir()
        workers.append(zoo.popen(_worker_command(zoo, postgres_url, "shared", 6, index, "--no-optim-plots"), cwd, env))
    results = [_communicate(zoo, worker, 300) for worker in workers]
    finished = _assert_shared_without_loss_or_duplicate(zoo, study, results, 6)
    assert all(t.params["n_epochs"] == 1 for t in finished)  # the enqueued cheap trials
    assert {"surrogate", "learning_rate", "one_minus_gamma"} <= set(finished[0].params)


def _wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_killed_worker_trial_ends_as_fail_and_the_other_worker_finishes(zoo, postgres_url, tmp_path):
    max_total_trials = 6
    study = _create_study(postgres_url, "fault", first=COSTLY)
    env = zoo.environment(**HEARTBEAT)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    command_a = _worker_command(zoo, postgres_url, "fault", max_total_trials, 0, "--no-optim-plots")
    worker_a = zoo.popen(command_a, tmp_path / "a", env)
    try:
        # trial 0, the costly one first in the queue, is worker A's; let it record a heartbeat or two
        _wait_for(lambda: study.get_trials(states=(TrialState.RUNNING,)), 120, "worker A to start trial 0")
        time.sleep(1.5)
        assert [t.number for t in study.get_trials(states=(TrialState.RUNNING,))] == [0]
        worker_a.send_signal(signal.SIGKILL)
        result_a = _communicate(zoo, worker_a, 30)
    finally:
        worker_a.kill()
    # worker B joins once A's heartbeat is older than the grace period, as a restarted or second machine would
    time.sleep(int(HEARTBEAT[GRACE_PERIOD_VARIABLE]) + int(HEARTBEAT[HEARTBEAT_INTERVAL_VARIABLE]) + 0.5)
    assert study.trials[0].state == TrialState.RUNNING
    command_b = _worker_command(zoo, postgres_url, "fault", max_total_trials, 1, "--no-optim-plots")
    result_b = zoo.run(command_b, cwd=tmp_path / "b", env=env, timeout=300)

    assert result_a.returncode == -signal.SIGKILL
    assert 0 not in _finished(result_a.stderr)
    assert result_b.returncode == 0, zoo.describe(result_b)
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL
    assert "Trial 0 was marked FAIL: its worker stopped sending heartbeats" in result_b.stderr
    assert not study.get_trials(states=(TrialState.RUNNING,))
    # the dead trial did not use up --max-total-trials: worker B completed all of them
    completed = sorted(t.number for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
    assert len(completed) == max_total_trials
    assert completed == sorted(_finished(result_b.stderr))


def test_database_urls_get_a_heartbeat_and_journal_files_do_not(monkeypatch, tmp_path):
    monkeypatch.setenv(HEARTBEAT_INTERVAL_VARIABLE, "7")
    monkeypatch.delenv(GRACE_PERIOD_VARIABLE, raising=False)
    storage = storage_with_heartbeat(f"sqlite:///{tmp_path / 'study.db'}")
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert (storage.get_heartbeat_interval(), storage.grace_period) == (7, 14)
    assert storage.get_heartbeat_stale_trial_callback() is not None
    assert storage_with_heartbeat(str(tmp_path / "study.log")) == str(tmp_path / "study.log")
    assert storage_with_heartbeat(None) is None
    monkeypatch.setenv(HEARTBEAT_INTERVAL_VARIABLE, "0")
    assert storage_with_heartbeat("sqlite:///x.db") == "sqlite:///x.db"
    monkeypatch.setenv(HEARTBEAT_INTERVAL_VARIABLE, "5")
    monkeypatch.setenv(GRACE_PERIOD_VARIABLE, "5")
    with pytest.raises(ValueError, match="must exceed"):
        storage_with_heartbeat("sqlite:///x.db")


# --- journal file and in-memory ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_share_a_journal_file_with_report_plots_and_trial_logs(zoo, tmp_path):
    journal = tmp_path / "shared" / "study.log"
    journal.parent.mkdir()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = _create_study(storage, "journal")
    env = zoo.environment(PLOTLY_RENDERER="json")
    workers = []
    for index, n_jobs in enumerate(("2", "1")):
        cwd = tmp_path / f"machine_{index}"
        cwd.mkdir()
        command = _worker_command(
            zoo, str(journal), "journal", 4, index, "--n-jobs", n_jobs, "--optimization-log-path", "trials"
        )
        workers.append(zoo.popen(command, cwd, env))
    results = [_communicate(zoo, worker, 300) for worker in workers]
    study = optuna.load_study(
        study_name="journal",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal))),
    )
    _assert_shared_without_loss_or_duplicate(zoo, study, results, 4)

    for index, result in enumerate(results):
        cwd = tmp_path / f"machine_{index}"
        for number in _finished(result.stderr):
            assert (cwd / "trials" / f"trial_{number}" / "evaluations.npz").is_file()
        (report_csv,) = (cwd / "logs" / "ppo_variant").glob("report_CartPole-v1_*.csv")
        assert "params_surrogate" in report_csv.read_text().splitlines()[0]
        (report_pkl,) = (cwd / "logs" / "ppo_variant").glob("report_CartPole-v1_*.pkl")
        with open(report_pkl, "rb") as file:
            reported_study = pickle.load(file)
        assert len(reported_study.get_trials(states=(TrialState.COMPLETE,))) >= 4

    # the zoo's plots, on the study it reported
    pytest.importorskip("plotly")
    history = optuna.visualization.plot_optimization_history(reported_study)
    importances = optuna.visualization.plot_param_importances(reported_study)
    assert len(history.data[0].x) >= 4
    assert "surrogate" in set(importances.data[0].y)

    # the converter: train with the parameters of a trial of the shared study
    trial = study.get_trials(states=(TrialState.COMPLETE,))[1]
    command = zoo.command(
        "train", "--algo", "ppo_variant", "--env", "CartPole-v1", "-n", "256", "--eval-freq", "-1",
        "--storage", str(journal), "--study-name", "journal", "--trial-id", str(trial.number),
    )  # fmt: skip
    result = zoo.run(command, cwd=tmp_path / "machine_0", timeout=180)
    assert result.returncode == 0, zoo.describe(result)
    assert "Loading from Optuna study..." in result.stdout
    (config,) = (tmp_path / "machine_0" / "logs" / "ppo_variant").glob("CartPole-v1_*/CartPole-v1/config.yml")
    saved = dict(yaml.load(config.read_text(), Loader=yaml.UnsafeLoader))
    assert saved["gamma"] == pytest.approx(1 - trial.params["one_minus_gamma"])
    assert saved["surrogate"] == trial.params["surrogate"]
    assert saved["n_steps"] == 32 and saved["n_epochs"] == 1


@pytest.mark.slow
def test_in_memory_optimisation_writes_the_zoo_report(zoo, tmp_path):
    # seed 10: TPE's random start-up draws two cheap trials (n_steps 32 and 128); another draw is only slower
    command = zoo.command(
        "train", "--algo", "ppo_variant", "--env", "CartPole-v1", "-optimize", "--n-trials", "2", "--n-jobs", "1",
        "--sampler", "tpe", "--pruner", "median", "-n", "512", "--eval-episodes", "2", "--seed", "10",
        "--no-optim-plots",
    )  # fmt: skip
    result = zoo.run(command, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, zoo.describe(result)
    assert sorted(_finished(result.stderr)) == [0, 1]
    (report,) = (tmp_path / "logs" / "ppo_variant").glob("report_CartPole-v1_2-trials-512-tpe-median_*.csv")
    header, *rows = report.read_text().splitlines()
    assert len(rows) == 2 and "params_surrogate" in header and "params_n_steps_pow" in header
