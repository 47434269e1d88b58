"""Section 12 of the walkthrough, "What if ...": the model with one piece switched off at a time.

The fast tests take the notebook's own `what_if_attention` and `what_if_forward` (tests/notebook_definitions.py)
and run them on a small random model in float64, where what each switch must do is exact: without the causal
mask the last position's attention output is unchanged (it sees every token anyway) and every other one moves;
without RoPE position 0 is unchanged and the last position cannot tell the order of the tokens before it; when
every query head reads key/value head 0, the heads of group 0 are unchanged and, on a model with one key/value
head, nothing is; a skipped layer is the model without it.

The slow tests run the whole walkthrough on SmolLM2-135M-Instruct and hold each row of its table to Meta's
reference Transformer broken the same way, in float64 (the truth; tests/rounding.py): its layers called one by one
without a mask, its rotations all 1, its wk and wv holding key/value head 0 in every head's place, its attention
norms' weights all 1, one of its layers left out.
"""

import contextlib
import math

import pytest
import torch

from notebook_definitions import notebook_definitions
from notebook_runner import NOTEBOOK, run_notebook
from rounding import assert_within_rounding, decided, float_means_double, rounding_tolerance
from test_smollm2 import meta_models, smollm2_build, smollm2_folder, terms  # noqa: F401

NOTEBOOK_FUNCTIONS = ("what_if_attention", "what_if_forward", "what_ifs", "attention", "transformer_layer", "feed_forward",
                      "silu", "queries_keys_values", "grouped_attention", "attention_probabilities", "causal_mask_for",
                      "rms_norm", "apply_rope", "rope_rotations_for")
PARIS_PROMPT = "The capital of France is"
ROPE_THETA = 10000.0
UNCHANGED = dict(rtol=1e-12, atol=1e-12)  # float64: the same arithmetic on the same numbers, up to its order
MOVED = 1e-3  # a piece switched off moves an output of this random model by more than this


# ---------------------------------------------------------------- a small random model, in float64


def random_model(n_kv_heads: int, n_heads: int = 4, head_dim: int = 8, n_layers: int = 2, vocab_size: int = 40,
                 seed: int = 0) -> dict:
    """The notebook's globals for a random Llama of this shape, in float64. wo is the identity, so that the
    attention's output is each head's own output in its own head_dim columns."""
    generator = torch.Generator().manual_seed(seed)
    dim, ffn_dim = n_heads * head_dim, 3 * n_heads * head_dim

    def random(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=generator, dtype=torch.float64)

    weights = {}
    for layer in range(n_layers):
        prefix = f"layers.{layer}"
        weights |= {f"{prefix}.attention.wq.weight": random(n_heads * head_dim, dim, scale=dim ** -0.5),
                    f"{prefix}.attention.wk.weight": random(n_kv_heads * head_dim, dim, scale=dim ** -0.5),
                    f"{prefix}.attention.wv.weight": random(n_kv_heads * head_dim, dim, scale=dim ** -0.5),
                    f"{prefix}.attention.wo.weight": torch.eye(dim, dtype=torch.float64),
                    f"{prefix}.feed_forward.w1.weight": random(ffn_dim, dim, scale=dim ** -0.5),
                    f"{prefix}.feed_forward.w3.weight": random(ffn_dim, dim, scale=dim ** -0.5),
                    f"{prefix}.feed_forward.w2.weight": random(dim, ffn_dim, scale=ffn_dim ** -0.5),
                    f"{prefix}.attention_norm.weight": 1 + random(dim, scale=0.1),
                    f"{prefix}.ffn_norm.weight": 1 + random(dim, scale=0.1)}
    given = {"weight": weights.__getitem__, "device": torch.device("cpu"), "compute_dtype": torch.float64,
             "dim": dim, "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_kv_heads, "head_dim": head_dim,
             "heads_per_kv_head": n_heads // n_kv_heads, "norm_eps": 1e-5,
             "rope_frequencies": 1.0 / ROPE_THETA ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim),
             "embedding_table": random(vocab_size, dim)}
    return notebook_definitions(NOTEBOOK, NOTEBOOK_FUNCTIONS, given)


@pytest.fixture
def in_float64():
    """The notebook's .float() upcasts (meant for bf16) stay in float64."""
    with torch.no_grad(), float_means_double():
        yield


def prompt_ids(model: dict, n_tokens: int = 7) -> torch.Tensor:
    return torch.randint(len(model["embedding_table"]), (n_tokens,), generator=torch.Generator().manual_seed(1))


def embedded(model: dict, tokens: torch.Tensor) -> torch.Tensor:
    return model["embedding_table"][tokens]


