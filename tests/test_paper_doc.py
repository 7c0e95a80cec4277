"""The repository explains itself: its citations point at docs/paper.md, and each cited section exists.

Code, notebooks, configs and benchmarks cite the paper through `docs/paper.md section N` (never a
file outside the repository, never a tracker's issue number).
"""

from __future__ import annotations

import os
import re
import subprocess

from conftest import ROOT


def _tracked_text_files():
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in names.split():
        path = os.path.join(ROOT, name)
        if name.endswith((".py", ".ipynb", ".md", ".toml", ".txt")) and os.path.exists(path):
            with open(os.path.join(ROOT, name), encoding="utf-8") as f:
                yield name, f.read()


def test_citations_point_at_sections_that_exist():
    doc = open(os.path.join(ROOT, "docs", "paper.md")).read()
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", doc, re.M)}
    assert sections == set(range(1, 7))
    for label in ('"Measured here"', "Prop. 3.1", "Prop. 3.2", "Prop. 4.1", "Prop. 5.2", "Table 2"):
        assert label.strip('"') in doc, label
    cited = 0
    for name, text in _tracked_text_files():
        if name == "tests/test_paper_doc.py":
            continue
        assert "PAPER.md" not in text, name  # outside the repository
        assert not re.search(r"\bissue #?\d+\b", text, re.I), name  # a tracker's number
        for first, last in re.findall(r"docs/paper\.md sections? (\d+)(?:-(\d+))?", text):
            cited += 1
            for n in range(int(first), int(last or first) + 1):
                assert n in sections, (name, n)
    assert cited >= 8
