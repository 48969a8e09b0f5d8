"""The documentation stays true to the code.

- The usage examples in the public docstrings run and print what they say.
- ``docs/compile-report.md`` was written from the kernel sources and specialisations of this
  tree (its fingerprint, recomputed without compiling), and every row in it passes.
- Every ``FASTRNN_*`` environment variable the tree reads is in ``docs/environment.md``.
- The tier table of ``docs/kernels.md`` is the one the tier choice gives.
- Relative links and their anchors resolve; the README stays a front door (short, no
  project history).
"""

from __future__ import annotations

import doctest
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastrnn.functional
import fastrnn.layer_norm
import fastrnn.modules
import fastrnn.recurrent

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
COMPILE_REPORT = DOCS / "compile-report.md"
PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("module", [fastrnn.modules, fastrnn.recurrent, fastrnn.functional, fastrnn.layer_norm], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0




def _report_rows(text: str) -> list[list[str]]:
    """The cells of each row of the "Every row" table."""
    table = text[text.index("## Every row"):].splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table if line.startswith("| ")]
    assert rows and rows[0][0] == "kernel", rows[:1]
    return rows[1:]


def test_compile_report_is_current():
    pytest.importorskip("triton", reason="the compile report's specialisations need triton")
    from fastrnn.kernels import report

    text = COMPILE_REPORT.read_text()
    written = report.parse_fingerprint(text)
    assert written is not None, f"{COMPILE_REPORT.name} has no fingerprint line"
    command = report.command(written, "docs/compile-report.md")
    # In a fresh process: cells other tests define (and the registry keeps) must not count.
    probe = (
        "import json, sys; from fastrnn.kernels import report; "
        "fp = report.fingerprint(json.loads(sys.argv[1]), sys.argv[2]); "
        "print(json.dumps([fp, report.row_keys(report.specialisations(sys.argv[2]))]))"
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", probe, json.dumps(written["imports"]), written["tier"]],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    now, expected = json.loads(out.stdout.strip().splitlines()[-1])
    listed = [" ".join(row[:4]) for row in _report_rows(text)]
    stale = f"docs/compile-report.md is stale: run {command}"
    missing, extra = sorted(set(expected) - set(listed)), sorted(set(listed) - set(expected))
    assert listed == expected, f"{stale}\nnot in the file: {missing[:10]}\nno longer compiled: {extra[:10]}"
    assert now == written, f"{stale}\n(the kernel sources changed since it was written)"


def test_compile_report_rows_all_pass():
    """Every row of torch's cells and of fastrnn's own Triton cells (the peephole LSTM, the
    LayerNorm cells) passes, or is a row the tier choice never launches on its arch (a resident
    or cooperative entry whose shared memory passes that arch's limit, or that fits.py's
    *_ARCH_MISSES rule out there; a step configuration its launcher replaces on sm_86 / sm_89;
    a row-kernel configuration the LayerNorm launcher picks on some archs only); no launched row
    spills but the one stack frame norm_rows.ACCEPTED_STACK accepts. (The example cell's rows
    are the report's verdict on a user's code.)"""
    from fastrnn import cells

    own = tuple(f":{c.name}" for c in (*cells.BUILTIN, cells.LSTM_PEEPHOLE)) + (":LayerNormLSTM", ":LayerNormGRU")
    rows = [row for row in _report_rows(COMPILE_REPORT.read_text()) if row[0].endswith(own)]
    launched = [row for row in rows if not row[-1].startswith("not launched on this arch")]
    failed = [row for row in launched if row[-1] != "pass"]
    assert not failed, failed[:10]
    for row in (row for row in rows if row not in launched):
        persistent = row[0].startswith(("resident-", "coop")) and row[3] != "sm_90"
        step = row[0].startswith(("forward:", "backward:")) and row[3] in ("sm_86", "sm_89")
        assert persistent or step or row[0].startswith("norm-"), row
    spilled = [row for row in launched if int(row[5]) != 0]
    assert all("accepted (norm_rows.ACCEPTED_STACK)" in row[-2] for row in spilled), spilled
    assert [(row[0], row[1], row[3]) for row in spilled] == [("norm-backward:LayerNormLSTM", "float32", "sm_100")]
    assert {row[3] for row in rows} == {"sm_80", "sm_86", "sm_89", "sm_90", "sm_100"}



_SOURCES = ("fastrnn", "kernels", "tests", "benchmarks", "examples", ".ci")


def _variables_in_tree() -> set[str]:
    names, constants = set(), set()
    for top in _SOURCES:
        for path in (REPO / top).rglob("*"):
            if path.is_symlink() or not path.is_file() or path.suffix not in (".py", "") or "__pycache__" in path.parts:
                continue
            text = path.read_text(errors="replace")
            names |= set(re.findall(r"\bFASTRNN_[A-Z0-9_]+\b", text))
            constants |= set(re.findall(r"^\s*(FASTRNN_[A-Z0-9_]+)\s*=", text, re.M))  # Python names, not variables
    return names - constants


def test_every_environment_variable_is_documented():
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", (DOCS / "environment.md").read_text(), re.M))
    used = _variables_in_tree()
    assert {"FASTRNN_BACKEND", "FASTRNN_TIER", "FASTRNN_FULL"} <= used
    assert used <= documented, f"not in docs/environment.md: {sorted(used - documented)}"
    assert "TRITON_INTERPRET" in documented



_KINDS = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")
_DTYPES = {"fp32 / TF32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


def _ranges(values: list[int]) -> str:
    spans, start = [], None
    for h in range(1, max(values, default=0) + 2):
        if h in values and start is None:
            start = h
        elif h not in values and start is not None:
            spans.append(f"H ≤ {h - 1}" if start == 1 else f"{start} ≤ H ≤ {h - 1}")
            start = None
    return ", ".join(spans) or "—"


def resident_table() -> str:
    """The table of docs/kernels.md: where ``auto`` runs the resident tier (sm_90)."""
    from fastrnn.backends.triton import tier_for

    lines = ["| cell | " + " | ".join(_DTYPES) + " |", "|---|" + "---|" * len(_DTYPES)]
    for kind in _KINDS:
        cells = [_ranges([h for h in range(1, 513) if tier_for(kind, h, 0, dtype, "cpu") == "resident"])
                 for dtype in _DTYPES.values()]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_kernels_doc_resident_table(monkeypatch):
    pytest.importorskip("triton", reason="the tier choice reads the kernels' fits table")
    monkeypatch.delenv("FASTRNN_TIER", raising=False)
    monkeypatch.setenv("FASTRNN_SELF_CHECK", "0")
    table = resident_table()
    assert table in (DOCS / "kernels.md").read_text(), f"docs/kernels.md should hold this table:\n{table}"




def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of ``path``."""
    anchors = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans: `kernel[grid](...)` is no link
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = (page.parent / file).resolve() if file else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_prose_has_no_project_history(page):
    text = page.read_text()
    assert not re.search(r"\bissue\s+#?\d+|#\d{1,4}\b", text, re.I), re.search(r".*issue.*", text, re.I)
    assert "DESIGN.md" not in text  # not part of the repository


def test_readme_is_a_front_door():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 400
    for command in ("bash .ci/run", "pytest benchmarks/ --benchmark-only --bench-out benchmarks/results/cpu",
                    "benchmarks/results/cpu.png"):
        assert command in text, command


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_compile_report_has_the_example_cell_on_every_tier():
    """The user cell of examples/custom_cell.py is compiled like torch's cells: its rows are
    in the written report, forward and backward of every tier and variant (whether each
    passes is the report's verdict on the user's code, listed there)."""
    text = COMPILE_REPORT.read_text()
    rows = _report_rows(text)
    kernels = {row[0] for row in rows}
    torch_kernels = {k.split(":")[0] for k in kernels if k.endswith(":LSTM")}
    assert torch_kernels >= {"forward", "backward", "resident-forward", "resident-backward",
                             "coop-forward", "coop-backward", "coop-reg-forward", "coop-reg-backward"}
    assert {k.split(":")[0] for k in kernels if k.endswith(":CIFG")} == torch_kernels


def test_readme_expectations_are_the_reports():
    """The README's per-step expectations of the persistent tiers are the compile report's
    (recomputed from the compiled code), not numbers typed once and left to go stale."""
    report = {}
    section = COMPILE_REPORT.read_text().split("## Expected time per step", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 13 and cells[1].isdigit():
            cell, b, t, h, dtype = cells[:5]
            report[(cell, b, t, h, dtype)] = (cells[6], cells[7], cells[10], cells[11])
    dtypes = {"bf16 / fp16": ("bfloat16", "float16"), "fp32 (TF32)": ("float32-tf32",)}
    readme = (REPO / "README.md").read_text()
    rows = re.findall(r"^\s*\| (LSTM|GRU) (\d+), (\d+), (\d+) \| ([^|]+?) \| [^|]+ \| ([\d.]+) / ([\d.]+) \| "
                      r"([\d.]+) / ([\d.]+) \|$", readme, re.M)
    assert len(rows) >= 4, "the README's table of expectations is missing"
    for cell, b, t, h, label, *numbers in rows:
        for dtype in dtypes[label]:
            assert report[(cell, b, t, h, dtype)] == tuple(numbers), (cell, b, t, h, dtype)


def test_readme_variant_table_is_the_recorded_run():
    """The README's table of the variants on the CPU is ``ratio_report.variant_markdown`` of
    the recorded run it names (numbers printed from the JSON, not typed)."""
    import json
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    import ratio_report

    run = json.loads((REPO / "benchmarks" / "results" / "cpu-variants.json").read_text())
    assert run["variant_cases"], "the recorded run has no variant cases"
    assert ratio_report.variant_markdown(run) in (REPO / "README.md").read_text()
