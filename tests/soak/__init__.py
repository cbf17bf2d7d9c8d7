"""``task soak``: the API under one mixed workload for minutes on end, reporting errors, p99 and RSS per minute.

Not a test package (no ``test_*.py`` here); ``tests/test_soak.py`` tests the parsing and the verdict. Start it with
``task soak`` or ``pdm run python -m tests.soak.run --help``.
"""
