"""Fail loudly if the environment holds a CUDA torch build or nvidia-* wheels (run by setup_env.sh).

On the CPU machines this project is developed and tested on, a CUDA build means a multi-GB download
that was pulled in by accident. GPU users skip this check with MERC_ALLOW_CUDA_TORCH=1.
"""

import subprocess
import sys


def main() -> int:
    import torch

    version = torch.__version__
    if not version.endswith("+cpu"):
        print(
            f"setup: torch {version} is not the CPU build. Remove .venv and rerun `make test`, "
            "or set MERC_ALLOW_CUDA_TORCH=1 on a GPU machine.",
            file=sys.stderr,
        )
        return 1
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    ).stdout
    cuda_pkgs = [line for line in frozen.splitlines() if line.lower().startswith(("nvidia-", "triton"))]
    if cuda_pkgs:
        print(f"setup: CUDA packages came in: {cuda_pkgs}. Remove .venv and rerun.", file=sys.stderr)
        return 1
    print(f"setup: torch {version} (CPU build, no nvidia packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
