"""The committed stubs in generated/ must be what `make generate` makes from protos/."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_generated_stubs_match_protos(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(
        ["bash", str(REPO / "scripts" / "generate.sh"), str(tmp_path)], check=True, env=env, capture_output=True
    )
    committed = REPO / "generated"
    fresh_files, committed_files = _files(tmp_path / "kybernetes"), _files(committed / "kybernetes")
    assert fresh_files == committed_files, "generated/ has missing or extra files: run `make generate`"
    stale = [
        f
        for f in sorted(fresh_files)
        if not filecmp.cmp(tmp_path / "kybernetes" / f, committed / "kybernetes" / f, shallow=False)
    ]
    assert not stale, f"generated/ is stale for {stale}: run `make generate` and commit"
