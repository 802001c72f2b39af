"""No development secret in production: serve and reconcile refuse to start without
FLASHSALE_SECRET unless FLASHSALE_ENV=development, in one line naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", [["serve", "--port", "1"], ["reconcile"]])
@pytest.mark.parametrize("env_value", [None, "production", "staging"])
def test_refuses_the_development_secret_outside_development(command, env_value) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FLASHSALE_SECRET", "FLASHSALE_ENV")}
    if env_value is not None:
        env["FLASHSALE_ENV"] = env_value
    done = subprocess.run([sys.executable, "-m", "cli.main", *command], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "FLASHSALE_SECRET" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_settings_allow_the_development_secret_only_in_development() -> None:
    Settings.from_env({"FLASHSALE_ENV": "development"}).check_secret()
    Settings.from_env({"FLASHSALE_SECRET": "x" * 40}).check_secret()
    with pytest.raises(ValueError, match="FLASHSALE_SECRET"):
        Settings.from_env({}).check_secret()
