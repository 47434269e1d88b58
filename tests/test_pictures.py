"""The pictures of section 11 say what they show: the prompt's tokens on the attention heatmaps' axes, the
masked cells blank, and a logit lens grid whose cells are the walkthrough's own lens, which is Meta's.

The drawing functions (llama3_support/pictures.py) return their Figure, and the walkthrough's figures stay open
in its kernel (the agg backend), so labels, texts and colours are read back from matplotlib's objects, not from
pixels. The lens is held to Meta's reference Transformer in float64, with each layer's output taken by a hook.
"""

import contextlib

import numpy as np
import pytest
import torch

from checkpoints import small_params, write_checkpoint
from llama3_support.pictures import attention_heatmaps, lens_cell_text, logit_lens_grid, token_labels
from notebook_runner import run_notebook
from reference import load_reference
from rounding import assert_within_rounding, float_means_double, rounding_tolerance

# a prompt whose words repeat, longer than the 64 positions the pictures show
PROMPT = " ".join(["the fox saw the heron, and the heron saw the fox."] * 6)
LENS_NAMES = ("tokens", "next_token", "probabilities", "plotted_positions", "n_layers", "n_heads",
              "lens_top_tokens", "lens_top_probabilities", "lens_pieces", "position_labels", "figures")
# run in the walkthrough's kernel after its cells: what each open figure shows, in plain lists
READ_FIGURES = '''
import matplotlib.pyplot as plt
import numpy as np
figures = []
for number in plt.get_fignums():
    figure = plt.figure(number)
    panels = []
    for axis in figure.axes:
        image = axis.images[0] if axis.images else None
        panels.append({
            "title": axis.get_title(), "ylabel": axis.get_ylabel(),
            "xticklabels": [label.get_text() for label in axis.get_xticklabels()],
            "yticklabels": [label.get_text() for label in axis.get_yticklabels()],
            "top_labels": [label.get_text() for child in axis.child_axes for label in child.get_xticklabels()],
            "texts": [(text.get_position(), text.get_text(), text.get_fontweight()) for text in axis.texts],
            "image": None if image is None else np.ma.getdata(image.get_array()).tolist(),
            "masked": None if image is None else np.ma.getmaskarray(image.get_array()).tolist()})
    figures.append({"suptitle": figure.get_suptitle(), "panels": panels})
lens_pieces = [[tokenizer.decode([token]) for token in row] for row in lens_top_tokens.tolist()]
'''


def test_token_labels_stay_distinct_where_a_token_repeats():
    labels = token_labels(["The", " fox", " saw", " the", " fox", " a_very_long_token_indeed"])
    assert labels[:5] == ["0:'The'", "1:' fox'", "2:' saw'", "3:' the'", "4:' fox'"]
    assert len(set(labels)) == len(labels)
    assert labels[5].startswith("5:' a_very") and labels[5].endswith("\N{HORIZONTAL ELLIPSIS}")


def test_lens_cells_write_a_leading_space_as_underscore_and_cut_long_tokens():
    assert lens_cell_text(" Paris") == "_Paris"
    assert lens_cell_text("\n") == "\\n"
    assert lens_cell_text(" international") == "_inte\N{HORIZONTAL ELLIPSIS}"


def test_attention_heatmaps_label_keys_and_queries_with_tokens_and_leave_the_mask_blank():
    labels = token_labels(["The", " fox", " the", " fox"])
    probabilities = torch.tril(torch.ones(3, 4, 4))
    probabilities = probabilities / probabilities.sum(dim=-1, keepdim=True)
    figure = attention_heatmaps(probabilities, labels, ["head 0", "head 1", "head 2"], "layer 1")
    panels = [axis for axis in figure.axes if axis.images]
    assert [axis.get_title() for axis in panels] == ["head 0", "head 1", "head 2"]  # on a grid of 2 x 2
    unlabelled = [""] * 4
    assert [[label.get_text() for label in axis.get_xticklabels()] for axis in panels] == [unlabelled, labels, labels]
    assert [[label.get_text() for label in axis.get_yticklabels()] for axis in panels] == [labels, unlabelled, labels]
    for axis in panels:
        assert list(axis.get_xticks()) == list(axis.get_yticks()) == list(range(4))  # keys along x, queries along y
        shown = axis.images[0].get_array()
        assert np.array_equal(np.ma.getmaskarray(shown), np.triu(np.ones((4, 4), dtype=bool), k=1))
        assert np.allclose(np.ma.getdata(shown)[np.tril_indices(4)], probabilities[0].numpy()[np.tril_indices(4)])
    colour_bars = [axis for axis in figure.axes if axis.get_ylabel() == "attention probability"]
    assert len(colour_bars) == 1
    assert figure.get_suptitle() == "layer 1"


