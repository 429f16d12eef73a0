"""breccia checkpoints on disk. Knows breccia, safetensors and torch; never imports SGLang.

- ``recipe_json.py``: the recipe/layout JSON breccia stores beside each tensor.
- ``recipes.py``: the CLI's recipe names, and how each recipe is stored and blocked.
- ``values.py``: scale and zero-point values, checked as they load.
- ``reader.py``: ``BrecciaCheckpoint``, every tensor of a checkpoint from its headers alone.
- ``experts.py``: an MoE layer's expert weights, each projection onto FusedMoE's w1 / w3 / w2.
- ``writer.py``: shards, index and an output directory that appears only when complete.
- ``quantize.py``: a breccia checkpoint from a Hugging Face one, through ``breccia.cast``.
- ``chunked_cast.py``: ``breccia.cast`` of one weight a few rows at a time, MXFP8 / NVFP4 on every CPU core.
- ``convert.py``: other formats' checkpoints into breccia, and breccia FP8 back to SGLang's FP8.
- ``fp8_sources.py``: SGLang / DeepSeek, compressed-tensors, ModelOpt and FBGEMM FP8 weights as breccia FP8, bit for bit.
- ``sources.py``: which ``convert --from`` reads a checkpoint, named when one is not breccia's.
- ``int4_sources.py``: AutoAWQ, GPTQ and compressed-tensors INT4 weights as breccia INT4, exactly (for ``convert``).
"""

from .reader import BrecciaCheckpoint, BrecciaEntry, StoredTensor
from .recipes import RECIPE_NAMES, make_recipe

__all__ = ["RECIPE_NAMES", "BrecciaCheckpoint", "BrecciaEntry", "StoredTensor", "make_recipe"]
