"""A package that installs like one (issue 22, item 7): the distribution gait-toolkit, its wheel
(the import packages, the shipped configs and studies, every data file read at run time) and
the README's commands from an installed wheel, away from the checkout."""

from __future__ import annotations

import doctest
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gaittrain import shipped
from tests.cli import ROOT, gait

DIST = "gait-toolkit"
#: Import package -> its folder in the checkout (pyproject.toml's package-dir).
PACKAGES = {
    "gaitprep": "gaitprep",
    "gaittrain": "gaittrain",
    "gaitcli": "cli",
    "gaitconfigs": "configs",
}
#: Data files read at run time, relative to their import package (next to ``__file__``).
DATA = [
    "gaittrain/evaluation/int8_distances.c",
    "gaittrain/evaluation/report.html.j2",
    "gaittrain/study/study.html.j2",
    *(f"gaittrain/protocols/{p.name}" for p in (ROOT / "gaittrain" / "protocols").glob("*.yaml")),
]
CONFIG_FILES = sorted(p.relative_to(ROOT / "configs") for p in (ROOT / "configs").rglob("*.yaml"))


# --- the distribution and the shipped configs in this (editable) install --------------------


def test_the_distribution_is_gait_toolkit_and_the_command_stays_gait() -> None:
    dist = importlib.metadata.distribution(DIST)
    assert dist.metadata["Name"] == DIST
    scripts = {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}
    assert scripts == {"gait": "gaitcli.main:cli"}
    r = gait("--version")
    assert r.exit_code == 0 and r.output == f"gait, version {dist.version}\n", r.output


def test_no_code_looks_the_distribution_up_by_its_old_name() -> None:
    """`gait` on the package index is another project: metadata is read as gait-toolkit."""
    old = re.compile(r"""(package_name=|version\(|metadata\(|distribution\()\s*["']gait["']""")
    found = [
        f"{p.relative_to(ROOT)}:{n}"
        for folder in PACKAGES.values()
        for p in (ROOT / folder).rglob("*.py")
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if old.search(line)
    ]
    assert not found


def test_the_editable_install_reads_the_checkouts_configs() -> None:
    assert shipped.folder().resolve() == (ROOT / "configs").resolve()
    want = [p.with_suffix("").as_posix() for p in CONFIG_FILES]
    assert sorted(shipped.names()) == sorted(want)
    assert "tiny" in shipped.names("config") and "studies/loss-demo" in shipped.names("study")


def test_the_examples_of_gaittrain_shipped_hold() -> None:
    failures, tried = doctest.testmod(shipped, raise_on_error=False)
    assert tried and not failures


def test_a_file_wins_over_a_name_and_a_study_answers_to_its_bare_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert shipped.resolve("tiny", "config") == ROOT / "configs" / "tiny.yaml"
    study = ROOT / "configs" / "studies" / "loss-demo.yaml"
    assert shipped.resolve("loss-demo", "study") == study
    assert shipped.resolve("studies/loss-demo", "study") == study
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").write_text("seed: 1\n")
    assert shipped.resolve("tiny", "config") == Path("tiny")  # the file of that name wins
    (tmp_path / "casia-b").mkdir()  # a folder is not a config file: the name still counts
    assert shipped.resolve("casia-b", "config") == ROOT / "configs" / "casia-b.yaml"


def test_names_that_are_neither_a_file_nor_shipped_are_one_line_naming_the_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(shipped.ShippedError) as e:
        shipped.resolve("tiyn", "config")
    line = str(e.value)
    assert "\n" not in line and line.startswith("tiyn is neither a config file nor")
    assert "shipped configs: casia-b, deepgaitv2, " in line and "tiny-gaitbase" in line
    assert "studies/" not in line  # only the kind asked for
    with pytest.raises(shipped.ShippedError, match=r"\(the shipped tiny\?\)"):
        shipped.resolve("configs/tiny.yaml", "config")  # the README's path, outside a checkout
    with pytest.raises(shipped.ShippedError, match="is a shipped study, not a config"):
        shipped.resolve("loss-demo", "config")
    with pytest.raises(shipped.ShippedError, match="shipped studies: studies/loss-demo"):
        shipped.resolve("loss-dem", "study")


def test_gait_configs_list_and_show() -> None:
    r = gait("configs", "list")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == "configs (gait train NAME):"
    assert "studies (gait study NAME):" in lines
    tiny = next(line for line in lines if line.split()[0] == "tiny")
    assert "A small model for CPUs" in tiny
    assert any(line.split()[0] == "studies/loss-demo" for line in lines)
    assert len(lines) == 2 + len(CONFIG_FILES)
    r = gait("configs", "show", "tiny")
    assert r.exit_code == 0 and r.output == (ROOT / "configs" / "tiny.yaml").read_text()
    r = gait("configs", "show", "loss-demo", "--path")
    assert r.output.strip() == str(ROOT / "configs" / "studies" / "loss-demo.yaml")
    r = gait("configs", "show", "nope")
    assert r.exit_code == 1 and r.output.startswith("Error: no shipped config or study is called")


