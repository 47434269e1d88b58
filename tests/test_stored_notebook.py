"""The committed notebook stores only outputs that Meta-Llama-3-8B prints too."""

import nbformat
import pytest

from conftest import NOTEBOOK

IGNORE_MARKER = "# NBVAL_IGNORE_OUTPUT"


@pytest.fixture(scope="module")
def code_cells():
    return [cell for cell in nbformat.read(NOTEBOOK, as_version=4).cells if cell.cell_type == "code"]


def output_text(cell) -> str:
    parts = []
    for output in cell.outputs:
        parts.append(output.get("text", ""))
        parts.extend(str(value) for value in output.get("data", {}).values())
    return "".join(parts)


def test_weight_dependent_cells_are_stored_empty(code_cells):
    stored = [index for index, cell in enumerate(code_cells) if IGNORE_MARKER in cell.source and cell.outputs]
    assert stored == []


def test_every_other_code_cell_was_executed(code_cells):
    unexecuted = [index for index, cell in enumerate(code_cells)
                  if IGNORE_MARKER not in cell.source and cell.execution_count is None]
    assert unexecuted == []


def test_no_stored_errors(code_cells):
    errors = [index for index, cell in enumerate(code_cells) if any(o.output_type == "error" for o in cell.outputs)]
    assert errors == []


def test_no_stored_output_mentions_the_demo_or_a_local_path(code_cells):
    leaks = [index for index, cell in enumerate(code_cells)
             if any(word in output_text(cell) for word in ("demo", "random", "/home/", "/work/", "checkpoints/"))]
    assert leaks == []


def test_stored_prompt_ids_are_meta_llama3s(code_cells):
    # the ids Meta's tokenizer gives the default prompt, BOS first
    expected = "[128000, 1820, 4320, 311, 279, 17139, 3488, 315, 2324, 11, 279, 15861, 11, 323, 4395, 374, 220]"
    assert any(f"17 tokens: {expected}" in output_text(cell) for cell in code_cells)


# ---------------------------------------------------------------- the copy executed on SmolLM2


@pytest.fixture(scope="module")
def smollm2_copy():
    from conftest import SMOLLM2_COPY
    return nbformat.read(SMOLLM2_COPY, as_version=4)


# sentences of the walkthrough that would be false in the copy, which stores every output of SmolLM2
FALSE_IN_THE_COPY = ("Meta-Llama-3-8B prints:", "outputs stored here are", "stored empty", "shows no output here",
                     "shows none", "stored notebook")


def without_the_note(notebook) -> list:
    from refresh_stored_outputs import NOTE_KEY
    return [(cell.cell_type, cell.source) for cell in notebook.cells if not cell.metadata.get(NOTE_KEY)]


def test_the_smollm2_copy_has_the_walkthroughs_cells(smollm2_copy):
    walkthrough = nbformat.read(NOTEBOOK, as_version=4)
    assert without_the_note(smollm2_copy) == without_the_note(walkthrough)


def test_each_file_says_what_its_own_stored_outputs_are(smollm2_copy):
    from refresh_stored_outputs import NOTE_KEY, smollm2_note
    walkthrough = nbformat.read(NOTEBOOK, as_version=4)
    (note,) = [cell for cell in walkthrough.cells if cell.metadata.get(NOTE_KEY)]
    (copy_note,) = [cell for cell in smollm2_copy.cells if cell.metadata.get(NOTE_KEY)]
    assert note.cell_type == copy_note.cell_type == "markdown"
    assert [cell.metadata.get(NOTE_KEY) for cell in walkthrough.cells] == \
        [cell.metadata.get(NOTE_KEY) for cell in smollm2_copy.cells]  # the same place in both
    assert "The outputs stored here are the ones Meta-Llama-3-8B prints" in note.source
    assert copy_note.source == smollm2_note(smollm2_copy.metadata)
    false_here = [(index, phrase) for index, cell in enumerate(smollm2_copy.cells) if cell.cell_type == "markdown"
                  for phrase in FALSE_IN_THE_COPY if phrase in cell.source]
    assert false_here == []


def test_the_smollm2_copy_stores_every_output_without_errors(smollm2_copy):
    code_cells = [cell for cell in smollm2_copy.cells if cell.cell_type == "code"]
    assert [index for index, cell in enumerate(code_cells) if cell.execution_count is None] == []
    assert [index for index, cell in enumerate(code_cells)
            if any(output.output_type == "error" for output in cell.outputs)] == []
    leaks = [index for index, cell in enumerate(code_cells)
             if any(word in output_text(cell) for word in ("/home/", "/work/", "/tmp/"))]
    assert leaks == []


