"""Options shared by several commands."""

from __future__ import annotations

import os

import click

from gaittrain.evaluation.run_eval import memory_size


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


def _memory(ctx, param, text: str) -> int:
    try:
        return memory_size(text)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def max_memory_option(help_text: str):
    """``--max-memory SIZE``: 256MB by default, from 1MB to 1TB (``memory_size``)."""
    return click.option(
        "--max-memory",
        default="256MB",
        show_default=True,
        metavar="SIZE",
        callback=_memory,
        help=help_text + " From 1MB to 1TB (a number alone is bytes).",
    )
