"""benchmarks/section_times.py: the walkthrough timed section by section. No timing is asserted here: the figures
belong to the benchmark, on a quiet machine (docs/workshop.md)."""

import json
import sys
from pathlib import Path

import nbformat

from checkpoints import small_params, write_checkpoint

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import section_times  # noqa: E402


def test_every_code_cell_belongs_to_the_numbered_section_above_it():
    notebook = nbformat.read(section_times.NOTEBOOK, as_version=4)
    sections = section_times.section_of_each_cell(notebook)
    code_sections = list(dict.fromkeys(s for s, cell in zip(sections, notebook.cells) if cell.cell_type == "code"))
    assert [title.split(".")[0] for title in code_sections] == [str(number) for number in range(1, len(code_sections) + 1)]
    what_if = next(index for index, cell in enumerate(notebook.cells) if "def what_if_forward" in cell.source)
    assert sections[what_if].startswith("12. What if")


def test_the_table_lists_each_section_and_the_total():
    table = section_times.markdown_table({"1. The checkpoint": 1.25, "2. The tokenizer": 0.5}, 2.0)
    assert table.splitlines() == ["| section | seconds |", "| --- | ---: |", "| 1. The checkpoint | 1.2 |",
                                  "| 2. The tokenizer | 0.5 |", "| **total**, the kernel's start included | **2.0** |"]


def test_the_benchmark_times_every_section_of_a_run_and_writes_json(tmp_path, capsys):
    folder = write_checkpoint(tmp_path / "small", small_params(dim=64, n_layers=1, n_heads=4, n_kv_heads=2), model="small")
    written = tmp_path / "times.json"
    assert section_times.main(["--checkpoint", str(folder), "--prompt", "", "--json", str(written)]) == 0
    report = json.loads(written.read_text())
    assert list(report["sections"])[0] == "1. The checkpoint" and any(t.startswith("12. What if") for t in report["sections"])
    assert 0 < sum(report["sections"].values()) <= report["total_seconds"]
    assert report["machine"]["cores"] >= 1 and "load_average_before" in report
    assert "| **total**, the kernel's start included |" in capsys.readouterr().out