def moved(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() > MOVED


@pytest.mark.usefixtures("in_float64")
def test_with_no_switch_turned_the_what_if_model_is_the_notebooks_layer_loop():
    model = random_model(n_kv_heads=2)
    tokens = prompt_ids(model)
    hidden = embedded(model, tokens)
    for layer in range(model["n_layers"]):
        hidden = model["transformer_layer"](hidden, layer)
    torch.testing.assert_close(model["what_if_forward"](tokens), hidden, **UNCHANGED)


@pytest.mark.usefixtures("in_float64")
def test_without_the_mask_only_the_last_position_keeps_its_attention_output():
    model = random_model(n_kv_heads=2)
    x = embedded(model, prompt_ids(model))
    masked = model["what_if_attention"](x, 0)
    unmasked = model["what_if_attention"](x, 0, causal_mask=False)
    torch.testing.assert_close(unmasked[-1], masked[-1], **UNCHANGED)  # the last position sees every token anyway
    assert all(moved(unmasked[position], masked[position]) for position in range(len(x) - 1))
    tokens = prompt_ids(model)  # and from layer 1 on, the last position reads positions that saw the future
    assert moved(model["what_if_forward"](tokens, causal_mask=False)[-1], model["what_if_forward"](tokens)[-1])


@pytest.mark.usefixtures("in_float64")
def test_without_rope_position_0_is_unchanged_and_the_order_of_earlier_tokens_is_lost():
    model = random_model(n_kv_heads=2)
    tokens = prompt_ids(model)
    without_rope = model["what_if_forward"](tokens, rope=False)
    torch.testing.assert_close(without_rope[0], model["what_if_forward"](tokens)[0], **UNCHANGED)  # angle 0
    x = embedded(model, tokens)
    shuffled = torch.cat([x[:-1].flip(0), x[-1:]])  # the same tokens before the last, in reverse order
    last = {rope: model["what_if_attention"](x, 0, rope=rope)[-1] for rope in (True, False)}
    last_shuffled = {rope: model["what_if_attention"](shuffled, 0, rope=rope)[-1] for rope in (True, False)}
    torch.testing.assert_close(last_shuffled[False], last[False], **UNCHANGED)
    assert moved(last_shuffled[True], last[True])


@pytest.mark.usefixtures("in_float64")
@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_every_head_reading_kv_head_0_changes_only_the_heads_of_the_other_groups(n_kv_heads):
    model = random_model(n_kv_heads=n_kv_heads)
    x = embedded(model, prompt_ids(model))
    head_dim, group = model["head_dim"], model["heads_per_kv_head"]
    intact = model["what_if_attention"](x, 0)  # wo is the identity: head h's output is columns h * head_dim ...
    one_kv_head = model["what_if_attention"](x, 0, kv_head=0)
    torch.testing.assert_close(one_kv_head[:, :group * head_dim], intact[:, :group * head_dim], **UNCHANGED)
    for head in range(group, model["n_heads"]):
        columns = slice(head * head_dim, (head + 1) * head_dim)
        assert moved(one_kv_head[:, columns], intact[:, columns]), f"head {head}"
    if n_kv_heads == 1:
        torch.testing.assert_close(one_kv_head, model["attention"](x, 0), **UNCHANGED)


@pytest.mark.usefixtures("in_float64")
def test_a_skipped_layer_is_the_model_without_it():
    model = random_model(n_kv_heads=2)
    tokens = prompt_ids(model)
    without_layer_0 = model["transformer_layer"](embedded(model, tokens), 1)
    torch.testing.assert_close(model["what_if_forward"](tokens, skip_layer=0), without_layer_0, **UNCHANGED)


@pytest.mark.usefixtures("in_float64")
def test_rmsnorm_without_its_weight_only_divides_by_the_root_mean_square():
    model = random_model(n_kv_heads=1)
    x = 10 * embedded(model, prompt_ids(model))
    normed = x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + model["norm_eps"])
    # position 0 reads only itself: with one key/value head and wo = I, each head's output there is its value,
    # the normalised input (no weight multiplied in) times wv
    value_of_position_0 = normed[0] @ model["weight"]("layers.0.attention.wv.weight").T
    unweighted = model["what_if_attention"](x, 0, norm_weight=False)
    torch.testing.assert_close(unweighted[0, :model["head_dim"]], value_of_position_0, **UNCHANGED)


# ---------------------------------------------------------------- the real model, held to Meta's


