"""Small helpers shared by the workflow scripts: logging, devices, provenance, JSON."""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compattr._version import __version__

if TYPE_CHECKING:
    import torch

__all__ = ["start_log", "resolve_device", "code_commit", "provenance", "write_json", "source_hash"]


def start_log(path: str | Path) -> logging.Logger:
    """Send this process's stderr (tqdm progress, warnings, tracebacks) and logging to ``path``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "w", buffering=1)  # noqa: SIM115 - kept open for the life of the job
    sys.stderr = stream
    logging.basicConfig(stream=stream, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
    return logging.getLogger("compattr")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` becomes ``cuda`` when a GPU is visible, else ``cpu``; ``"cuda"`` without one is an error."""
    import torch  # here, not at import: the workflow imports this module to plan its jobs

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config asks for device 'cuda' but torch sees no GPU; use 'auto' or 'cpu'")
    return torch.device(name)


def code_commit() -> str | None:
    """The git commit of the checkout this library runs from, ``-dirty`` if it has changes; None outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def provenance(config: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Versions of the stack, the code's git commit, the host, and (optionally) the config that made an output."""
    # compattr's own version from the code that runs: an editable install's metadata keeps the
    # version it was installed at, and a checkout on PYTHONPATH has none.
    versions: dict[str, str | None] = {"compattr": __version__}
    for package in ("torch", "numpy", "scipy", "scikit-learn", "zarr", "snakemake"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    out: dict[str, Any] = {
        "versions": versions,
        "commit": code_commit(),
        "python": platform.python_version(),
        "host": platform.node(),
    }
    if config is not None:
        out["config"] = config
    out.update(extra)
    return out


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON."""
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _library_imports(source: str) -> set[str]:
    """The ``compattr`` submodules a Python source imports (the package itself left out)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name.split(".")[1] for name in names if name.startswith("compattr."))
    found.discard("_version")  # the version alone changes no job's output
    return found


def source_hash(script: str | Path, package: str | Path | None = None) -> str:
    """A hash of the library code a script runs: the ``compattr`` modules it imports, and theirs, in turn.

    The workflow passes it as a rule parameter, so Snakemake reruns a rule when
    library code its script depends on changes (the script itself Snakemake
    tracks already). The package's ``__init__`` and its version are left out.
    ``package`` is the folder of the modules (default: this library's).
    """
    package = Path(__file__).resolve().parent if package is None else Path(package)
    pending = _library_imports(Path(script).read_text())
    seen: dict[str, str] = {}
    while pending:
        name = pending.pop()
        path = package / f"{name}.py"
        if name in seen or not path.exists():
            continue
        seen[name] = path.read_text()
        pending |= _library_imports(seen[name]) - set(seen)
    digest = hashlib.sha256()
    for name in sorted(seen):
        digest.update(f"{name}\n{seen[name]}\n".encode())
    return digest.hexdigest()[:16]
