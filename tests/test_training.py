"""train_llama3_from_scratch.ipynb, re-executed on a tiny configuration, against three peers.

One short training run (module fixture) writes a checkpoint; one extra cell saves what the notebook's own
code computed on one validation batch: the weights, logits, loss and every parameter's gradient, plus the
logits of a model loaded back from the saved bf16 file. Then:
- the loss fell: training works end to end;
- Hugging Face's LlamaForCausalLM, given the same weights (wq and wk rows reordered from Meta's interleaved RoPE
  pairs to Hugging Face's halves, as in test_hf_peer.py) and the same batch, computes the same loss and the
  same gradients: the notebook's float32 ones are within float32 rounding of Hugging Face's in float64;
- Meta's reference Transformer loads the checkpoint with strict=True and computes the same logits;
- the walkthrough runs end to end on the checkpoint, generation included, and agrees with the training model.
Every float32 result is held to a float64 truth (tests/rounding.py), never to another float32 result.
Bad settings and a foreign output folder stop the notebook in its settings cells, before any work.
"""

import json
import math
import re

import nbformat
import pytest
import torch
import torch.nn.functional as F
from nbclient.exceptions import CellExecutionError

from llama3_support.checkpoint_folder import STAGING
from notebook_runner import run_notebook
from reference import load_reference, reference_decoding, reference_logits
from rounding import assert_within_rounding, rounding_tolerance
from test_hf_peer import META_TO_HF_LAYER_NAMES, interleaved_to_half_split
from training_runner import TRAINING_NOTEBOOK, run_training_notebook

# grouped-query attention (4 query heads over 2 key/value heads), two layers, a small BPE: about half a minute
TINY_SETTINGS = {
    "LLAMA3_TRAIN_STEPS": "150", "LLAMA3_TRAIN_MERGES": "64", "LLAMA3_TRAIN_DIM": "64", "LLAMA3_TRAIN_LAYERS": "2",
    "LLAMA3_TRAIN_HEADS": "4", "LLAMA3_TRAIN_KV_HEADS": "2", "LLAMA3_TRAIN_BATCH_SIZE": "8",
    "LLAMA3_TRAIN_BLOCK_SIZE": "32", "LLAMA3_TRAIN_LR": "0.003", "LLAMA3_TRAIN_EVAL_INTERVAL": "75",
    "LLAMA3_TRAIN_EVAL_ITERS": "10", "LLAMA3_DEVICE": "cpu",
}
# After 150 steps the tiny model must beat this validation loss per character. At initialisation it is
# ln(576 tokens) x 0.69 tokens per character = 4.4; this run reached 2.57 (torch 2.13, CPU).
VAL_NATS_PER_CHARACTER_BOUND = 3.0
PROMPT = "ROMEO:"
N_GENERATED = 6

SAVE_RESULTS = """
model.zero_grad(set_to_none=True)
check_inputs, check_targets = get_batch("val", torch.Generator().manual_seed(0))
check_logits, check_loss = model(check_inputs, check_targets)
check_loss.backward()
file_model = Transformer(model_args).to(device)
file_model.load_state_dict({name: tensor.float() for name, tensor in
                            torch.load(out_dir / "consolidated.00.pth", weights_only=True).items()}, strict=True)
with torch.no_grad():
    prompt_tokens = [bos_id] + tokenizer.encode(PROMPT_UNDER_TEST)
    greedy_tokens = []
    for _ in range(N_GENERATED):
        next_logits = file_model(torch.tensor([prompt_tokens + greedy_tokens]))[0][0, -1]
        greedy_tokens.append(int(next_logits.argmax()))
    torch.save({
        "weights": {name: tensor.detach().clone() for name, tensor in model.state_dict().items()},
        "gradients": {name: parameter.grad.clone() for name, parameter in model.named_parameters()},
        "inputs": check_inputs, "targets": check_targets, "logits": check_logits.detach(), "loss": check_loss.item(),
        "file_logits": file_model(check_inputs[:1])[0][0],
        "prompt_tokens": prompt_tokens, "prompt_logits": file_model(torch.tensor([prompt_tokens]))[0][0, -1],
        "greedy_tokens": greedy_tokens, "initial_loss": initial_loss.item(), "history": history,
        "params": params, "vocab_size": vocab_size,
    }, RESULTS_PATH)
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The folder the short run wrote, and what its extra cell saved."""
    folder = tmp_path_factory.mktemp("training") / "tiny-shakespeare"
    results_path = folder.parent / "results.pt"
    extra = (SAVE_RESULTS.replace("PROMPT_UNDER_TEST", repr(PROMPT)).replace("N_GENERATED", str(N_GENERATED))
             .replace("RESULTS_PATH", repr(str(results_path))))
    run_training_notebook(folder, TINY_SETTINGS, extra)
    return folder, torch.load(results_path, weights_only=False)


