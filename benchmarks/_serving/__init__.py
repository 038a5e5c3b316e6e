"""The pieces of ``benchmarks/bench_serving.py`` and ``benchmarks/bench_hot_swap.py``.

``demo_model`` makes (and caches) the registered model and its Redis online store with
the platform's own demo; ``servers`` starts and stops the three HTTP servers compared
(this app, the bare FastAPI floor in ``bare_app``, ``mlflow models serve``); ``wrk``
writes the Lua scripts, runs wrk and parses what it prints.
"""
