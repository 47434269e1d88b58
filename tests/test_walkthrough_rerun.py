"""Any cell of the walkthrough can be re-run after a full run, as a learner re-runs cells all the time: no cell
deletes or overwrites a name that an earlier cell's code needs, and no function reads a name defined later.

The notebook runs once in full on a small checkpoint; then, in the same kernel, every code cell runs again,
last to first, so that each one runs after every cell below it has run again too. Any NameError, or any cell
that no longer computes what it did, fails the run. The prediction must come out the same at the end.
"""

import nbformat
import pytest

from checkpoints import small_params, write_checkpoint
from notebook_runner import NOTEBOOK, run_notebook

PARAMS = small_params(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("rerun") / "tiny", PARAMS, seed=5)


def test_every_cell_runs_again_after_a_full_run_last_to_first(tiny):
    cells = [cell.source for cell in nbformat.read(NOTEBOOK, as_version=4).cells if cell.cell_type == "code"]
    first = run_notebook(tiny, names=("next_token", "generated_tokens"), max_new_tokens=3)
    again = run_notebook(tiny, names=("next_token", "generated_tokens"), max_new_tokens=3,
                         extra_cells=cells[::-1] + ["logits = next_token_logits(hidden[-1])\n"
                                                    "next_token = int(logits.argmax())"])
    assert again["next_token"] == first["next_token"]
    assert again["generated_tokens"] == first["generated_tokens"]
