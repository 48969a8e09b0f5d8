"""Packaging, as a user meets it: the installs the README shows, used from the places a user
runs them (the repository root included).

- CPU machine: ``pip install .`` resolves without triton (the CPU torch wheel does not bring
  it) and runs the reference backend; asking for the triton backend says why it cannot.
- GPU machine: ``pip install ".[triton]"`` gives the kernels; ``python -m
  fastrnn.kernels.report`` starts from the repository root, where the source tree's
  ``fastrnn/`` shadows the installed package (``fastrnn/kernels`` is a link to ``kernels/``
  for that reason).
- ``pip install -e .`` maps ``fastrnn.kernels`` onto ``kernels/``.
- Never a top-level ``kernels`` module (that name belongs to another PyPI project); the
  wheel carries ``py.typed``, the C++ loops' source and the LICENSE, and mypy sees fastrnn's
  annotations.

Fast and offline by construction:

- Each venv is created ``--without-pip`` and sees this environment's packages (torch,
  triton, numpy, pip, setuptools) through a ``.pth`` file naming a directory of symlinks to
  them: reinstalling torch (~1 GB) would take minutes and need the network. pip counts what
  it sees there as installed, so ``pip install`` (with dependency resolution, ``--no-index``)
  succeeds exactly when every requirement is among them: leaving triton out of the
  symlinks makes a CPU machine. The symlinks leave out everything of fastrnn's own (its
  dist-info, the editable finder, every ``.pth``), so a venv can only import the fastrnn
  this test installs.
- The source is one copy per module (the build writes ``build/`` and ``*.egg-info`` next to
  the sources; other sessions share the checkout). Three venvs, one install each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SITE = Path(sysconfig.get_paths()["purelib"])
OWN = ("fastrnn", "__editable__", "_fastrnn", "kernels")
TRITON = ("triton",)  # left out of the CPU machine's packages

PROBE = textwrap.dedent(
    """
    import importlib.util, json, sys
    import fastrnn, fastrnn.kernels
    print(json.dumps({
        "fastrnn": fastrnn.__file__,
        "kernels": fastrnn.kernels.__file__,
        "top_level_kernels": importlib.util.find_spec("kernels") is not None,
        "triton": importlib.util.find_spec("triton") is not None,
        "prefix": sys.prefix,
    }))
    """
)

# A user's first lines on a CPU machine: the module runs and matches torch.nn; the triton
# backend refuses with its reason.
CPU_USE = textwrap.dedent(
    """
    import torch, fastrnn
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 4)
    lstm = fastrnn.LSTM(3, 4)
    lstm.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(lstm(x)[0], ref(x)[0])
    try:
        fastrnn.LSTM(3, 4, backend="triton")(x)
    except RuntimeError as exc:
        print("REFUSED:", exc)
    """
)


def _copy_source(dest: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", ".venv", ".ci-venv", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".hypothesis", ".benchmarks", "out")
    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    return dest


def _fresh_venv(root: Path, leave_out: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    deps = root / "deps"
    deps.mkdir()
    for entry in SITE.iterdir():
        if entry.name.startswith(OWN + leave_out) or entry.suffix == ".pth":
            continue
        (deps / entry.name).symlink_to(entry)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "_fastrnn_test_deps.pth").write_text(f"{deps}\n")
    return python


def _env(interpret: bool = True):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV")) and k != "TRITON_INTERPRET"}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return env


def _run(python: Path, args: list[str], cwd: Path, interpret: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), *args], cwd=cwd, env=_env(interpret), capture_output=True, text=True,
                          timeout=300)


def _install(python: Path, target: str, cwd: Path, editable: bool = False) -> None:
    # Dependencies are resolved (no --no-deps): every requirement must be among the venv's packages.
    cmd = ["-m", "pip", "install", "--no-build-isolation", "--no-index", "-q"]
    cmd += ["-e", target] if editable else [target]
    install = _run(python, cmd, cwd)
    assert install.returncode == 0, install.stdout + install.stderr


def _probe(python: Path, cwd: Path) -> dict:
    probe = _run(python, ["-c", PROBE], cwd)
    assert probe.returncode == 0, probe.stderr
    return json.loads(probe.stdout.strip().splitlines()[-1])


def _installed_site(python: Path, outside: Path) -> Path:
    info = _probe(python, outside)
    site = Path(info["fastrnn"]).parents[1]
    assert site.is_relative_to(Path(info["prefix"])), info
    return site


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return _copy_source(tmp_path_factory.mktemp("packaging") / "src")


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("elsewhere")


@pytest.fixture(scope="module")
def cpu_python(tmp_path_factory, source, outside) -> Path:
    """A CPU machine's venv (torch and numpy, no triton) after ``pip install .``."""
    python = _fresh_venv(tmp_path_factory.mktemp("cpu"), leave_out=TRITON)
    # the fresh venv cannot import fastrnn before the install (nothing leaks in)
    before = _run(python, ["-c", "import fastrnn"], outside)
    assert before.returncode != 0 and "No module named 'fastrnn'" in before.stderr, before.stderr
    _install(python, str(source), outside)
    return python


