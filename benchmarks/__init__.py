"""Murmur's benchmark suite: ``python -m benchmarks`` (``--quick`` for the short run).

Scenarios live in ``benchmarks/scenarios/`` and register themselves in
``benchmarks.registry.REGISTRY``; results go to ``benchmarks/results/`` as JSON, a
markdown report and PNG plots. See docs/benchmarks.md.
"""
