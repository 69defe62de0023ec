"""Progress over a grid of runs: done, running, failed and to do, with an estimate of the time left.

With ``bar=True`` a tqdm bar (tqdm comes with rl-zoo3) sits on stderr, as ``rl_zoo3.train --progress``
draws one; the one line per finished run that the benchmark always printed still goes to stdout,
now with the same counts, so a log file of a cluster job shows the progress too.
"""

from __future__ import annotations

import sys
import time
from typing import Any


class GridProgress:
    """Counts of a grid being run; the estimate divides what is left by the rate runs finish at.

    :param to_run: runs this command will run (those not already on disk)
    :param bar: draw a tqdm bar on stderr
    """

    def __init__(self, to_run: int, bar: bool = False):
        self.to_run = to_run
        self.done = 0
        self.failed = 0
        self.running = 0
        self.start = time.monotonic()
        self.bar: Any = None
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=to_run, unit="run", dynamic_ncols=True, file=sys.stderr)
            self._refresh_bar()

    @property
    def to_do(self) -> int:
        return self.to_run - self.done - self.failed - self.running

    def seconds_left(self) -> float | None:
        finished = self.done + self.failed
        if finished == 0:
            return None
        rate = finished / (time.monotonic() - self.start)
        return (self.to_run - finished) / rate

    def summary(self) -> str:
        seconds = self.seconds_left()
        left = "" if seconds is None or self.to_run == self.done + self.failed else f"; {_duration(seconds)} left"
        return (
            f"{self.done + self.failed}/{self.to_run}: {self.done} done, {self.running} running, "
            f"{self.failed} failed, {self.to_do} to do{left}"
        )

    def started(self, item: Any) -> None:
        self.running += 1
        self._refresh_bar()

    def finished(self, line: str, failed: bool = False) -> None:
        self.running -= 1
        if failed:
            self.failed += 1
        else:
            self.done += 1
        text = f"{line} [{self.summary()}]"
        if self.bar is not None:
            self._refresh_bar(refresh=False)
            self.bar.update(1)
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def _refresh_bar(self, refresh: bool = True) -> None:
        if self.bar is not None:
            postfix = f"running {self.running}, failed {self.failed}, to do {self.to_do}"
            self.bar.set_postfix_str(postfix, refresh=refresh)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