@contextlib.contextmanager
def broken_weights(model, kv_head=None, norm_weight=True):
    """Meta's Transformer with wk and wv holding key/value head kv_head in every head's place, and/or its
    attention norms' weights set to 1; restored afterwards."""
    n_kv_heads, head_dim = model.params.n_kv_heads, model.params.dim // model.params.n_heads
    replaced = []
    for layer in model.layers:
        if kv_head is not None:
            for linear in (layer.attention.wk, layer.attention.wv):
                rows = linear.weight[kv_head * head_dim:(kv_head + 1) * head_dim]
                replaced.append((linear, linear.weight, rows.repeat(n_kv_heads, 1)))
        if not norm_weight:
            norm = layer.attention_norm
            replaced.append((norm, norm.weight, torch.ones_like(norm.weight)))
    for module, _, new in replaced:
        module.weight = torch.nn.Parameter(new, requires_grad=False)
    try:
        yield model
    finally:
        for module, old, _ in replaced:
            module.weight = old


def meta_what_if_logits(model, tokens: torch.Tensor, causal_mask=True, rope=True, kv_head=None, norm_weight=True,
                        skip_layer=None) -> torch.Tensor:
    """The last position's logits of Meta's Transformer broken as what_if_forward is: its layers called one by
    one, with no mask, with rotations all 1, without a layer."""
    n_tokens = len(tokens)
    wide = float_means_double() if model.output.weight.dtype == torch.float64 else contextlib.nullcontext()
    with torch.inference_mode(), wide, broken_weights(model, kv_head, norm_weight):
        h = model.tok_embeddings(tokens.view(1, -1))
        freqs_cis = model.freqs_cis[:n_tokens]
        if not rope:
            freqs_cis = torch.ones_like(freqs_cis)
        mask = torch.full((n_tokens, n_tokens), float("-inf")).triu(diagonal=1).type_as(h) if causal_mask else None
        for index, layer in enumerate(model.layers):
            if index != skip_layer:
                h = layer(h, 0, freqs_cis, mask)
        return model.output(model.norm(h))[0, -1]


@pytest.fixture(scope="module")
def what_if_run(smollm2_folder) -> dict:
    """The walkthrough on SmolLM2 in float32, up to its one-token generation."""
    return run_notebook(smollm2_folder, PARIS_PROMPT, names=("tokens", "next_token", "what_ifs", "what_if_logits"),
                        dtype="float32", max_new_tokens=1)


def test_the_intact_row_is_the_notebooks_own_prediction(what_if_run):
    assert list(what_if_run["what_ifs"])[0] == "intact" and what_if_run["what_ifs"]["intact"] == {}
    assert int(what_if_run["what_if_logits"]["intact"].argmax()) == what_if_run["next_token"]


def test_each_row_is_metas_model_broken_the_same_way(what_if_run, smollm2_folder, meta_models):
    tokens = what_if_run["tokens"]
    for name, switches in what_if_run["what_ifs"].items():
        truth = meta_what_if_logits(meta_models[torch.float64], tokens, **switches)
        meta = meta_what_if_logits(meta_models[torch.float32], tokens, **switches)
        tolerance = rounding_tolerance(meta, truth, torch.float32, terms(smollm2_folder))
        ours = what_if_run["what_if_logits"][name]
        assert_within_rounding(ours, truth, tolerance, f"{name}: walkthrough float32 - Meta float64")
        if decided(truth, ours).item():
            assert int(ours.argmax()) == int(truth.argmax()), name


def test_on_smollm2_paris_survives_a_middle_layer_and_the_order_of_words_but_not_the_rest(what_if_run, meta_models):
    """What the table shows on this prompt, on the truth: which pieces the answer survives without."""
    paris = what_if_run["next_token"]
    truth = {name: meta_what_if_logits(meta_models[torch.float64], what_if_run["tokens"], **switches)
             for name, switches in what_if_run["what_ifs"].items()}
    surviving = {name for name, logits in truth.items() if int(logits.argmax()) == paris}
    n_layers = meta_models[torch.float64].params.n_layers
    assert surviving == {"intact", "no RoPE", f"layer {n_layers // 2} skipped"}


def test_the_table_runs_in_bf16_and_its_intact_row_is_the_prediction(smollm2_folder):
    run = run_notebook(smollm2_folder, PARIS_PROMPT, names=("next_token", "what_if_logits", "what_ifs"),
                       dtype="bfloat16", max_new_tokens=1)
    assert set(run["what_if_logits"]) == set(run["what_ifs"])
    assert int(run["what_if_logits"]["intact"].argmax()) == run["next_token"]
    assert all(math.isfinite(logits.sum().item()) for logits in run["what_if_logits"].values())