@pytest.fixture(scope="module")
def gpu_python(tmp_path_factory, source, outside) -> Path:
    """A venv with triton after ``pip install ".[triton]"`` (the GPU machine's command)."""
    python = _fresh_venv(tmp_path_factory.mktemp("gpu"))
    _install(python, f"{source}[triton]", outside)
    return python


@pytest.fixture(scope="module")
def kernel_sources():
    return sorted(p.name for p in (REPO / "kernels").glob("*.py"))


def test_cpu_install_needs_no_triton_and_runs(cpu_python, outside):
    info = _probe(cpu_python, outside)
    assert info["triton"] is False  # pip resolved the install without it
    assert info["top_level_kernels"] is False
    use = _run(cpu_python, ["-c", CPU_USE], outside)
    assert use.returncode == 0, use.stderr
    assert "REFUSED: fastrnn: backend='triton' cannot run on cpu: triton could not be imported" in use.stdout
    assert "NumPy" not in use.stderr  # torch finds numpy (a dependency): no warning at import


def test_cpu_install_used_from_repository_root(cpu_python, source):
    # the source tree's fastrnn/ shadows the installed one here; fastrnn.kernels must still import
    probe = _probe(cpu_python, source)
    assert Path(probe["fastrnn"]).resolve() == (source / "fastrnn" / "__init__.py").resolve()
    assert Path(probe["kernels"]).resolve() == (source / "kernels" / "__init__.py").resolve()


def test_gpu_install_report_command_from_repository_root(gpu_python, source):
    # The README's command, where a user runs it. --help stops before compiling (the full
    # report runs in tests/test_kernel_report.py); importing the kernels needs triton and numpy.
    report = _run(gpu_python, ["-m", "fastrnn.kernels.report", "--help"], source, interpret=False)
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith("usage:")
    kernels = _run(gpu_python, ["-c", "import fastrnn.kernels.recurrent_step, numpy, triton"], source,
                   interpret=False)
    assert kernels.returncode == 0, kernels.stderr


def test_gpu_install_contents(gpu_python, outside, kernel_sources):
    info = _probe(gpu_python, outside)
    assert info["triton"] is True and info["top_level_kernels"] is False
    assert Path(info["kernels"]).parts[-3:] == ("fastrnn", "kernels", "__init__.py")
    site = _installed_site(gpu_python, outside)
    installed = sorted(p.name for p in (site / "fastrnn" / "kernels").glob("*.py"))
    assert installed == kernel_sources
    assert not (site / "kernels").exists()
    assert not (site / "fastrnn" / "kernels").is_symlink()  # the wheel holds files, not the source link
    (dist_info,) = site.glob("fastrnn-*.dist-info")
    files = [line.split(",")[0] for line in (dist_info / "RECORD").read_text().splitlines()]
    assert "fastrnn/kernels/__init__.py" in files and "fastrnn/py.typed" in files
    for source in ("cpu_loops.h", "cpu_loops_lstm.cpp", "cpu_loops_gru_rnn.cpp", "cpu_loops_norm.cpp",
                   "cpu_loops_random.cpp"):
        assert f"fastrnn/backends/{source}" in files
    assert not [f for f in files if f.startswith("kernels/")]
    assert (dist_info / "licenses" / "LICENSE").read_text().startswith("MIT License") or \
        (dist_info / "LICENSE").read_text().startswith("MIT License")