def test_training_lowers_the_validation_loss_below_the_bound(trained):
    folder, results = trained
    source = json.loads((folder / "source.json").read_text())
    assert source["kind"] == "trained" and source["model"] == "tiny-shakespeare"
    assert source["step"] == source["steps"] == 150
    assert source["trainer"] == "train_llama3_from_scratch.ipynb"
    # the folder holds the evaluation of the lowest validation loss (here the last, as the loss still falls)
    best_step, _, _, best_val = min(results["history"], key=lambda evaluation: evaluation[3])
    assert (source["step"], source["losses"]["val"]) == (best_step, best_val)
    assert source["data"]["sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert results["initial_loss"] == pytest.approx(math.log(results["vocab_size"]), abs=0.3)
    first_val, last_val = results["history"][0][3], results["history"][-1][3]
    assert last_val < first_val < results["initial_loss"]
    print(f"validation: {source['losses']['val_nats_per_character']:.3f} nats per character after 150 steps")
    assert source["losses"]["val_nats_per_character"] < VAL_NATS_PER_CHARACTER_BOUND


def test_checkpoint_is_in_meta_layout(trained):
    folder, results = trained
    params = json.loads((folder / "params.json").read_text())
    assert params == results["params"]
    assert set(params) == {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
                           "ffn_dim_multiplier", "norm_eps", "rope_theta", "use_scaled_rope"}
    ranks = [int(line.split()[1]) for line in (folder / "tokenizer.model").read_text().splitlines()]
    assert ranks == list(range(len(ranks))) and params["vocab_size"] == len(ranks) + 256
    weights = torch.load(folder / "consolidated.00.pth", weights_only=True)
    assert {tensor.dtype for tensor in weights.values()} == {torch.bfloat16}
    assert set(weights) == set(results["weights"])
    assert not list(folder.glob("*.partial"))
    assert not (folder / STAGING).exists()  # staged_build's unfinished files are gone


def hugging_face_model(weights: dict, params: dict, dtype: torch.dtype):
    """LlamaForCausalLM holding the notebook's weights (Meta's names converted), computing in dtype."""
    from transformers import LlamaConfig, LlamaForCausalLM

    converted = {"model.embed_tokens.weight": weights["tok_embeddings.weight"],
                 "model.norm.weight": weights["norm.weight"], "lm_head.weight": weights["output.weight"]}
    for layer in range(params["n_layers"]):
        for meta_name, hf_name in META_TO_HF_LAYER_NAMES.items():
            converted[f"model.layers.{layer}.{hf_name}"] = to_hugging_face(weights[f"layers.{layer}.{meta_name}"], meta_name, params)
    config = LlamaConfig(
        vocab_size=params["vocab_size"], hidden_size=params["dim"], num_hidden_layers=params["n_layers"],
        num_attention_heads=params["n_heads"], num_key_value_heads=params["n_kv_heads"],
        head_dim=params["dim"] // params["n_heads"], intermediate_size=weights["layers.0.feed_forward.w1.weight"].shape[0],
        hidden_act="silu", rms_norm_eps=params["norm_eps"], rope_theta=params["rope_theta"], max_position_embeddings=256,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
    )
    model = LlamaForCausalLM(config)
    model.load_state_dict({name: tensor.to(dtype) for name, tensor in converted.items()}, strict=True)
    return model.to(dtype)


def to_hugging_face(tensor: torch.Tensor, meta_name: str, params: dict) -> torch.Tensor:
    if meta_name == "attention.wq.weight":
        return interleaved_to_half_split(tensor, params["n_heads"])
    if meta_name == "attention.wk.weight":
        return interleaved_to_half_split(tensor, params["n_kv_heads"])
    return tensor


def hugging_face_loss_and_gradients(results: dict, dtype: torch.dtype):
    """Hugging Face's loss on the notebook's batch and its gradients, keyed by Meta's names (in Hugging Face's row order)."""
    params = results["params"]
    model = hugging_face_model(results["weights"], params, dtype)
    logits = model(input_ids=results["inputs"]).logits
    loss = F.cross_entropy(logits.view(-1, params["vocab_size"]), results["targets"].reshape(-1))
    loss.backward()
    gradients = {"tok_embeddings.weight": model.model.embed_tokens.weight.grad, "norm.weight": model.model.norm.weight.grad,
                 "output.weight": model.lm_head.weight.grad}
    hf_parameters = dict(model.named_parameters())
    for layer in range(params["n_layers"]):
        for meta_name, hf_name in META_TO_HF_LAYER_NAMES.items():
            gradients[f"layers.{layer}.{meta_name}"] = hf_parameters[f"model.layers.{layer}.{hf_name}"].grad
    return loss.item(), {name: gradient.double() for name, gradient in gradients.items()}


def test_loss_and_every_gradient_equal_hugging_face_llama(trained):
    _, results = trained
    peer_loss, peer_gradients = hugging_face_loss_and_gradients(results, torch.float32)
    wide_loss, wide_gradients = hugging_face_loss_and_gradients(results, torch.float64)
    terms = results["targets"].numel()  # the loss averages a term per position; each gradient sums one per position
    loss_truth = torch.tensor([wide_loss], dtype=torch.float64)
    loss_tolerance = rounding_tolerance(torch.tensor([peer_loss]), loss_truth, torch.float32, terms)
    assert_within_rounding(torch.tensor([results["loss"]]), loss_truth, loss_tolerance, "notebook loss - transformers float64")
    assert set(peer_gradients) == set(results["gradients"])
    for name, ours in results["gradients"].items():
        # wq and wk rows reordered as their weights were: a gradient follows its weight's rows
        ours = to_hugging_face(ours, name.split(".", 2)[-1], results["params"])
        tolerance = rounding_tolerance(peer_gradients[name], wide_gradients[name], torch.float32, terms)
        assert_within_rounding(ours, wide_gradients[name], tolerance, f"notebook - transformers float64: {name}")


def test_meta_reference_loads_the_checkpoint_and_computes_the_same_logits(trained):
    folder, results = trained
    block_size = results["inputs"].shape[1]
    tokens = results["inputs"][0]
    ours = results["file_logits"]
    # the notebook's model on the saved bf16 weights in float32, and Meta's, held to Meta's in float64
    reference_float32 = reference_logits(load_reference(folder, block_size, dtype=torch.float32), tokens)
    truth = reference_logits(load_reference(folder, block_size, dtype=torch.float64), tokens)
    tolerance = rounding_tolerance(reference_float32, truth, torch.float32, results["params"]["dim"])
    assert_within_rounding(ours, truth, tolerance, "notebook on the file - Meta float64")
    # Hugging Face's LlamaForCausalLM reads the file's weights to the same float64 logits (to float32 rounding:
    # its RMSNorm and RoPE tables compute in float32 whatever the model's dtype)
    peer = hugging_face_model({name: tensor.float() for name, tensor in torch.load(
        folder / "consolidated.00.pth", weights_only=True).items()}, results["params"], torch.float64)
    with torch.no_grad():
        assert_within_rounding(peer(input_ids=tokens.view(1, -1)).logits[0], truth, tolerance,
                               "transformers float64 on the file - Meta float64")
    # and Meta's bf16 computation, within bf16 rounding
    reference_bfloat16 = reference_logits(load_reference(folder, block_size), tokens)
    bf16_truth = reference_logits(load_reference(folder, block_size, dtype=torch.float32), tokens)
    assert_within_rounding(reference_bfloat16, bf16_truth, rounding_tolerance(
        reference_bfloat16, bf16_truth, torch.bfloat16, results["params"]["dim"]), "Meta bf16 - Meta float32")


def test_walkthrough_runs_on_the_trained_checkpoint(trained):
    folder, results = trained
    walkthrough = run_notebook(folder, PROMPT, names=("tokens", "logits", "next_token", "generated_tokens"),
                               dtype="float32", max_new_tokens=N_GENERATED)
    prompt_tokens, greedy_tokens = torch.tensor(results["prompt_tokens"]), results["greedy_tokens"]
    assert walkthrough["tokens"].tolist() == results["prompt_tokens"]
    # the walkthrough and the training model, both in float32, held to Meta's float64 on the same tokens
    n_positions = len(prompt_tokens) + N_GENERATED
    _, fed = reference_decoding(load_reference(folder, n_positions, dtype=torch.float32), prompt_tokens, N_GENERATED,
                                greedy_tokens)
    _, truth = reference_decoding(load_reference(folder, n_positions, dtype=torch.float64), prompt_tokens, N_GENERATED,
                                  greedy_tokens)
    tolerance = rounding_tolerance(fed, truth, torch.float32, results["params"]["dim"])
    assert_within_rounding(walkthrough["logits"], truth[0], tolerance, "walkthrough - Meta float64")
    assert_within_rounding(results["prompt_logits"], truth[0], tolerance, "training model - Meta float64")
    # every greedy choice is clear of float32 rounding, so that every faithful computation makes it
    top2 = truth.topk(2, dim=-1).values
    assert (top2[:, 0] - top2[:, 1] > 2 * tolerance).all()
    assert truth.argmax(dim=-1).tolist() == greedy_tokens
    assert walkthrough["next_token"] == greedy_tokens[0]
    assert walkthrough["generated_tokens"] == greedy_tokens


@pytest.mark.parametrize("name, value", [("LLAMA3_TRAIN_STEPS", "-1"), ("LLAMA3_TRAIN_STEPS", "many"),
                                         ("LLAMA3_TRAIN_LR", "fast"), ("LLAMA3_TRAIN_KV_HEADS", "3"),
                                         ("LLAMA3_TRAIN_MINUTES", "-1"), ("LLAMA3_DEVICE", "gpu")])
def test_bad_setting_stops_the_notebook_before_any_work(tmp_path, name, value):
    folder = tmp_path / "out"
    with pytest.raises(CellExecutionError) as error:
        run_training_notebook(folder, {**TINY_SETTINGS, name: value})
    message = str(error.value)
    assert "ValueError" in message and f"{name}={value}" in message.replace("'", "")
    assert not folder.exists()


def test_refuses_a_folder_that_it_did_not_write(tmp_path):
    folder = tmp_path / "downloaded"
    folder.mkdir()
    (folder / "params.json").write_text('{"dim": 4096}')
    with pytest.raises(CellExecutionError, match="CheckpointError") as error:
        run_training_notebook(folder, TINY_SETTINGS)
    assert "left untouched" in str(error.value) and "LLAMA3_TRAIN_OUT" in str(error.value)
    assert [path.name for path in folder.iterdir()] == ["params.json"]
    assert (folder / "params.json").read_text() == '{"dim": 4096}'


def test_writes_over_its_own_interrupted_first_save(tmp_path):
    folder = tmp_path / "interrupted"
    folder.mkdir()
    # what a run killed while saving its first checkpoint leaves: staged_build's folder, marked as the notebook's
    (folder / STAGING).mkdir()
    (folder / STAGING / "source.json").write_text(json.dumps({"kind": "trained", "model": "tiny-shakespeare"}))
    (folder / STAGING / "consolidated.00.pth").write_bytes(b"half a file")
    run_training_notebook(folder, {**TINY_SETTINGS, "LLAMA3_TRAIN_STEPS": "5"})
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        ["params.json", "tokenizer.model", "consolidated.00.pth", "source.json"])
    assert json.loads((folder / "source.json").read_text())["step"] == 5


def test_the_stored_run_keeps_no_progress_bar_as_a_stderr_block():
    notebook = nbformat.read(TRAINING_NOTEBOOK, as_version=4)
    streams = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
               if output.output_type == "stream"]
    assert streams and all(output.name == "stdout" for output in streams)
    assert not any(re.search(r"\d+/\d+ \[\d\d:\d\d", output.text) for output in streams)  # tqdm's "3000/3000 [05:51"
    assert "TQDM_DISABLE" in notebook.cells[0].source  # the intro says how the stored run leaves the bars out
