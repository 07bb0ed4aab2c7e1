"""nox sessions: tests (asyncio and Trio), lint, typecheck, layers, bench, docs (snippets run)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "layers"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = ["3.11"]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite; every behavioural test runs on both asyncio and Trio."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff>=0.8")
    session.run("ruff", "check", "src", "tests", "benchmarks", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "examples", "noxfile.py")


@nox.session(python=PYTHON)
def layers(session: nox.Session) -> None:
    """import-linter: each layer of murmur imports only the layers below it."""
    session.install("-e", ".", "import-linter>=2.1")
    session.run("lint-imports")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over src/."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Concurrency-throughput benchmarks; `nox -s bench -- --quick` for the short run."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The site, built strictly (broken links and references fail), and every Python block
    of README.md and docs/ and every script of examples/ run as tests (both backends)."""
    session.install("-e", ".[dev,docs]")
    session.run("mkdocs", "build", "--strict")
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/test_docs_snippets.py",
        "tests/test_examples.py",
        "tests/test_seed.py",
        "tests/test_seed_snippets.py",
        "tests/middleware/test_seed_policies.py",
        "tests/groups/test_group_research.py",
        *session.posargs,
    )