def test_metadata_dependencies_and_extras(gpu_python, outside):
    site = _installed_site(gpu_python, outside)
    (dist_info,) = site.glob("fastrnn-*.dist-info")
    meta = Parser().parsestr((dist_info / "METADATA").read_text())
    requires = meta.get_all("Requires-Dist")
    base = sorted(r.split(">")[0].split(";")[0].strip() for r in requires if "extra ==" not in r)
    assert base == ["ninja", "numpy", "torch"]  # the CPU install: no triton, no matplotlib

    def extra(name):
        return sorted(r.split(">")[0].strip() for r in requires if f'extra == "{name}"' in r)

    assert set(meta.get_all("Provides-Extra")) == {"triton", "examples", "bench", "onnx", "test"}
    assert extra("onnx") == ["onnx", "onnxscript"]  # what torch.onnx.export(dynamo=True) needs
    assert extra("triton") == ["triton"]
    assert extra("examples") == ["matplotlib"]  # the examples plot
    assert {"pytest-benchmark", "matplotlib"} <= set(extra("bench"))  # the benchmark plot
    assert {"triton", "matplotlib", "mypy", "onnxruntime"} <= set(extra("test"))  # interpreter tests, examples, typing, ONNX


def test_type_checkers_see_annotations(gpu_python, outside):
    # Without py.typed mypy stops at "module is installed, but missing library stubs or py.typed marker".
    (outside / "typed.py").write_text(textwrap.dedent(
        """
        import fastrnn
        from fastrnn.functional import recurrent_stack
        cell: fastrnn.LSTMCell = fastrnn.LSTMCell(4, 5, backend="reference")
        reveal_type(recurrent_stack)
        fastrnn.GRUCell(4, 5, bias=None)  # wrong type: mypy must see the signature to say so
        """
    ))
    # torch's own annotations are skipped: checking them costs a minute and is not fastrnn's business
    (outside / "mypy.ini").write_text("[mypy]\n[mypy-torch.*]\nfollow_imports = skip\n")
    # mypy comes with the test extra; it runs from outside the repository, which would shadow the install
    mypy = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--no-incremental",
         "--python-executable", str(gpu_python), "typed.py"],
        cwd=outside, env=_env(), capture_output=True, text=True, timeout=300,
    )
    stdout, stderr, status = mypy.stdout, mypy.stderr, mypy.returncode
    assert "missing library stubs or py.typed marker" not in stdout, stdout
    assert "fastrnn.schedule.Schedule" in stdout, stdout  # the revealed signature, read from the package
    assert 'Argument "bias" to "GRUCell" has incompatible type "None"; expected "bool"' in stdout, stdout
    assert status == 1 and "Found 1 error" in stdout, stdout + stderr


def test_editable_install_maps_kernels_onto_the_source(tmp_path, source, outside):
    python = _fresh_venv(tmp_path)
    _install(python, str(source), outside, editable=True)
    info = _probe(python, outside)
    assert Path(info["prefix"]) == tmp_path / "venv"
    assert info["top_level_kernels"] is False
    assert Path(info["fastrnn"]).resolve() == (source / "fastrnn" / "__init__.py").resolve()
    assert Path(info["kernels"]).resolve() == (source / "kernels" / "__init__.py").resolve()
