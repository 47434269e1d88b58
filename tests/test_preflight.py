"""The workshop's pre-flight check (llama3_support/preflight.py): one OK or FAIL line per requirement, exit 1 on
any FAIL, each FAIL saying what to do. The packages checked are a few chosen here (monkeypatched), so that a
case takes well under a second; the real requirements.txt is read once."""

import importlib.metadata

import pytest
from packaging.requirements import Requirement

from checkpoints import small_params, write_checkpoint
from llama3_support import preflight

INSTALLED = Requirement("pytest>=1")  # surely installed, importable, and at a version above 1


@pytest.fixture
def folder(tmp_path):
    return write_checkpoint(tmp_path / "small", small_params(dim=64, n_layers=1, n_heads=4, n_kv_heads=2), model="small")


@pytest.fixture
def few_packages(monkeypatch):
    """preflight checks only the requirements a test sets here (pytest by default)."""
    chosen = [INSTALLED]
    monkeypatch.setattr(preflight, "requirements", lambda: chosen)
    return chosen


def lines(capsys) -> list:
    return capsys.readouterr().out.splitlines()


def line_about(output: list, subject: str) -> str:
    """The line whose subject (after OK or FAIL) starts with this."""
    return next(line for line in output if line[5:].startswith(subject))


def test_every_requirement_of_requirements_txt_is_checked_at_its_version():
    names = [requirement.name for requirement in preflight.requirements()]
    assert {"torch", "tiktoken", "jupyter", "gguf", "packaging"} <= set(names)
    assert str(next(r for r in preflight.requirements() if r.name == "torch").specifier) == ">=2.4"


def test_a_ready_machine_prints_only_ok_lines_and_exits_0(folder, few_packages, capsys):
    assert preflight.main(["--checkpoint", str(folder)]) == 0
    output = lines(capsys)
    assert [line[:4] for line in output[:-1]] == ["OK  "] * 5  # Python, pytest, checkpoint, memory, disk
    assert line_about(output, "pytest").startswith(f"OK   pytest {importlib.metadata.version('pytest')} (needs pytest>=1)")
    assert "small, 12 tensors" in line_about(output, "checkpoint")
    assert output[-1] == "Ready."


def test_the_function_for_the_exercise_notebook_returns_true_or_false(folder, few_packages, tmp_path):
    assert preflight.preflight(checkpoint_dir=folder) is True
    assert preflight.preflight(checkpoint_dir=tmp_path / "missing") is False


def test_without_a_folder_it_checks_the_one_llama3_dir_names(folder, few_packages, monkeypatch, capsys):
    monkeypatch.setenv("LLAMA3_DIR", str(folder))
    assert preflight.preflight() is True
    assert str(folder.name) in line_about(lines(capsys), "checkpoint")


def test_an_old_python_fails_with_what_to_install(folder, few_packages, monkeypatch, capsys):
    monkeypatch.setattr(preflight, "MIN_PYTHON", (99, 0))
    assert preflight.main(["--checkpoint", str(folder)]) == 1
    assert line_about(lines(capsys), "Python").startswith("FAIL Python")


@pytest.mark.parametrize("requirement, says", [
    ("no-such-package-for-the-room>=1",
     "no-such-package-for-the-room is not installed (needs no-such-package-for-the-room>=1): pip install -r"),
    ("pytest>=999", "but the notebooks need pytest>=999: pip install -r"),
])
def test_a_missing_or_old_package_fails_with_the_pip_command(requirement, says, folder, few_packages, capsys):
    few_packages.append(Requirement(requirement))
    assert preflight.main(["--checkpoint", str(folder)]) == 1
    output = lines(capsys)
    assert line_about(output, "pytest").startswith("OK  ")
    failed = [line for line in output if line.startswith("FAIL")]
    assert len(failed) == 1 and says in failed[0] and "requirements.txt" in failed[0]
    assert output[-1] == "1 requirement(s) not met: see the FAIL lines."


def test_a_package_that_cannot_be_imported_fails(folder, few_packages, monkeypatch, capsys):
    def broken_import(name):
        raise ImportError(f"libsomething.so for {name}: cannot open shared object file")

    monkeypatch.setattr(preflight.importlib, "import_module", broken_import)
    assert preflight.main(["--checkpoint", str(folder)]) == 1
    line = line_about(lines(capsys), "pytest")
    assert line.startswith("FAIL pytest") and "`import pytest` fails (ImportError" in line and "--force-reinstall" in line


def test_an_incomplete_folder_fails_with_the_walkthroughs_own_paragraph(folder, few_packages, capsys):
    (folder / "tokenizer.model").unlink()
    assert preflight.main(["--checkpoint", str(folder)]) == 1
    output = lines(capsys)
    line = line_about(output, "checkpoint")
    assert line.startswith("FAIL checkpoint") and "has no tokenizer.model" in line and "download_weights.py" in line
    assert not any(line.startswith(("OK   memory", "FAIL memory")) for line in output)  # nothing to size


def test_a_truncated_weight_file_fails(folder, few_packages, capsys):
    weights = folder / "consolidated.00.pth"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert preflight.main(["--checkpoint", str(folder)]) == 1
    assert "cannot be read" in line_about(lines(capsys), "checkpoint")


def test_too_little_memory_fails_with_the_figures(folder, few_packages, monkeypatch, capsys):
    monkeypatch.setattr(preflight, "memory_bytes", lambda: (1 << 20, "available"))
    assert preflight.main(["--checkpoint", str(folder)]) == 1
    line = line_about(lines(capsys), "memory")
    assert line.startswith("FAIL memory: 1.0 MiB available, the checkpoint needs") and "smaller checkpoint" in line


def test_too_little_disk_fails(folder, few_packages, monkeypatch, capsys):
    monkeypatch.setattr(preflight, "DISK_NEEDED", 1 << 60)
    assert preflight.main(["--checkpoint", str(folder)]) == 1
    assert line_about(lines(capsys), "disk").startswith("FAIL disk:")
