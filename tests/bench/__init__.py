"""``task bench``: the W0–W8 workloads of ``shared/bench`` against this API, and a bare-Litestar ceiling.

Not a test package: no module here is named ``test_*.py``, so pytest collects nothing (``tests/test_bench.py`` tests
the pieces that run without wrk). Start it with ``task bench`` or ``pdm run python -m tests.bench.run --help``.
"""
