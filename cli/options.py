"""Options shared by several commands."""

from __future__ import annotations

import os

import click


def workers_option(help_text: str):
    """``--workers N``: parallel processes, all cores by default."""
    return click.option(
        "--workers",
        type=click.IntRange(1, 512),
        default=os.cpu_count(),
        show_default="all cores",
        help=help_text,
    )


#: Seeds are non-negative: NumPy's and torch's generators take 0 .. 2**63 - 1.
SEED = click.IntRange(0, 2**63 - 1)
