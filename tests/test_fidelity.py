"""The notebook computes what Meta's reference code computes.

On checkpoints made to tell every head, layer and norm apart (fidelity_cases.py), the notebook's own
cells, run headlessly, must give Meta's prompt ids, Meta's logits within the rounding of the dtype they
are computed in, Meta's next token and Meta's five most likely tokens. The oracle is
llama_models.llama3.model.Transformer (reference.py) on the same checkpoint file.

How close is close enough. Two faithful computations of the same model in the same dtype differ only in
where and in which order they round: each is off the exact result by its own rounding error. bf16 keeps 8
significant bits (unit roundoff u = 2^-8, about 0.0039): every matrix product, norm, softmax, SwiGLU and
residual add of every layer rounds its result to a relative u, and the logits themselves are rounded to bf16
at the end. We measure that accumulated error for Meta's code on the very same input, as the distance e
between the reference computing in the dtype and the reference computing in the next wider one (float32
for bf16; float64 for float32, where the reference still turns its RoPE, RMSNorm and softmax in float32).
The notebook does the same operations in the same dtype, so its error is of the same size, and

    |notebook - reference| <= |notebook - exact| + |exact - reference| ~ 2 e

plus one unit in the last place of the largest logit, for the final rounding of the logits. Measured on
these checkpoints: e is 0.03 to 0.04 in bf16 (about 2 u of the largest logit, ~4.5) and about 3e-6 in float32.
A wrong index, mask, rotation or activation moves logits by a sizeable fraction of their spread (~1);
tests/check_mutations.py breaks a copy of the notebook one character at a time to show that these tests notice.
"""

import pytest
import torch

from fidelity_cases import (CHECKPOINTS, PROMPTS, checkpoint_folder, meta_prompt_tokens, notebook_run,
                            reference_last_logits, rounding_tolerance)

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
REFERENCE_DTYPE = {"bfloat16": None, "float32": torch.float32}  # None: the checkpoint's own bf16 tensors
WIDER_DTYPE = {"bfloat16": torch.float32, "float32": torch.float64}
TOP_K = 5

OTHER_PROMPTS = [name for name in PROMPTS if name != "default"]
# every checkpoint with the default prompt, in both dtypes; every prompt on a grouped-query checkpoint with
# head_dim 32 (both dtypes) and on the single key/value head one with head_dim 128 (bf16, Meta's dtype)
CASES = ([(checkpoint, "default", dtype) for dtype in DTYPES for checkpoint in CHECKPOINTS]
         + [("gqa4-hd32", prompt, dtype) for dtype in DTYPES for prompt in OTHER_PROMPTS]
         + [("mqa-hd128", prompt, "bfloat16") for prompt in OTHER_PROMPTS])
CASE_PARAMS = [pytest.param(*case, id="-".join(case)) for case in CASES]
PROMPT_PARAMS = [pytest.param(checkpoint, prompt, id=f"{checkpoint}-{prompt}")
                 for checkpoint, prompt in dict.fromkeys((checkpoint, prompt) for checkpoint, prompt, _ in CASES)]


@pytest.fixture
def folder(tmp_path_factory, checkpoint):
    return checkpoint_folder(tmp_path_factory, checkpoint)


def logit_tolerance(folder, prompt, dtype) -> dict:
    """The tolerance derived in the module's docstring, with the quantities it comes from."""
    reference = reference_last_logits(folder, prompt, REFERENCE_DTYPE[dtype])
    wider = reference_last_logits(folder, prompt, WIDER_DTYPE[dtype])
    return {"tolerance": rounding_tolerance(reference, wider, DTYPES[dtype]),
            "reference_rounding_error": (reference - wider).abs().max().item(), "largest_logit": wider.abs().max().item()}


def top_k_bounds(reference: torch.Tensor, k: int, tolerance: float):
    """The tokens every faithful top k must hold, and those it may hold, given logits known to +-tolerance.

    A token whose reference logit beats the (k+1)-th best by more than 2 tolerances beats all the tokens
    outside the reference's top k in any computation within tolerance: it must be there. A token more than
    2 tolerances below the k-th best is beaten by all of the reference's top k: it cannot be there. When the
    gap between the k-th and (k+1)-th logits exceeds 2 tolerances, both sets are the reference's top k.
    """
    ordered = reference.sort(descending=True).values
    must = set(torch.nonzero(reference > ordered[k] + 2 * tolerance).flatten().tolist())
    may = set(torch.nonzero(reference >= ordered[k - 1] - 2 * tolerance).flatten().tolist())
    return must, may, (ordered[k - 1] - ordered[k]).item()


@pytest.mark.parametrize("checkpoint, prompt, dtype", CASE_PARAMS)
def test_logits_equal_metas_within_rounding(folder, prompt, dtype):
    ours = notebook_run(folder, prompt, dtype)["logits"]
    reference = reference_last_logits(folder, prompt, REFERENCE_DTYPE[dtype])
    bound = logit_tolerance(folder, prompt, dtype)
    assert ours.shape == reference.shape == (128256,)
    assert ours.dtype == torch.float32
    difference = (ours - reference).abs().max().item()
    print(f"max |notebook - reference| = {difference:.3g}; tolerance {bound['tolerance']:.3g} "
          f"(reference's own rounding error {bound['reference_rounding_error']:.3g}, "
          f"largest logit {bound['largest_logit']:.3g})")
    assert difference <= bound["tolerance"], (f"the notebook's logits are {difference:.3g} away from Meta's, "
                                              f"more than the {bound['tolerance']:.3g} that rounding explains")


@pytest.mark.parametrize("checkpoint, prompt, dtype", CASE_PARAMS)
def test_next_token_and_top5_are_metas(folder, prompt, dtype):
    run = notebook_run(folder, prompt, dtype)
    reference = reference_last_logits(folder, prompt, REFERENCE_DTYPE[dtype])
    tolerance = logit_tolerance(folder, prompt, dtype)["tolerance"]

    for k, ours in [(1, {run["next_token"]}), (TOP_K, set(torch.topk(run["logits"], TOP_K).indices.tolist()))]:
        must, may, gap = top_k_bounds(reference, k, tolerance)
        if dtype == "float32":
            # float32's tolerance (~5e-6) is far below the gaps between these random logits (~1e-2): no gap
            # at the k-th place may be as small (else choose another seed), and the check is exact equality.
            assert gap > 2 * tolerance, f"near-tie at place {k} (gap {gap:.3g}): choose another seed"
            assert must == may
        # bf16 rounds logits to steps of 2^-5 near 4.5: reference logits often tie exactly, and then
        # only the tokens outside the tie are decided.
        assert must <= ours <= may, (f"top {k}: notebook {sorted(ours)}, reference must {sorted(must)}, "
                                     f"may {sorted(may)}, gap at place {k} {gap:.3g}")


@pytest.mark.parametrize("checkpoint, prompt", PROMPT_PARAMS)
def test_prompt_ids_are_metas(folder, prompt):
    """BOS, then the ids of Meta's tokenizer; no EOS (Meta's generation code builds prompts so)."""
    ours = notebook_run(folder, prompt, "bfloat16")["tokens"].tolist()
    assert ours == meta_prompt_tokens(folder, prompt).tolist()
    assert ours[0] == 128000
