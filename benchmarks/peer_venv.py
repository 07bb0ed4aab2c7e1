"""Virtualenvs for peer packages, under ``benchmarks/.venvs/`` (gitignored).

A peer may install a package under an import name this project also uses (the PyPI
package ``murmur-runtime`` installs ``murmur``), so peers never run in our virtualenv:
each gets its own, made with the standard ``venv`` module and filled with ``pip`` (which
uses this machine's configured package index), and a peer script runs there as a
subprocess that prints JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PEER_SCRIPTS_DIR", "PeerSpec", "clean_env", "ensure_venv", "run_peer_script"]

PEER_SCRIPTS_DIR = Path(__file__).resolve().parent / "peer_scripts"

# Variables that would make a subprocess see this virtualenv or this repository.
_LEAKY_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONSAFEPATH")


@dataclass(frozen=True)
class PeerSpec:
    """A peer package pinned to one version, and the script that drives it."""

    dist: str
    version: str
    import_name: str
    script: str

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"

    @property
    def venv_name(self) -> str:
        return f"{self.dist}-{self.version}"


def clean_env() -> dict[str, str]:
    """This process's environment minus what would leak our virtualenv into a child."""
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY_ENV}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _python(venv: Path) -> Path:
    scripts = "Scripts" if sys.platform == "win32" else "bin"
    return venv / scripts / ("python.exe" if sys.platform == "win32" else "python")


def ensure_venv(
    peer: PeerSpec, venvs_dir: Path, *, create: bool, log: Callable[[str], None]
) -> tuple[Path | None, dict[str, Any]]:
    """The peer venv's interpreter (creating the venv if allowed), and what is installed.

    Returns ``(None, info)`` when the venv does not exist and ``create`` is false, or when
    creating it failed (``info["error"]`` says why).
    """
    venv = (venvs_dir / peer.venv_name).resolve()
    python = _python(venv)
    marker = venv / ".bench-ready.json"
    if marker.exists() and python.exists():
        return python, json.loads(marker.read_text())
    if not create:
        return None, {"error": f"{venv} does not exist (not created in this mode)"}
    log(f"    creating {venv} and installing {peer.requirement} (one-off, may take minutes)")
    venvs_dir.mkdir(parents=True, exist_ok=True)
    env = clean_env()
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(venv)],
            check=True,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", peer.requirement],
            check=True,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        probe = subprocess.run(
            [
                str(python),
                "-c",
                "import importlib.metadata as m, json, sys, "
                f"{peer.import_name} as pkg; print(json.dumps({{"
                f"'dist': '{peer.dist}', 'version': m.version('{peer.dist}'), "
                "'pydantic_ai': m.version('pydantic-ai-slim'), 'file': pkg.__file__, "
                "'python': sys.version.split()[0]}))",
            ],
            check=True,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=venv,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        return None, {"error": f"setting up {peer.requirement} failed: {str(detail)[-1500:]}"}
    info: dict[str, Any] = json.loads(probe.stdout.strip().splitlines()[-1])
    if not str(info.get("file", "")).startswith(str(venv)):
        return None, {"error": f"{peer.import_name} resolved outside the venv: {info}"}
    marker.write_text(json.dumps(info))
    return python, info


def run_peer_script(
    python: Path, peer: PeerSpec, config: dict[str, Any], timeout: float = 1800
) -> dict[str, Any]:
    """Run the peer's script in its venv with ``config``; return the JSON it prints."""
    script = PEER_SCRIPTS_DIR / peer.script
    done = subprocess.run(
        [str(python), str(script), json.dumps(config)],
        env=clean_env(),
        cwd=python.parent.parent,  # the venv root: nothing importable from this repository
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{peer.script} failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
        )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{peer.script} printed no JSON: {done.stdout[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result
