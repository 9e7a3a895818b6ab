"""``gait build-kernels``: build the native int8 distance kernels, the one step that compiles
them (:func:`gaittrain.evaluation.native.build`)."""

from __future__ import annotations

import click

from gaittrain.evaluation import native


@click.command("build-kernels")
def build_kernels_cmd() -> None:
    """Build the native int8 distance kernels of `gait eval --precision int8|auto` into
    $GAIT_CACHE (default ~/.cache/gait), or check the build already there. `make install` runs
    this; `gait eval` itself never compiles: without a build, int8 ranks through PyTorch (the
    same figures, more slowly) and `auto` takes float32.

    \b
    The kernels need a CPU with AVX-512 F, BW, DQ and VNNI and F16C, and a C compiler ($CC,
    else cc; given 120 s). Prints one line:
      native int8 kernels: built PATH
      native int8 kernels: up to date: PATH
      native int8 kernels: not built: REASON (int8 evaluation uses the PyTorch path, same figures)

    \b
    Exit status 0 also where this machine cannot run or build them (GAIT_NATIVE=0, no AVX-512
    VNNI, no C compiler, a compiler that rejects the source or takes over 120 s): not an error,
    int8 evaluation still works. 1 where something should be fixed: the cache cannot be written,
    or a library just built fails its checks.
    """
    library, outcome = native.build()
    if library is None:
        line = f"not built: {outcome} (int8 evaluation uses the PyTorch path, same figures)"
    elif outcome == "built":
        line = f"built {library}"
    else:
        line = f"{outcome}: {library}"
    click.echo(f"native int8 kernels: {line}")
