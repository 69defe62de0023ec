"""Command line: diagnose two saved models, collect a probe batch, draw a run's report.

::

    python -m sb3_ppo_variants.collapse collect-probe GOOD.zip --env PongNoFrameskip-v4 -n 2000 -o probe.npz
    python -m sb3_ppo_variants.collapse diagnose GOOD.zip BAD.zip --probe probe.npz -o out/
    python -m sb3_ppo_variants.collapse report RUN_DIR -o report.html
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

PROG = "python -m sb3_ppo_variants.collapse"


def _diagnose(args: argparse.Namespace) -> int:
    from sb3_ppo_variants.collapse.diagnosis import describe, diagnose, load_probe
    from sb3_ppo_variants.collapse.report import render_diagnosis_png

    diagnosis = diagnose(
        args.good, args.bad, load_probe(args.probe), flip_share=args.flip_share, filters=not args.no_filters
    )
    written = diagnosis.save(args.output)
    render_diagnosis_png(diagnosis, args.output / "diagnosis.png", title=f"{args.good.name} → {args.bad.name}")
    print(describe(diagnosis), end="")
    print(f"diagnosis written to {written.parent}")
    return 0


def _collect_probe(args: argparse.Namespace) -> int:
    from stable_baselines3.common.env_util import make_atari_env, make_vec_env
    from stable_baselines3.common.preprocessing import is_image_space
    from stable_baselines3.common.vec_env import VecEnv, VecFrameStack, VecNormalize, VecTransposeImage

    from sb3_ppo_variants.collapse.diagnosis import collect_probe, load_policy, save_probe

    policy = load_policy(args.model)
    env: VecEnv
    if args.atari:
        env = VecFrameStack(make_atari_env(args.env, n_envs=1, seed=args.seed), n_stack=4)
    else:
        env = make_vec_env(args.env, n_envs=1, seed=args.seed)
    if args.vecnormalize is not None:
        normalized = VecNormalize.load(str(args.vecnormalize), env)
        normalized.training, normalized.norm_reward = False, False
        env = normalized
    if env.observation_space.shape != policy.observation_space.shape:
        # SB3 transposes channel-last images for a CNN policy.
        if is_image_space(env.observation_space) and (
            policy.observation_space.shape == VecTransposeImage(env).observation_space.shape
        ):
            env = VecTransposeImage(env)
        else:
            raise ValueError(
                f"the model's observation space {policy.observation_space.shape} does not match "
                f"{args.env}'s {env.observation_space.shape}"
            )
    observations = collect_probe(policy, env, n_states=args.n, deterministic=args.deterministic, seed=args.seed)
    save_probe(args.output, observations, env_id=args.env, model=str(args.model))
    print(f"{len(observations)} states written to {args.output}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from sb3_ppo_variants.collapse.report import main as report_main

    forwarded = [str(args.run_dir), "-o", str(args.output)]
    if args.event is not None:
        forwarded += ["--event", str(args.event)]
    return report_main(forwarded + (["--title", args.title] if args.title else []))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Explain a policy collapse.")
    commands = parser.add_subparsers(dest="command", required=True)

    diagnose = commands.add_parser("diagnose", help="what changed between a good and a bad model, on a probe batch")
    diagnose.add_argument("good", type=Path, help="the last good model (.zip)")
    diagnose.add_argument("bad", type=Path, help="the first bad model (.zip)")
    diagnose.add_argument("--probe", type=Path, required=True, help="probe batch (.npz with 'observations')")
    diagnose.add_argument("-o", "--output", type=Path, required=True, help="folder for diagnosis.json, layers.csv, ...")
    diagnose.add_argument(
        "--flip-share",
        type=float,
        default=0.5,
        help="share of the full good→bad effect a single layer must reach to be named",
    )
    diagnose.add_argument("--no-filters", action="store_true", help="skip the filter-by-filter interpolation")
    diagnose.set_defaults(run=_diagnose)

    probe = commands.add_parser("collect-probe", help="states met by a model playing an environment")
    probe.add_argument("model", type=Path, help="the model (.zip), normally the best one")
    probe.add_argument("--env", required=True, help="gymnasium id")
    probe.add_argument("-n", type=int, default=2000, help="number of states")
    probe.add_argument("-o", "--output", type=Path, required=True, help="the .npz to write")
    probe.add_argument("--seed", type=int, default=0)
    probe.add_argument("--deterministic", action="store_true", help="greedy actions (default: sampled)")
    probe.add_argument("--atari", action="store_true", help="SB3's Atari wrappers and 4 stacked frames (rl-zoo3's)")
    probe.add_argument("--vecnormalize", type=Path, default=None, help="VecNormalize statistics (.pkl) of the model")
    probe.set_defaults(run=_collect_probe)

    report = commands.add_parser("report", help="the one-page report of a monitored run (PNG or HTML)")
    report.add_argument("run_dir", type=Path)
    report.add_argument("-o", "--output", type=Path, required=True)
    report.add_argument("--event", type=int, default=None, help="collapse (1-based) to zoom on (default: the first)")
    report.add_argument("--title", default=None)
    report.set_defaults(run=_report)

    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except (FileNotFoundError, ValueError) as error:
        print(f"{PROG} {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
