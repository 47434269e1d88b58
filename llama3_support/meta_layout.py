"""What a Llama 3 checkpoint in Meta's original layout holds: the tensors' names and shapes, and the tokenizer.

A folder in that layout has params.json (the architecture), consolidated.00.pth (every weight, bf16, under
Meta's names) and tokenizer.model (Meta's tiktoken ranks). The demo builder, the benchmark's full-size
builder and the tests all derive their tensors from checkpoint_shapes(params) below.
"""

from pathlib import Path

from llama3_support.checkpoint_folder import CheckpointError
from llama3_support.vocabulary import ffn_hidden_dim

# params.json of meta-llama/Meta-Llama-3-8B, byte for byte.
META_LLAMA3_8B_PARAMS_JSON = (
    '{"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256, '
    '"multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0}'
)
META_LLAMA3_8B = "Meta-Llama-3-8B"


def layer_shapes(params: dict) -> dict:
    """Shape of every tensor of one transformer block, keyed by its name inside the block."""
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv_heads = params.get("n_kv_heads") or n_heads
    head_dim = dim // n_heads
    hidden = ffn_hidden_dim(params)
    return {
        "attention.wq.weight": (n_heads * head_dim, dim),
        "attention.wk.weight": (n_kv_heads * head_dim, dim),
        "attention.wv.weight": (n_kv_heads * head_dim, dim),
        "attention.wo.weight": (dim, n_heads * head_dim),
        "feed_forward.w1.weight": (hidden, dim),
        "feed_forward.w2.weight": (dim, hidden),
        "feed_forward.w3.weight": (hidden, dim),
        "attention_norm.weight": (dim,),
        "ffn_norm.weight": (dim,),
    }


def checkpoint_shapes(params: dict) -> dict:
    """Every key of consolidated.00.pth with its shape, in the order Meta writes them."""
    dim, vocab_size = params["dim"], params["vocab_size"]
    shapes = {"tok_embeddings.weight": (vocab_size, dim)}
    for layer in range(params["n_layers"]):
        for name, shape in layer_shapes(params).items():
            shapes[f"layers.{layer}.{name}"] = shape
    shapes["norm.weight"] = (dim,)
    shapes["output.weight"] = (vocab_size, dim)
    return shapes


def bundled_tokenizer_path() -> Path:
    """Meta's Llama 3 tokenizer.model, as shipped inside the llama-models package."""
    try:
        import llama_models.llama3
    except ImportError as error:
        raise CheckpointError(
            "The demo checkpoint takes Meta's tokenizer.model from the llama-models package, "
            "which is not installed. Run: pip install -r requirements.txt"
        ) from error
    path = Path(llama_models.llama3.__file__).parent / "tokenizer.model"
    if not path.is_file():
        raise CheckpointError(f"llama-models is installed but has no {path}; reinstall it: pip install --force-reinstall llama-models")
    return path