@pytest.mark.parametrize("command", ["train", "study"])
def test_train_and_study_refuse_an_unknown_name_before_anything(tmp_path: Path, command) -> None:
    pack = tmp_path / "p.h5"
    pack.write_bytes(b"")
    r = gait(command, "nope", "--pack", pack, "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    kind = "config" if command == "train" else "study"
    last = r.output.strip().splitlines()[-1]
    assert last.startswith(f"Error: Invalid value for '{kind.upper()}': nope is neither a {kind}")
    assert "(gait configs list)" in last
    assert not (tmp_path / "out").exists()


# --- the wheel ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of a copy of the checkout (tests/ and bench/ included, so that leaving them
    out is checked), built offline as `pip wheel --no-build-isolation` builds it; in a copy so
    that the build's build/ and *.egg-info never land in the checkout."""
    work = tmp_path_factory.mktemp("wheel")
    skip = (".venv", ".git", "build", "runs", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(
        ROOT,
        work / "src",
        ignore=shutil.ignore_patterns(*skip, ".hypothesis", "sample_data", "*.h5", "*.pt"),
    )
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    command += ["--no-index", "-w", str(work / "dist"), str(work / "src")]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    (found,) = (work / "dist").glob("gait_toolkit-*.whl")
    return found


def test_the_wheel_holds_the_packages_the_configs_and_the_data_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names if not n.startswith("gait_toolkit-")}
    assert tops == set(PACKAGES)  # no tests/, bench/, docs/, sample_data/
    for package, folder in PACKAGES.items():  # every module, also of a subpackage added later
        for p in (ROOT / folder).rglob("*.py"):
            assert f"{package}/{p.relative_to(ROOT / folder).as_posix()}" in names
    for p in CONFIG_FILES:
        assert f"gaitconfigs/{p.as_posix()}" in names
    assert "gaitconfigs/studies/loss-demo.yaml" in names
    for data in DATA:
        assert data in names
    info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"  # gait_toolkit-VERSION.dist-info
    meta = zipfile.ZipFile(wheel).read(f"{info}/METADATA")
    assert f"Name: {DIST}" in meta.decode()


@pytest.mark.slow
def test_the_installed_wheel_runs_the_readme_in_miniature(wheel: Path, tmp_path: Path) -> None:
    """Installed with --target, run from a folder outside the checkout with only the install on
    PYTHONPATH (the dependencies come from this venv): imports resolve to the install, every data
    file is there, a shipped study finds its base config, and synth -> prep -> train (a shipped
    config by name) -> eval works."""
    target = tmp_path / "site"
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    subprocess.run([*command, "--target", str(target), str(wheel)], check=True, timeout=300)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}

    def run(*args: str) -> str:
        r = subprocess.run(
            args, cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert r.returncode == 0, f"{args}:\n{r.stdout}\n{r.stderr}"
        return r.stdout + r.stderr

    check = """if True:
        import importlib.metadata, json
        import gaitcli, gaitconfigs, gaitprep, gaittrain
        from gaittrain import shipped
        from gaittrain.data import splits
        from gaittrain.evaluation import native, report
        from gaittrain.study import report as study_report
        from gaittrain.study.spec import load_study
        study = load_study(shipped.resolve("loss-demo", "study"))
        files = [m.__file__ for m in (gaitcli, gaitconfigs, gaitprep, gaittrain)]
        files += [shipped.folder() / "tiny.yaml", splits.PROTOCOLS / "casia-b-lt.yaml"]
        files += [native.SOURCE, report.TEMPLATE, study_report.TEMPLATE]
        print(json.dumps({
            "files": [str(f) for f in files],
            "dist": str(importlib.metadata.distribution("gait-toolkit").locate_file("")),
            "runs": len(study.runs),
        }))
    """
    found = json.loads(run(sys.executable, "-c", check).strip().splitlines()[-1])
    site = target.resolve()
    for f in [*found["files"], found["dist"]]:
        assert Path(f).resolve().is_relative_to(site), f  # not the editable checkout
        assert Path(f).exists(), f
    assert found["runs"] == 30  # its base: ../tiny.yaml was found beside it, installed

    gait_bin = str(target / "bin" / "gait")
    listed = run(gait_bin, "configs", "list")
    assert "\n  tiny " in listed and "\n  studies/loss-demo " in listed
    synth = ("--subjects", "4", "--frames", "8", "--views", "036,090,144", "--workers", "1")
    run(gait_bin, "synth", "casia-b", "raw", *synth)
    run(gait_bin, "prep", "casia-b", "raw", "p.h5", "--workers", "1")
    trained = run(
        *(gait_bin, "train", "tiny", "--pack", "p.h5", "--out", "run", "--iterations", "2"),
        *("--set", "data.workers=0", "--train-subjects", "first:2", "--set", "data.batch.p=2"),
    )
    assert "trained 2 iterations" in trained
    evaluated = run(gait_bin, "eval", "run", "--pack", "p.h5", "--test-subjects", "003-004")
    assert "NM: rank-1" in evaluated and (work / "run" / "report.json").is_file()
