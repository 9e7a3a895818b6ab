"""The ``gait`` command: one entry point for every stage of the pipeline."""

from __future__ import annotations

import os
import sys
import threading
import warnings

# OpenCV's and FFmpeg's own messages ("moov atom not found") would come before gait's one line
# about the same problem: silenced, unless asked for in the environment.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

import click  # noqa: E402

from gaitcli.configs import configs_group
from gaitcli.evaluate import embed_cmd, eval_cmd, identify_cmd
from gaitcli.export import export_cmd
from gaitcli.gallery import gallery_group
from gaitcli.import_checkpoint import import_checkpoint_cmd
from gaitcli.kernels import build_kernels_cmd
from gaitcli.pack import inspect_cmd, pack_group
from gaitcli.partition import import_partition_cmd
from gaitcli.prep import prep
from gaitcli.score import score_cmd
from gaitcli.segment import segment_cmd
from gaitcli.study import study_cmd
from gaitcli.synth import synth
from gaitcli.train import train_cmd
from gaitprep.errors import GaitError, describe_os_error, one_line


def _debug(ctx: click.Context) -> bool:
    return bool((ctx.obj or {}).get("debug") or os.environ.get("GAIT_DEBUG"))


class GaitGroup(click.Group):
    """The one place where errors become lines: a :class:`GaitError` prints its message, an
    operating-system error (full disk, permissions, read errors) prints the file and the cause.
    ``gait --debug`` (or ``GAIT_DEBUG=1``) lets the traceback through instead."""

    def invoke(self, ctx: click.Context):
        def quiet_os_errors(args: threading.ExceptHookArgs) -> None:
            """A background thread's OS error (TensorBoard's writer on a full disk) is re-raised
            by its owner in the foreground, which reports it in one line: no second traceback."""
            if _debug(ctx) or not issubclass(args.exc_type, OSError):
                threading.__excepthook__(args)

        previous, threading.excepthook = threading.excepthook, quiet_os_errors
        try:
            with warnings.catch_warnings():
                if not (ctx.params.get("debug") or os.environ.get("GAIT_DEBUG")):
                    # PyTorch's advice to developers is noise to a user of the command
                    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\b")
                return super().invoke(ctx)  # runs cli() below, which records --debug in ctx.obj
        except BrokenPipeError:  # `gait inspect PACK | head`: the reader left, say nothing
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(1) from None
        except (GaitError, OSError) as e:
            if _debug(ctx):
                raise
            text = one_line(e) if isinstance(e, GaitError) else describe_os_error(e, action="use")
            raise click.ClickException(text) from None
        finally:
            threading.excepthook = previous


@click.group(
    cls=GaitGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="gait-toolkit", prog_name="gait")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """gait: gait recognition from silhouettes, end to end.

    \b
    Stages:
      gait synth    make raw silhouette sequences in the CASIA-B / OU-MVLP layouts
      gait segment  silhouettes of a walker from a fixed camera's video or frames
      gait prep     normalize raw frames into one HDF5 pack (resumable, with a manifest)
      gait inspect  summarize a pack (--json, --montage)
      gait pack     merge the shards of a `gait prep --shard` job array
      gait train    train a set-based model with the Center-ranked loss (CPU, CUDA, DDP)
      gait embed    embed the sequences of a pack with a trained model
      gait eval     protocol numbers (per-view rank-1, CMC, mAP; Gait3D, GREW, CCPG, HID) and
                    reports (html, json, csv)
      gait score    Gait3D, GREW, CCPG, HID figures (and submissions) from saved embeddings
      gait build-kernels  the native int8 kernels of gait eval (make install runs it)
      gait identify rank the gallery subjects for one raw sequence folder
      gait gallery  enrol named people for identify (add, list, remove)
      gait import-checkpoint  an OpenGait GaitSet / GaitBase checkpoint as a gait run folder
      gait import-partition   an OpenGait partition file (Gait3D.json) as a gait protocol file
      gait study    a grid of runs from YAML: train, evaluate, compare across seeds
      gait configs  the shipped configs and studies by name (list, show)
      gait export   a trained model as ONNX, checked against PyTorch
    Run `gait COMMAND --help` for each command's options.
    """
    ctx.obj = {"debug": debug}


cli.add_command(synth)
cli.add_command(prep)
cli.add_command(inspect_cmd)
cli.add_command(pack_group)
cli.add_command(train_cmd)
cli.add_command(embed_cmd)
cli.add_command(eval_cmd)
cli.add_command(score_cmd)
cli.add_command(build_kernels_cmd)
cli.add_command(identify_cmd)
cli.add_command(import_checkpoint_cmd)
cli.add_command(import_partition_cmd)
cli.add_command(study_cmd)
cli.add_command(configs_group)
cli.add_command(export_cmd)
cli.add_command(gallery_group)
cli.add_command(segment_cmd)
