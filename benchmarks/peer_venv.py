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
    """A peer package pinned to one version, and the script that drives it.

    ``extras`` are the package's own extras (``murmur-runtime[redis]``); ``also`` are
    further pinned requirements installed beside it (``taskiq-redis==1.2.4``). The venv
    records what it was made with, and one made with other requirements is made again.
    """

    dist: str
    version: str
    import_name: str
    script: str
    extras: tuple[str, ...] = ()
    also: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        extras = f"[{','.join(self.extras)}]" if self.extras else ""
        return f"{self.dist}{extras}=={self.version}"

    @property
    def requirements(self) -> list[str]:
        return [self.requirement, *self.also]

    @property
    def venv_name(self) -> str:
        return f"{self.dist}-{self.version}"


#: Run in a new venv as ``python -c _PROBE <dist> <import name>``: where the package is
#: imported from, and the version of every distribution installed there.
_PROBE = """
import importlib, importlib.metadata as m, json, sys
dist, name = sys.argv[1], sys.argv[2]
installed = {d.metadata["Name"]: d.version for d in m.distributions()}
print(json.dumps({
    "dist": dist, "version": m.version(dist), "file": importlib.import_module(name).__file__,
    "python": sys.version.split()[0], "pydantic_ai": installed.get("pydantic-ai-slim"),
    "installed": dict(sorted(installed.items())),
}))
"""


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
        ready: dict[str, Any] = json.loads(marker.read_text())
        if ready.get("requirements", [peer.requirement]) == peer.requirements:
            return python, ready
        if not create:
            return None, {"error": f"{venv} was made for {ready.get('requirements')}"}
    elif not create:
        return None, {"error": f"{venv} does not exist (not created in this mode)"}
    wanted = " ".join(peer.requirements)
    log(f"    creating {venv} and installing {wanted} (one-off, may take minutes)")
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
            [str(python), "-m", "pip", "install", "--quiet", *peer.requirements],
            check=True,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        probe = subprocess.run(
            [str(python), "-c", _PROBE, peer.dist, peer.import_name],
            check=True,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=venv,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        return None, {"error": f"setting up {wanted} failed: {str(detail)[-1500:]}"}
    info: dict[str, Any] = json.loads(probe.stdout.strip().splitlines()[-1])
    if not str(info.get("file", "")).startswith(str(venv)):
        return None, {"error": f"{peer.import_name} resolved outside the venv: {info}"}
    info["requirements"] = peer.requirements
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
