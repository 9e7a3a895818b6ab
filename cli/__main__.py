"""``python -m gaitcli``: the same as the ``gait`` command."""

from gaitcli.main import cli

cli()
