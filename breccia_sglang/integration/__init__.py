"""Everything that touches SGLang: the one folder an SGLang upgrade has to be reviewed in.

- ``plugin.py``: ``register()`` and ``HOOKS``, the table of every SGLang target we hook.
- ``platform.py``: the CPU platform (entry point ``sglang.srt.platforms``).
- ``args.py``: ``--breccia-format`` and ``sgl.Engine(breccia_format=True)``.
- ``quant_config.py``: ``BrecciaConfig``, SGLang's QuantizationConfig, built from the checkpoint.
- ``linear_method.py``: ``BrecciaLinearMethod``, one breccia linear layer.
- ``sglang_params.py``: its parameters, from SGLang's own parameter factories.
- ``gemm/``: the GEMM kernels a layer can get (SGLang's FP8 linear, Triton block kernel and
  Marlin, Hopper's blockwise GEMMs, our Triton W4A16, the emulated one), chosen from a ``LinearSpec``.
- ``moe_method.py``: ``BrecciaMoEMethod``, one breccia mixture-of-experts layer (FusedMoE).
- ``moe/``: the kernels an MoE layer can get, chosen from a ``MoESpec``, and its expert parameters.
- ``weight_loading.py``: checkpoint tensor names -> SGLang's parameters, values checked.
- ``resident_bytes.py``: what the loaded breccia layers hold in memory, in the log.
- ``inspect_report.py``: ``breccia-sglang inspect``, the checkpoint and each layer's kernel here.
- ``kv_pool.py``: ``BrecciaFP8KVPool``, SGLang's MHA pool with FP8 data and per-(token, head)
  scales, read and written through ``PagedKV`` views.
- ``kv_config.py``: when SGLang builds that pool, and its true size per token.
- ``attention/``: the two attention backends that read it, and which one a pool gets.
"""
