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


def test_the_smollm2_copy_has_the_walkthroughs_cells(smollm2_copy):
    walkthrough = nbformat.read(NOTEBOOK, as_version=4)
    assert [(cell.cell_type, cell.source) for cell in smollm2_copy.cells] == \
        [(cell.cell_type, cell.source) for cell in walkthrough.cells]


def test_the_smollm2_copy_stores_every_output_without_errors(smollm2_copy):
    code_cells = [cell for cell in smollm2_copy.cells if cell.cell_type == "code"]
    assert [index for index, cell in enumerate(code_cells) if cell.execution_count is None] == []
    assert [index for index, cell in enumerate(code_cells)
            if any(output.output_type == "error" for output in cell.outputs)] == []
    leaks = [index for index, cell in enumerate(code_cells)
             if any(word in output_text(cell) for word in ("/home/", "/work/", "/tmp/"))]
    assert leaks == []


def test_the_smollm2_copy_shows_a_pretrained_model_at_work(smollm2_copy):
    from refresh_stored_outputs import SETTINGS_KEY
    assert smollm2_copy.metadata[SETTINGS_KEY]["LLAMA3_PROMPT"] == "The capital of France is"
    stored = "".join(output_text(cell) for cell in smollm2_copy.cells if cell.cell_type == "code")
    assert "next token: 7042 ' Paris'" in stored
    assert "SmolLM2-135M-Instruct answers ' Paris' (token 7042), as it should." in stored
    assert "5 tokens: [504, 3575, 282, 4649, 314]" in stored
    assert "Tokyo" in stored and "ended by <|im_end|>" in stored
    pictures = sum("image/png" in output.get("data", {}) for cell in smollm2_copy.cells if cell.cell_type == "code"
                   for output in cell.outputs)
    assert pictures >= 6  # RoPE twice, the mask, head 0's scores, every head, the logit lens, the candidates
