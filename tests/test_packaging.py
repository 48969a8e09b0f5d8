"""Packaging: ``pip install .`` (and ``-e .``) give ``fastrnn.kernels``, never a top-level
``kernels`` (that name belongs to another PyPI project).

Each test installs a copy of the working tree into a fresh venv and imports from a
temporary directory, outside the repository, so nothing resolves through the source tree
or this environment's editable install.

Fast and offline by construction:

- The venv is created ``--without-pip`` and sees this environment's packages (torch,
  triton, pip, setuptools) through a ``.pth`` file naming a directory of symlinks to
  them. torch is ~1 GB: reinstalling it would take minutes and need the network. The
  symlink directory leaves out everything of fastrnn's own (its dist-info, the editable
  finder, every ``.pth``), so the fresh venv can only import fastrnn from what this
  test installs, and pip there never sees (or offers to uninstall) this env's fastrnn.
- ``pip install --no-deps --no-build-isolation --no-index``: dependencies are already
  importable, the build backend is the setuptools found through the ``.pth``.
- The source is a copy (the build writes ``build/`` and ``*.egg-info`` next to the
  sources; other sessions share the checkout).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SITE = Path(sysconfig.get_paths()["purelib"])
OWN = ("fastrnn", "__editable__", "_fastrnn", "kernels")

PROBE = textwrap.dedent(
    """
    import importlib.util, json, sys
    import fastrnn, fastrnn.kernels
    print(json.dumps({
        "fastrnn": fastrnn.__file__,
        "kernels": fastrnn.kernels.__file__,
        "top_level_kernels": importlib.util.find_spec("kernels") is not None,
        "prefix": sys.prefix,
        "cwd_on_path": any(p in ("", ".") for p in sys.path),
    }))
    """
)


def _copy_source(dest: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", ".venv", ".ci-venv", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".hypothesis", ".benchmarks", "out")
    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    return dest


def _fresh_venv(root: Path) -> Path:
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    deps = root / "deps"
    deps.mkdir()
    for entry in SITE.iterdir():
        if entry.name.startswith(OWN) or entry.suffix == ".pth":
            continue
        (deps / entry.name).symlink_to(entry)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "_fastrnn_test_deps.pth").write_text(f"{deps}\n")
    return python


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["TRITON_INTERPRET"] = "1"
    return env


@pytest.fixture(scope="module")
def kernel_sources():
    return sorted(p.name for p in (REPO / "kernels").glob("*.py"))


@pytest.mark.parametrize("editable", [False, True], ids=["pip-install", "pip-install-editable"])
def test_install_gives_fastrnn_kernels_and_no_top_level_kernels(tmp_path, editable, kernel_sources):
    src = _copy_source(tmp_path / "src")
    python = _fresh_venv(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    # the fresh venv cannot import fastrnn before the install (nothing leaks in)
    before = subprocess.run([str(python), "-c", "import fastrnn"], cwd=outside, env=_env(),
                            capture_output=True, text=True)
    assert before.returncode != 0 and "No module named 'fastrnn'" in before.stderr, before.stderr

    cmd = [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    cmd += ["-e", str(src)] if editable else [str(src)]
    install = subprocess.run(cmd, cwd=outside, env=_env(), capture_output=True, text=True)
    assert install.returncode == 0, install.stdout + install.stderr

    probe = subprocess.run([str(python), "-c", PROBE], cwd=outside, env=_env(), capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    info = json.loads(probe.stdout.strip().splitlines()[-1])
    assert Path(info["prefix"]) == tmp_path / "venv"
    assert info["top_level_kernels"] is False
    if editable:
        # the editable install maps fastrnn.kernels onto the source's kernels/ folder
        assert Path(info["fastrnn"]).resolve() == (src / "fastrnn" / "__init__.py").resolve()
        assert Path(info["kernels"]).resolve() == (src / "kernels" / "__init__.py").resolve()
    else:
        assert Path(info["kernels"]).parts[-3:] == ("fastrnn", "kernels", "__init__.py")
        site = Path(info["fastrnn"]).parents[1]
        assert site.is_relative_to(tmp_path / "venv"), info
        installed = sorted(p.name for p in (site / "fastrnn" / "kernels").glob("*.py"))
        assert installed == kernel_sources
        assert not (site / "kernels").exists()
        (record,) = site.glob("fastrnn-*.dist-info/RECORD")  # the wheel's file list
        files = [line.split(",")[0] for line in record.read_text().splitlines()]
        assert "fastrnn/kernels/__init__.py" in files
        assert not [f for f in files if f.startswith("kernels/")]
