"""Launching the project's scripts from tests: a free local port for torchrun, and run_grpo.sh on the CPU try-out."""

import os
import socket
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now (for torchrun's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_grpo_sh(toy, output_dir, *args, expect: int = 0, script: str = "run_grpo.sh", **env) -> str:
    """`DEVICE=cpu bash run_grpo.sh ARGS` (or `script`) on the toy model and task (`env` overrides any variable); its
    output, after asserting that it ended with exit code `expect` (0: it succeeded)."""
    environment = {
        **os.environ,
        "DEVICE": "cpu",
        "MODEL": toy["model"],
        "DATA_FILE": toy["data"],
        "OUTPUT_DIR": str(output_dir),
        **env,
    }
    result = subprocess.run(
        ["bash", str(REPO / script), *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == expect, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def parse_recipe_on_cpu(recipe, data_file: str, output_dir) -> tuple:
    """`r1aqa.grpo.parse_args` of a recipe as the GPU run parses it, with only bf16 off and the CPU forced."""
    from r1aqa import grpo

    argv = ["--config", str(recipe), "--data_file", data_file, "--output_dir", str(output_dir)]
    return grpo.parse_args([*argv, "--bf16", "false", "--use_cpu", "true"])
