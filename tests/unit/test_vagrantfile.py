"""The lab VM definition parses and provisions with `make setup`."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import IN_CI, ROOT


def test_vagrantfile_validates(tmp_path):
    if shutil.which("vagrant") is None:
        if IN_CI:
            pytest.fail("vagrant is missing: `make setup` installs it")
        pytest.skip("vagrant not installed (make setup installs it)")
    shutil.copy(ROOT / "Vagrantfile", tmp_path / "Vagrantfile")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path), "VAGRANT_CWD": str(tmp_path),
           "VAGRANT_HOME": str(tmp_path / ".vagrant.d"), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    proc = subprocess.run(["vagrant", "validate", "--ignore-provider"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout

