"""The two commands of the README, with nothing but Python 3.10+ installed.

    python3 dev.py example   # run the example project at http://127.0.0.1:8000
    python3 dev.py test      # run the whole test suite

Both create (once) a virtual environment in .venv and install what they need;
running them again is fast and safe.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")

#: The example project's own needs (chanx itself comes from pyproject.toml).
EXAMPLE = ["daphne>=4.1", "uvicorn[standard]>=0.30", "channels-redis>=4.2"]
#: Everything the test suite uses.
TEST = [
    *EXAMPLE,
    "pytest>=8",
    "pytest-asyncio>=0.24",
    "pytest-django>=4.9",
    "pytest-timeout>=2.3",
    "hypothesis>=6.100",
    "websockets>=13",
    "jsonschema>=4.22",
    "playwright>=1.45",
    "psutil>=5.9",
    "ruff>=0.6",
    "mypy>=1.11",
    "django-stubs>=5.0",
    "djangorestframework-stubs>=3.15",
]
#: The official AsyncAPI JSON schemas, from the npm registry (when npm exists).
ASYNCAPI_SPECS = "@asyncapi/specs@6"
NODE_DIR = ROOT / ".ci" / "node"


def run(*args: str | Path, **kwargs: object) -> None:
    subprocess.run([str(a) for a in args], check=True, **kwargs)  # type: ignore[call-overload]


def ensure_venv(requirements: list[str]) -> None:
    """Create .venv and install chanx (editable) plus ``requirements``, once."""
    if not PYTHON.exists():
        print("Creating .venv ...", flush=True)
        venv.create(VENV, with_pip=True)
    wanted = hashlib.sha256(
        "\n".join([*requirements, (ROOT / "pyproject.toml").read_text()]).encode()
    ).hexdigest()
    stamp = VENV / f".dev-stamp-{wanted[:16]}"
    if stamp.exists():
        return
    print("Installing dependencies into .venv ...", flush=True)
    run(PYTHON, "-m", "pip", "install", "-q", "--upgrade", "pip")
    run(PYTHON, "-m", "pip", "install", "-q", "-e", ROOT, *requirements)
    stamp.touch()


def ensure_asyncapi_specs() -> None:
    if (NODE_DIR / "node_modules" / "@asyncapi" / "specs").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        print("npm not found: the AsyncAPI schema test will be skipped.", flush=True)
        return
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    run(npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", NODE_DIR, ASYNCAPI_SPECS)


def example() -> None:
    ensure_venv(EXAMPLE)
    manage = [PYTHON, ROOT / "example" / "manage.py"]
    run(*manage, "migrate", "--noinput", "-v", "0")
    run(*manage, "demo")
    os.execv(
        str(PYTHON),
        [str(PYTHON), str(ROOT / "example" / "manage.py"), "runserver", "127.0.0.1:8000"],
    )


def test(extra: list[str]) -> None:
    ensure_venv(TEST)
    ensure_asyncapi_specs()
    env = dict(
        os.environ, ASYNCAPI_SPECS_DIR=str(NODE_DIR / "node_modules" / "@asyncapi" / "specs")
    )
    result = subprocess.run([str(PYTHON), "-m", "pytest", *extra], cwd=ROOT, env=env)
    sys.exit(result.returncode)


def main() -> None:
    command, *rest = sys.argv[1:] or ["help"]
    if command == "example":
        example()
    elif command == "test":
        test(rest)
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
