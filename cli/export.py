"""``gait export``: a trained model as ONNX, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path

import click

from gaittrain.inference.export import TOLERANCE, export_onnx


@click.command("export")
@click.argument("run", type=click.Path(path_type=Path, exists=True))
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--pack",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The pack the model was trained on: its normalization goes into the model's metadata, "
    "and its first sequences check the export.",
)
def export_cmd(run, out, pack) -> None:
    """Write the embedding model of RUN (a run folder or checkpoint) to OUT as ONNX: uint8
    frames [T, H, W] of one sequence in (any T), its embedding [parts, dim] out. The
    preprocessing a deployment must reproduce is in the model's metadata (docs/deploy.md).

    Example: gait export runs/demo model.onnx --pack build/demo/casia-b.h5
    """
    found = export_onnx(run, pack, out)
    click.echo(
        f"{out}: ONNX (opset {found['opset']}); onnxruntime vs PyTorch on "
        f"{found['checked']} sequences: max difference {found['max_difference']:.2g} "
        f"(at most {TOLERANCE:g}); per sequence on CPU: onnxruntime "
        f"{1000 * found['onnx_seconds']:.1f} ms, PyTorch {1000 * found['torch_seconds']:.1f} ms"
    )
