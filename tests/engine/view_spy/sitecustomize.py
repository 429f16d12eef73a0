"""A spy for the engine tests, loaded by Python at start-up in every engine process whose
PYTHONPATH holds this folder (SGLang's scheduler processes inherit the test's environment).

With ``BRECCIA_TEST_VIEW_SPY=DIR`` it counts, in each process, how the breccia KV pool is read:
``PagedScaledTensor`` views built (one-sequence and batch), and ``dequantize`` calls with the
tokens they returned. Each process rewrites ``DIR/<pid>.json`` after every count, so the counts
survive however SGLang ends its schedulers.
"""

import json
import os

OUT = os.environ.get("BRECCIA_TEST_VIEW_SPY")

if OUT:
    from breccia_sglang.kvcache import paged_tensor

    counts = {"views": 0, "batch_views": 0, "dequantize_calls": 0, "dequantized_tokens": 0}
    original_init, original_dequantize = paged_tensor.PagedScaledTensor.__init__, paged_tensor.PagedScaledTensor.dequantize

    def _save():
        path = os.path.join(OUT, f"{os.getpid()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(counts, f)
        os.replace(path + ".tmp", path)

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        counts["batch_views" if self.indptr is not None else "views"] += 1
        _save()

    def dequantize(self):
        values = original_dequantize(self)
        counts["dequantize_calls"] += 1
        counts["dequantized_tokens"] += values.shape[0]
        _save()
        return values

    paged_tensor.PagedScaledTensor.__init__ = __init__
    paged_tensor.PagedScaledTensor.dequantize = dequantize