def test_the_smollm2_copy_shows_a_pretrained_model_at_work(smollm2_copy):
    from llama3_support.settings import SMOLLM2_PROMPT
    from refresh_stored_outputs import SETTINGS_KEY
    assert smollm2_copy.metadata[SETTINGS_KEY]["LLAMA3_PROMPT"] == SMOLLM2_PROMPT
    stored = "".join(output_text(cell) for cell in smollm2_copy.cells if cell.cell_type == "code")
    assert "next token: 7042 ' Paris'" in stored
    assert "SmolLM2-135M-Instruct answers ' Paris' (token 7042), as it should." in stored
    # the prompt ids: "The capital of" (504 3575 282; later 378 for " The") four times, each country, " is" (314)
    assert ("26 tokens: [504, 3575, 282, 4521, 314, 11452, 30, 378, 3575, 282, 7158, 314, 7268, 30, 378, 3575, 282, "
            "7476, 314, 28030, 30, 378, 3575, 282, 4649, 314]") in stored
    assert "Tokyo" in stored and "ended by <|im_end|>" in stored
    pictures = sum("image/png" in output.get("data", {}) for cell in smollm2_copy.cells if cell.cell_type == "code"
                   for output in cell.outputs)
    assert pictures >= 8  # RoPE twice, the mask, head 0's scores, every head, one head, the lens twice, the candidates


@pytest.mark.parametrize("name", ["walkthrough", "smollm2 copy"])
def test_no_progress_bar_or_stray_value_is_stored(name, smollm2_copy):
    notebook = smollm2_copy if name == "smollm2 copy" else nbformat.read(NOTEBOOK, as_version=4)
    noise = [(index, output.output_type) for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"
             for output in cell.outputs
             if output.output_type == "execute_result" or (output.output_type == "stream" and output.name == "stderr")]
    assert noise == []


# ---------------------------------------------------------------- the refresh script's care for timings


@pytest.fixture
def load(monkeypatch):
    """Set what psutil reports: load(one_minute_load, percent_in_use) on a machine of 2 cores."""
    import refresh_stored_outputs

    def set_load(one_minute: float, percent: float):
        monkeypatch.setattr(refresh_stored_outputs.psutil, "cpu_count", lambda: 2)
        monkeypatch.setattr(refresh_stored_outputs.psutil, "getloadavg", lambda: (one_minute, one_minute, one_minute))
        monkeypatch.setattr(refresh_stored_outputs.psutil, "cpu_percent", lambda interval: percent)
    return set_load


def test_a_quiet_machine_may_refresh_the_copy(load):
    from refresh_stored_outputs import machine_is_busy
    load(0.3, 10.0)
    assert machine_is_busy() is None


def test_a_busy_machine_is_refused_before_any_run(load, monkeypatch):
    import refresh_stored_outputs
    monkeypatch.setattr(refresh_stored_outputs, "refresh_walkthrough", lambda: pytest.fail("the walkthrough ran"))
    monkeypatch.setattr(refresh_stored_outputs, "refresh_smollm2_copy", lambda busy_ok: pytest.fail("the copy ran"))
    load(2.5, 10.0)
    assert refresh_stored_outputs.machine_is_busy() == "its load average over the last minute is 2.5 on 2 cores"
    with pytest.raises(SystemExit, match="busy .* --busy-ok"):
        refresh_stored_outputs.main([])
    load(0.2, 90.0)
    with pytest.raises(SystemExit, match="90% of its 2 cores are in use"):
        refresh_stored_outputs.main(["--only", "smollm2"])


def test_the_busy_machine_override_warns_and_the_copy_says_its_timings_are_disturbed(load, monkeypatch, capsys):
    import refresh_stored_outputs
    from refresh_stored_outputs import MACHINE_KEY, SETTINGS_KEY, SMOLLM2_SETTINGS, smollm2_note
    runs = []
    monkeypatch.setattr(refresh_stored_outputs, "refresh_smollm2_copy", runs.append)
    load(2.5, 10.0)
    assert refresh_stored_outputs.main(["--only", "smollm2", "--busy-ok"]) == 0
    assert runs == [True] and "WARNING: this machine is busy" in capsys.readouterr().err
    run = {SETTINGS_KEY: SMOLLM2_SETTINGS, MACHINE_KEY: {"processor": "a CPU", "cores": 2, "other_work_share": 0.7}}
    assert "while other work used 70% of it, so the timings are disturbed" in smollm2_note(run)
    run[MACHINE_KEY]["other_work_share"] = 0.02
    assert "on a CPU (2 cores),\nwith no other work running." in smollm2_note(run)
