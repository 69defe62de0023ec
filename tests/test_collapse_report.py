"""The collapse report command, run for real on the records of a forced collapse.

The run reproduces rl-zoo3's folder layout: ``0.monitor.csv``, ``evaluations.npz``
and ``best_model.zip`` from an ``EvalCallback`` in the run folder, an SB3
``progress.csv``, and the monitor's records in ``collapse_monitor/``.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch as th
from forced_collapse import FlipRewardAt, RewardSwitch, checkout_environment, make_env
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.logger import configure

from sb3_ppo_variants.callbacks import CollapseMonitor
from sb3_ppo_variants.collapse.__main__ import main as collapse_main
from sb3_ppo_variants.collapse_report import load_run, main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N_STEPS = 128
FLIP_AT = 2048


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run with two collapses: the kept policy also fails the flipped reward after the rollback."""
    threads = th.get_num_threads()
    th.set_num_threads(1)
    folder = tmp_path_factory.mktemp("run")
    switch = RewardSwitch()
    model = PPO(
        "MlpPolicy",
        make_env(switch, seed=0, monitor_file=str(folder / "0")),
        n_steps=N_STEPS,
        batch_size=64,
        n_epochs=4,
        learning_rate=3e-3,
        policy_kwargs=dict(net_arch=[16]),
        seed=0,
        device="cpu",
    )
    model.set_logger(configure(str(folder), ["csv"]))
    evaluation = EvalCallback(
        make_env(switch, seed=123),
        eval_freq=N_STEPS,
        n_eval_episodes=5,
        best_model_save_path=str(folder),
        log_path=str(folder),
        verbose=0,
    )
    monitor = CollapseMonitor(margin=0.5, patience=2, rollback=True)
    model.learn(FLIP_AT + 5 * N_STEPS, callback=[FlipRewardAt(switch, FLIP_AT), evaluation, monitor])
    th.set_num_threads(threads)
    assert monitor.save_dir == folder / "collapse_monitor"
    assert monitor.n_collapses == 2
    return folder


def report(*args: str | Path) -> subprocess.CompletedProcess:
    # The package may not be installed: the subprocess imports it from the checkout.
    command = [sys.executable, "-m", "sb3_ppo_variants.collapse_report", *map(str, args)]
    return subprocess.run(command, env=checkout_environment(), capture_output=True, text=True, timeout=120)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.slow
def test_png_report_is_written(run_dir, tmp_path):
    output = tmp_path / "report.png"
    result = report(run_dir, "-o", output)
    assert result.returncode == 0, result.stderr
    assert "2 collapse(s)" in result.stdout
    data = output.read_bytes()
    width, height = png_size(data)
    # One portrait page: the return panel over eight diagnostic panels.
    assert width >= 1000 and height > width
    assert len(data) > 50_000


@pytest.mark.slow
def test_html_report_embeds_the_figure_and_the_event_table(run_dir, tmp_path):
    output = tmp_path / "report.html"
    result = report(run_dir, "-o", output, "--event", "2")
    assert result.returncode == 0, result.stderr
    page = output.read_text()
    events = json.loads((run_dir / "collapse_monitor" / "collapse_events.json").read_text())["events"]
    assert "2 collapse(s) detected" in page
    assert "Diagnostics around collapse 2" in page
    for event in events:
        assert f"<td>{event['detected_timesteps']}</td>" in page
        assert f"<td>{event['checkpoint']}</td>" in page
    (encoded,) = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert png_size(base64.b64decode(encoded))[1] > 1000


@pytest.mark.slow
def test_load_run_reads_the_records_and_the_zoo_files(run_dir):
    for given in (run_dir, run_dir / "collapse_monitor"):
        logs = load_run(given)
        assert [event.index for event in logs.events] == [1, 2]
        assert logs.settings["following"] == "sibling_eval"
        assert logs.return_label == "evaluation return"
        # One evaluation every N_STEPS, the same ones EvalCallback saved.
        np.testing.assert_array_equal(logs.returns["timesteps"], np.arange(N_STEPS, FLIP_AT + 6 * N_STEPS, N_STEPS))
        assert logs.evaluations is not None
        np.testing.assert_allclose(logs.evaluations[1], logs.returns["return"])
        # Monitor files place the training episodes at their cumulative step count.
        assert logs.episodes is not None
        steps, returns = logs.episodes
        np.testing.assert_array_equal(steps, np.arange(10, FLIP_AT + 5 * N_STEPS + 1, 10))
        assert set(np.unique(returns)) <= set(range(11))
        assert np.isfinite(logs.diagnostics["approx_kl"]).all()
        assert np.isnan(logs.diagnostics["grad_norm"]).all()


@pytest.mark.slow
def test_report_from_progress_csv_alone(run_dir, tmp_path):
    shutil.copy(run_dir / "progress.csv", tmp_path / "progress.csv")
    logs = load_run(tmp_path)
    assert logs.events == []
    assert "eval/mean_reward" in logs.return_label
    assert np.nanmax(logs.returns["best_return"]) == pytest.approx(10.0)
    assert np.isfinite(logs.diagnostics["approx_kl"]).sum() >= FLIP_AT // N_STEPS
    result = report(tmp_path, "-o", tmp_path / "report.png")
    assert result.returncode == 0, result.stderr
    assert png_size((tmp_path / "report.png").read_bytes())[0] >= 1000


@pytest.mark.slow
def test_run_without_records_exits_with_status_2(tmp_path):
    result = report(tmp_path, "-o", tmp_path / "report.png")
    assert result.returncode == 2
    assert "no collapse_monitor/collapse_returns.csv" in result.stderr
    assert not (tmp_path / "report.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["-o", "report.pdf"], "must end in .png or .html"),
        (["-o", "report.png", "--event", "3"], "event must be between 1 and 2"),
        (["-o", "report.html", "--event", "0"], "event must be between 1 and 2"),
    ],
)
def test_bad_arguments_exit_with_status_2(run_dir, tmp_path, capsys, arguments, message):
    arguments[1] = str(tmp_path / arguments[1])
    try:
        status = main([str(run_dir), *arguments])
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    assert status == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.glob("report.*"))


@pytest.mark.slow
@pytest.mark.parametrize("entry_point", ["collapse_report", "collapse report"])
def test_an_event_asked_of_a_run_without_collapses_exits_with_status_2(run_dir, tmp_path, capsys, entry_point):
    shutil.copy(run_dir / "progress.csv", tmp_path / "progress.csv")
    output = tmp_path / "report.png"
    arguments = [str(tmp_path), "-o", str(output), "--event", "1"]
    status = main(arguments) if entry_point == "collapse_report" else collapse_main(["report", *arguments])
    assert status == 2
    assert "this run recorded no collapse, so there is no event 1" in capsys.readouterr().err
    assert not output.exists()
