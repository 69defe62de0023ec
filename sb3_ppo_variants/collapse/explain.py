"""What a collapse callback writes beside a collapse: its probe batch and its diagnosis."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from sb3_ppo_variants.collapse import diagnosis
from sb3_ppo_variants.collapse.checkpoints import CheckpointRing
from sb3_ppo_variants.collapse.events import PROBE_FILE, CollapseEvent, collapse_folder

__all__ = ["explain_collapse"]


def explain_collapse(
    event: CollapseEvent,
    root: Path,
    observations: np.ndarray,
    ring: CheckpointRing | None,
    best_model_path: Path | None,
    run_diagnosis: bool = True,
    verbose: int = 0,
) -> None:
    """Save the probe batch into ``collapse_<k>/`` and diagnose the last good against the first bad checkpoint.

    The last good checkpoint is the ring's at ``event.last_good_timesteps`` (else the best
    model), the first bad one the ring's at ``event.drop_start_timesteps``; every checkpoint of
    the ring is also evaluated on the probe batch. ``event.probe`` and ``event.diagnosis`` name
    the files written, relative to ``root``.

    :param event: the collapse, updated in place.
    :param root: the monitor's folder.
    :param observations: the probe batch.
    :param ring: the checkpoints around the drop (``None``: none kept, no diagnosis).
    :param best_model_path: stands in for the last good checkpoint when the ring no longer holds it.
    :param run_diagnosis: ``False`` keeps the probe batch only.
    :param verbose: 1 prints the diagnosis.
    """
    folder = root / collapse_folder(event.index)
    folder.mkdir(exist_ok=True)
    diagnosis.save_probe(folder / PROBE_FILE, observations, best_timesteps=event.best_timesteps or -1)
    event.probe = str((folder / PROBE_FILE).relative_to(root))
    if not run_diagnosis or ring is None:
        return
    good = ring.path_at(event.last_good_timesteps) or best_model_path
    bad = ring.path_at(event.drop_start_timesteps) if event.drop_start_timesteps is not None else None
    if good is None or bad is None:
        return
    try:
        result = diagnosis.diagnose(good, bad, observations, checkpoints=[(item.timesteps, item.path) for item in ring])
    except ValueError as error:  # e.g. not an actor-critic policy
        warnings.warn(f"no diagnosis of collapse {event.index}: {error}", stacklevel=2)
        return
    result.summary.update(good_timesteps=event.last_good_timesteps, bad_timesteps=event.drop_start_timesteps)
    event.diagnosis = str(result.save(folder).relative_to(root))
    if verbose >= 1:
        print(diagnosis.describe(result), end="")
