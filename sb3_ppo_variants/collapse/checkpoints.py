"""The checkpoint ring: the last few checkpoints of a run, and copies of those around each collapse."""

from __future__ import annotations

import shutil
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_ppo_variants.collapse.events import CHECKPOINT_FOLDER, CollapseEvent, collapse_folder

__all__ = ["Checkpoint", "CheckpointRing"]


@dataclass(frozen=True)
class Checkpoint:
    """A model saved when a return was followed."""

    timesteps: int
    value: float
    path: Path


class CheckpointRing:
    """Saves ``checkpoints/<T>.zip`` at every followed return and keeps only the last ``size``.

    At a collapse, :meth:`keep` copies the ring (the checkpoints before the drop, the last
    good one and the drop itself) into the event's ``collapse_<k>/`` folder, and the next
    ``keep_after`` saves are copied there too, so that the event holds the checkpoints on
    both sides of its drop.

    :param root: the monitor's folder (``checkpoints/`` and ``collapse_<k>/`` are inside).
    :param size: checkpoints kept in ``checkpoints/``; older ones are deleted.
    :param keep_after: checkpoints copied into an event's folder after its detection.
    """

    def __init__(self, root: Path, size: int, keep_after: int):
        self.root = root
        self.keep_after = keep_after
        self.checkpoints: deque[Checkpoint] = deque(maxlen=size)
        self._following: list[tuple[CollapseEvent, int]] = []  # (event, checkpoints still to copy)
        (root / CHECKPOINT_FOLDER).mkdir(parents=True, exist_ok=True)

    def __iter__(self) -> Iterator[Checkpoint]:
        return iter(self.checkpoints)

    def path_at(self, timesteps: int) -> Path | None:
        """The ring's checkpoint of step ``timesteps``, if it still holds one."""
        return next((item.path for item in self.checkpoints if item.timesteps == timesteps), None)

    def save(self, model: BaseAlgorithm, timesteps: int, value: float) -> bool:
        """Save ``model``; returns whether an event's list of kept checkpoints grew."""
        path = self.root / CHECKPOINT_FOLDER / f"{timesteps}.zip"
        model.save(path)
        if len(self.checkpoints) == self.checkpoints.maxlen and self.checkpoints[0].path != path:
            self.checkpoints[0].path.unlink(missing_ok=True)
        checkpoint = Checkpoint(timesteps, value, path)
        self.checkpoints.append(checkpoint)
        grew = False
        still: list[tuple[CollapseEvent, int]] = []
        for event, remaining in self._following:
            grew = self._copy(event, checkpoint) or grew
            if remaining > 1:
                still.append((event, remaining - 1))
        self._following = still
        return grew

    def keep(self, event: CollapseEvent) -> None:
        """Copy the ring into ``event``'s folder; the next ``keep_after`` saves follow it there."""
        for checkpoint in self.checkpoints:
            if checkpoint.timesteps >= 0:
                self._copy(event, checkpoint)
        if self.keep_after:
            self._following.append((event, self.keep_after))

    def _copy(self, event: CollapseEvent, checkpoint: Checkpoint) -> bool:
        folder = self.root / collapse_folder(event.index)
        folder.mkdir(exist_ok=True)
        kept = folder / f"checkpoint_{checkpoint.timesteps}.zip"
        shutil.copyfile(checkpoint.path, kept)
        if any(item["timesteps"] == checkpoint.timesteps for item in event.checkpoints):
            return False
        event.checkpoints.append(
            {"timesteps": checkpoint.timesteps, "return": checkpoint.value, "path": str(kept.relative_to(self.root))}
        )
        return True
