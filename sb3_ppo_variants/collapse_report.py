"""Backward-compatible entry point: ``python -m sb3_ppo_variants.collapse_report RUN_DIR -o report.png``.

The report lives in :mod:`sb3_ppo_variants.collapse.report` (also ``python -m sb3_ppo_variants.collapse report``).
"""

import sys

from sb3_ppo_variants.collapse.report import RunLogs, load_run, main, render_diagnosis_png, render_html, render_png

__all__ = ["RunLogs", "load_run", "main", "render_diagnosis_png", "render_html", "render_png"]

if __name__ == "__main__":
    sys.exit(main())
