"""The walkthrough's pictures of a model at work: attention heatmaps labelled with the prompt's tokens, and the
logit lens as a grid of layers by positions. The notebook computes what they show; these functions only draw,
and each returns its matplotlib Figure, so that a test can read its labels back.
"""

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

LABEL_CHARACTERS = 12  # a token longer than this is cut short in an axis label
CELL_CHARACTERS = 6    # and in a cell of the logit lens grid
FIGURE_INCHES = 16     # the widest a grid of heatmaps gets, whatever the number of panels
ELLIPSIS = "\N{HORIZONTAL ELLIPSIS}"


def cut_short(text: str, characters: int) -> str:
    return text if len(text) <= characters else text[:characters - 1] + ELLIPSIS


def token_labels(pieces: list) -> list:
    """One distinct label per position, even where a token repeats: `3:' the'` (the piece cut short)."""
    return [f"{position}:{cut_short(repr(piece), LABEL_CHARACTERS)}" for position, piece in enumerate(pieces)]


def lens_cell_text(piece: str) -> str:
    """A token as the logit lens grid writes it: a leading space as `_`, line breaks and tabs escaped, cut short."""
    if piece.startswith(" "):
        piece = "_" + piece[1:]
    return cut_short(piece.replace("\n", "\\n").replace("\t", "\\t"), CELL_CHARACTERS)


def grid_shape(n_panels: int) -> tuple:
    columns = math.ceil(math.sqrt(n_panels))
    return math.ceil(n_panels / columns), columns


def attention_heatmaps(probabilities, labels: list, titles: list, suptitle: str) -> plt.Figure:
    """One heatmap per panel of probabilities [n_panels, n_queries, n_keys]: keys along x, queries along y, both
    labelled with the tokens (along the bottom of each column of panels and the left of each row), the cells
    the causal mask hides left blank, one colour bar for all."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n_panels, n_positions, _ = probabilities.shape
    rows, columns = grid_shape(n_panels)
    panel_inches = min(6.0, max(2.5, 0.16 * n_positions), FIGURE_INCHES / columns)
    font_size = min(7.0, 0.9 * 72 * panel_inches / n_positions)  # points: one label per position's height
    figure, axes = plt.subplots(rows, columns, figsize=(panel_inches * columns + 1.5, panel_inches * rows + 1),
                                squeeze=False, layout="constrained")
    hidden = np.triu(np.ones((n_positions, n_positions), dtype=bool), k=1)  # a key after its query
    colour_map = plt.get_cmap("viridis").with_extremes(bad="white")
    for panel, axis in enumerate(axes.flat):
        if panel >= n_panels:
            axis.set_visible(False)
            continue
        image = axis.imshow(np.ma.masked_array(probabilities[panel], mask=hidden), cmap=colour_map, vmin=0, vmax=1)
        axis.set_title(titles[panel], fontsize=9)
        lowest_in_its_column, first_in_its_row = panel + columns >= n_panels, panel % columns == 0
        axis.set_xticks(range(n_positions), labels if lowest_in_its_column else [], rotation=90, fontsize=font_size)
        axis.set_yticks(range(n_positions), labels if first_in_its_row else [], fontsize=font_size)
        if lowest_in_its_column:
            axis.set_xlabel("key: the token looked at", fontsize=8)
        if first_in_its_row:
            axis.set_ylabel("query: the token looking", fontsize=8)
    figure.colorbar(image, ax=axes, shrink=0.6, label="attention probability")
    figure.suptitle(suptitle)
    return figure


def logit_lens_grid(top_pieces: list, top_probabilities, is_next, position_labels: list, next_labels: list,
                    title: str) -> plt.Figure:
    """nostalgebraist's logit lens: one row per layer, the output at the top, one column per position.

    top_pieces [n_layers][n_positions]: each layer's top token at each position, as text; top_probabilities
    [n_layers, n_positions]: its probability, the cell's colour; is_next [n_layers, n_positions]: where it is
    already the token that comes next, written in bold in a box. position_labels along the bottom (the input
    tokens), next_labels along the top (the tokens that come next)."""
    top_probabilities = np.asarray(top_probabilities, dtype=np.float64)
    is_next = np.asarray(is_next, dtype=bool)
    n_layers, n_positions = top_probabilities.shape
    figure, axis = plt.subplots(figsize=(1.5 + 0.62 * n_positions, 1.8 + 0.28 * n_layers), layout="constrained")
    image = axis.imshow(top_probabilities, cmap="Blues", vmin=0, vmax=1, origin="lower", aspect="auto")
    for layer in range(n_layers):
        for position in range(n_positions):
            axis.text(position, layer, lens_cell_text(top_pieces[layer][position]), ha="center", va="center",
                      fontsize=6.5, color="white" if top_probabilities[layer, position] > 0.55 else "black",
                      fontweight="bold" if is_next[layer, position] else "normal")
            if is_next[layer, position]:
                axis.add_patch(Rectangle((position - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="crimson",
                                         linewidth=1.2))
    axis.set_xticks(range(n_positions), position_labels, rotation=90, fontsize=7)
    axis.set_yticks(range(n_layers), [f"after layer {layer}" for layer in range(n_layers)], fontsize=7)
    axis.set_xlabel("position: input token")
    next_axis = axis.secondary_xaxis("top")
    next_axis.set_xticks(range(n_positions), next_labels, rotation=90, fontsize=7)
    next_axis.set_xlabel("the token that comes next (boxed where a layer already predicts it)")
    figure.colorbar(image, ax=axis, shrink=0.5, label="probability of the top token")
    figure.suptitle(title)
    return figure
