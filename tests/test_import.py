"""What ``import murmur`` and ``murmur --help`` load: pydantic-ai only once it is used.

Each check runs in a fresh interpreter (this test process has long imported pydantic-ai)
and asserts on ``sys.modules``, never on time: the timings are in the benchmark suite
(``python -m benchmarks --only imports``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

#: Top-level packages that ``import murmur`` must leave unloaded.
HEAVY_FOR_IMPORT = ("pydantic_ai", "pydantic_graph", "httpx", "opentelemetry", "typer")
#: ... and ``murmur --help`` too (it needs typer, not the demo's model or progress bars).
HEAVY_FOR_HELP = ("pydantic_ai", "pydantic_graph", "httpx", "opentelemetry", "rich.progress")


def run_fresh(code: str) -> dict[str, Any]:
    """Run ``code`` in a new interpreter; it prints one JSON object as its last line."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "100"},
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


def test_import_murmur_leaves_pydantic_ai_unloaded() -> None:
    found = run_fresh(
        f"""
        import json, sys
        import murmur
        heavy = {HEAVY_FOR_IMPORT!r}
        print(json.dumps({{
            "loaded": sorted({{m.split(".")[0] for m in sys.modules}} & set(heavy)),
            "names": sorted(murmur.__all__),
        }}))
        """
    )
    assert found["loaded"] == []
    assert "Agent" in found["names"]


def test_pydantic_ai_is_imported_when_a_pydantic_ai_agent_is_built_and_run() -> None:
    found = run_fresh(
        """
        import json, sys
        import anyio
        import murmur
        from murmur.middleware import is_retryable

        spec = murmur.Agent(name="echo", model="test")
        checks = {
            "after_spec": "pydantic_ai" in sys.modules,
            "retryable": [is_retryable(ConnectionError()), is_retryable(ValueError())],
            "not_an_agent": None,
        }
        try:
            murmur.Agent(name="bad", model=42)
        except ValueError as exc:
            checks["not_an_agent"] = str(exc)

        async def main():
            async with murmur.AgentRuntime() as runtime:
                result = await runtime.run(spec, murmur.TaskSpec(input="hi"))
            return result.is_ok()

        checks["ran"] = anyio.run(main)
        checks["after_run"] = "pydantic_ai" in sys.modules
        print(json.dumps(checks))
        """
    )
    assert found["after_spec"] is False  # a spec with a model string imports nothing
    assert found["retryable"] == [True, False]
    assert "model" in found["not_an_agent"]
    assert found["ran"] is True
    assert found["after_run"] is True


def test_murmur_help_does_not_load_the_demo() -> None:
    found = run_fresh(
        f"""
        import json, sys
        from murmur.cli import app
        try:
            app(["--help"])
        except SystemExit as exc:
            code = exc.code
        heavy = {HEAVY_FOR_HELP!r}
        print(json.dumps({{
            "code": code,
            "loaded": sorted(m for m in heavy if m in sys.modules),
            "demo": "murmur.cli._demo" in sys.modules,
        }}))
        """
    )
    assert found["code"] == 0
    assert found["loaded"] == []
    assert found["demo"] is False