def test_the_logit_lens_grid_puts_the_output_on_top_and_marks_the_tokens_already_predicted():
    pieces = [[" a", "b"], [" c", " Paris"]]  # after layer 0, after layer 1
    probabilities = [[0.1, 0.2], [0.3, 0.9]]
    is_next = [[False, False], [False, True]]
    figure = logit_lens_grid(pieces, probabilities, is_next, ["0:'x'", "1:'y'"], ["'y'", "' Paris'"], "lens")
    axis = next(axis for axis in figure.axes if axis.images)
    cells = {(round(x), round(y)): (text.get_text(), text.get_fontweight())
             for text in axis.texts for x, y in [text.get_position()]}
    assert cells == {(0, 0): ("_a", "normal"), (1, 0): ("b", "normal"), (0, 1): ("_c", "normal"),
                     (1, 1): ("_Paris", "bold")}
    assert axis.images[0].origin == "lower"  # row 0 (after layer 0) at the bottom, the output at the top
    assert [label.get_text() for label in axis.get_yticklabels()] == ["after layer 0", "after layer 1"]
    assert [label.get_text() for label in axis.get_xticklabels()] == ["0:'x'", "1:'y'"]
    assert [label.get_text() for child in axis.child_axes for label in child.get_xticklabels()] == ["'y'", "' Paris'"]
    assert len(axis.patches) == 1  # one box, around the bold cell
    assert np.allclose(axis.images[0].get_array(), probabilities)


@pytest.fixture(scope="module")
def lens_run(tmp_path_factory):
    """The walkthrough in float32 on a small three-layer checkpoint whose queries and keys are sharpened (attention
    that is not uniform), with the prompt above; its open figures read back."""
    folder = write_checkpoint(tmp_path_factory.mktemp("pictures") / "checkpoint",
                              small_params(dim=256, n_layers=3, n_heads=8, n_kv_heads=2), seed=21, query_key_gain=3.0)
    run = run_notebook(folder, PROMPT, names=LENS_NAMES, dtype="float32", max_new_tokens=1, extra_cells=[READ_FIGURES])
    run["folder"] = folder
    return run


def figure_titled(run: dict, start: str) -> dict:
    (figure,) = [figure for figure in run["figures"] if figure["suptitle"].startswith(start)]
    return figure


def test_the_walkthroughs_attention_pictures_carry_the_prompts_tokens(lens_run):
    shown = lens_run["plotted_positions"]
    assert shown == 64 < len(lens_run["tokens"])
    labels = lens_run["position_labels"]
    assert len(labels) == shown and len(set(labels)) == shown and labels[1] == "1:'the'"
    every_head = figure_titled(lens_run, f"layer {lens_run['n_layers'] // 2}: attention probabilities of each head")
    one_head = figure_titled(lens_run, "head ")
    for figure, titles in [(every_head, [f"head {head} (kv {head // 4})" for head in range(lens_run["n_heads"])]),
                           (one_head, [f"layer {layer}" for layer in range(lens_run["n_layers"])])]:
        panels = [panel for panel in figure["panels"] if panel["image"] is not None]
        assert [panel["title"] for panel in panels] == titles
        columns = int(np.ceil(np.sqrt(len(panels))))
        for index, panel in enumerate(panels):  # the tokens below each column of panels, left of each row
            assert panel["xticklabels"] == (labels if index + columns >= len(panels) else [""] * shown)
            assert panel["yticklabels"] == (labels if index % columns == 0 else [""] * shown)
            assert panel["masked"] == np.triu(np.ones((shown, shown), dtype=bool), k=1).tolist()
        assert any(panel["ylabel"] == "attention probability" for panel in figure["panels"])


def test_section_5s_mask_and_head_0_pictures_carry_the_prompts_tokens_and_leave_masked_cells_blank(lens_run):
    shown, labels = lens_run["plotted_positions"], lens_run["position_labels"]
    panels = {panel["title"]: panel for figure in lens_run["figures"] for panel in figure["panels"]}
    above_diagonal = np.triu(np.ones((shown, shown), dtype=bool), k=1).tolist()
    mask = panels["causal mask (black = -inf)"]
    assert mask["xticklabels"] == labels and mask["yticklabels"] == labels
    assert np.array(mask["image"]).tolist() == above_diagonal
    for title, masked in [("scores", False), ("scores + mask", True), ("softmax", True)]:
        panel = panels[f"layer 0, head 0: {title}"]
        assert panel["xticklabels"] == labels and panel["yticklabels"] == labels
        assert panel["ylabel"] == "query: the token looking"
        blank = np.isnan(np.array(panel["image"], dtype=float)) | np.array(panel["masked"])
        assert blank.tolist() == (above_diagonal if masked else np.zeros((shown, shown), dtype=bool).tolist())


def lens_truth(folder, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Meta's Transformer: the final norm and output projection applied to each layer's output, [layers, n, vocab]."""
    model = load_reference(folder, len(tokens), dtype=dtype)
    outputs = []
    hooks = [layer.register_forward_hook(lambda module, inputs, output: outputs.append(output))
             for layer in model.layers]
    with torch.no_grad(), (float_means_double() if dtype == torch.float64 else contextlib.nullcontext()):
        model(tokens.view(1, -1), 0)
        lens = torch.stack([model.output(model.norm(output[0])).to(dtype) for output in outputs])
    for hook in hooks:
        hook.remove()
    return torch.softmax(lens, dim=-1)


def test_the_logit_lens_grid_shows_metas_lens_of_every_layer_at_every_position(lens_run):
    shown, tokens = lens_run["plotted_positions"], lens_run["tokens"]
    truth = lens_truth(lens_run["folder"], tokens, torch.float64)[:, :shown]
    meta = lens_truth(lens_run["folder"], tokens, torch.float32)[:, :shown]
    tolerance = rounding_tolerance(meta, truth, torch.float32, 256)
    top_tokens, top_probabilities = lens_run["lens_top_tokens"], lens_run["lens_top_probabilities"]
    assert top_tokens.shape == (lens_run["n_layers"], shown)
    assert_within_rounding(top_probabilities, truth.gather(-1, top_tokens[..., None])[..., 0], tolerance,
                           "lens: probability of each cell's token")
    top2 = truth.topk(2, dim=-1)
    clear = top2.values[..., 0] - top2.values[..., 1] > 2 * tolerance
    assert clear.float().mean() > 0.9
    assert torch.equal(top_tokens[clear], top2.indices[..., 0][clear])

    grid = figure_titled(lens_run, "logit lens: each layer's top token")
    (panel,) = [panel for panel in grid["panels"] if panel["image"] is not None]
    assert np.allclose(panel["image"], top_probabilities.numpy())
    cells = {(round(x), round(y)): (text, weight) for (x, y), text, weight in panel["texts"]}
    assert len(cells) == lens_run["n_layers"] * shown
    comes_next = tokens[1:shown + 1]
    for (position, layer), (text, weight) in cells.items():
        assert text == lens_cell_text(lens_run["lens_pieces"][layer][position])
        assert (weight == "bold") == bool(top_tokens[layer, position] == comes_next[position])
    assert panel["xticklabels"] == lens_run["position_labels"]
    assert panel["yticklabels"] == [f"after layer {layer}" for layer in range(lens_run["n_layers"])]
