"""`grantvault serve` shuts down cleanly on SIGTERM: the database is closed, WAL folded back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port, wait_ready

pytestmark = pytest.mark.e2e


def test_sigterm_closes_the_database(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "GRANTVAULT_DATA_DIR": str(tmp_path / "data"),
        "GRANTVAULT_PORT": str(port),
    }
    for var in ("GRANTVAULT_DATABASE_URL", "GRANTVAULT_MASTER_KEY", "GRANTVAULT_MASTER_KEY_FILE"):
        env.pop(var, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "grantvault_server", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        assert (tmp_path / "data" / "grantvault.db-wal").exists()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    assert "Traceback" not in stderr
    assert not (tmp_path / "data" / "grantvault.db-wal").exists()
