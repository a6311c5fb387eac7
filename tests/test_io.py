import subprocess
from pathlib import Path

from compattr import __version__
from compattr.io import provenance


def test_provenance_names_the_code_commit_and_versions():
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=True
    ).stdout.strip()
    out = provenance({"seed": 3}, device="cpu")
    assert out["commit"].removesuffix("-dirty") == head
    assert out["versions"]["compattr"] == __version__ and out["versions"]["torch"]
    assert out["config"] == {"seed": 3} and out["device"] == "cpu"


def test_provenance_without_git_has_no_commit(monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert provenance()["commit"] is None
