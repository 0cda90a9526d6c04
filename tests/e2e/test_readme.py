"""The README's examples, run as written against a real server (placeholders filled in)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Echo, Server

README = Path(__file__).resolve().parents[2] / "README.md"
pytestmark = pytest.mark.e2e


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_readme_quickstart(server: Server, echo: Echo) -> None:
    log = server.log.read_text()
    assert "Next steps" in log and "BACK IT UP" in log  # serve prints what to do next
    commands = (
        next(b for b in _blocks("bash") if "grantvault apps create demo" in b).strip().splitlines()
    )
    env = {
        **server.env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OPENAI_KEY": "sk-readme-0123456789",
    }
    values: dict[str, str] = {}
    for line in commands:
        command = line.split("  #")[0]
        for name, value in values.items():
            command = command.replace(f"<{name}>", value)
        if "--template openai" in command:
            # The example's host is the real OpenAI API; the test sends to a local endpoint.
            command += f" --allowed-host {echo.host_rule}"
        proc = subprocess.run(
            ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, (command, proc.stderr)
        if "--json" in command:
            values.update(
                {k: str(v) for k, v in json.loads(proc.stdout).items() if isinstance(v, str)}
            )

    program = next(b for b in _blocks("python") if "alter_sdk" in b).replace(
        "https://api.openai.com", echo.url
    )
    run_env = {
        **env,
        "ALTER_BASE_URL": server.base_url,
        "ALTER_API_KEY": values["api_key"],
        "GRANT_ID": values["grant_id"],
    }
    proc = subprocess.run(
        [sys.executable, "-c", program], env=run_env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "200"
    assert echo.seen[-1]["headers"]["Authorization"] == "Bearer sk-readme-0123456789"
    assert echo.seen[-1]["path"] == "/v1/chat/completions"

    # The checks after the README's own commands run in-process (the same commands, without
    # two more Python start-ups).
    events = server.cli_json("audit", "list", "--app", "demo")["events"]
    assert any(e["event"] == "credential.retrieved" and e["outcome"] == "success" for e in events)
    assert server.cli("audit", "verify").returncode == 0
