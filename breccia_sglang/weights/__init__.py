"""breccia weights inside SGLang: quantization config, linear method, GEMM choice, loading.

Call path: SGLang builds the model with ``BrecciaConfig`` (config.py) -> each linear layer
gets a ``BrecciaLinearMethod`` (linear_method.py) whose GEMM kernel is picked by
``choose_kernel`` (gemm.py) -> SGLang's loader feeds checkpoint tensors through
``rename_breccia_tensors`` (loading.py) into the parameters the kernel declared.
"""
