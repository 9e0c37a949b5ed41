"""The two commands of the README, with nothing but Python 3.10+ installed.

    python3 dev.py example   # run the example project at http://127.0.0.1:8000
    python3 dev.py test      # run the whole test suite

Both create (once) a virtual environment in .venv and install what they need;
running them again is fast and safe.

The database is the example's SQLite file unless DATABASE_URL says otherwise
(``postgres://user@host:port/name`` or ``sqlite:////absolute/path``; see
example/config/settings.py). Tests run in random order: the header gives the
seed, ``python3 dev.py test -p randomly --randomly-seed=N`` replays it and
``-p no:randomly`` keeps file order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / "dev-installed.json"

#: The example project's own needs (chanx itself comes from pyproject.toml).
EXAMPLE = [
    "daphne>=4.1",
    "uvicorn[standard]>=0.30",
    "channels-redis>=4.2",
    "psycopg[binary]>=3.1",  # DATABASE_URL=postgres://...; never a dependency of chanx
]
#: Everything the test suite uses.
TEST = [
    *EXAMPLE,
    "pytest>=8",
    "pytest-asyncio>=0.24",
    "pytest-django>=4.9",
    "pytest-timeout>=2.3",
    "pytest-randomly>=3.15",  # random order; the header gives the seed; -p no:randomly: file order
    "hypothesis>=6.100",
    "websockets>=13",
    "wsproto>=1.2",  # uvicorn --ws wsproto in example/e2e/test_drain.py
    "psycopg-pool>=3.2",  # Django's OPTIONS["pool"] in example/e2e/test_psycopg_pool.py
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


def requirement_name(requirement: str) -> str:
    """The normalised project name: ``"uvicorn[standard]>=0.30"`` -> ``"uvicorn"``."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def chanx_key() -> str:
    """What the editable install of chanx depends on: pyproject.toml's requirements."""
    text = (ROOT / "pyproject.toml").read_text()
    found = re.findall(
        r"^requires-python\s*=[^\n]*|^dependencies\s*=\s*\[.*?^\]", text, re.M | re.S
    )
    return hashlib.sha256("\n".join(found or [text]).encode()).hexdigest()


def ensure_venv(requirements: list[str]) -> None:
    """Create .venv and install chanx (editable) plus ``requirements``, once.

    One stamp, ``.venv/dev-installed.json``, records chanx's requirements and every
    requirement installed so far, whichever command installed it: a command whose
    requirements are all there installs nothing, and one that needs more installs
    only what is missing (or changed). A change to chanx's own requirements in
    pyproject.toml reinstalls chanx with everything recorded.
    """
    fresh = not PYTHON.exists()
    if fresh:
        print("Creating .venv ...", flush=True)
        venv.create(VENV, with_pip=True)
    state: dict[str, Any] = {}
    if not fresh and STAMP.exists():
        with contextlib.suppress(ValueError):
            state = json.loads(STAMP.read_text())
    key = chanx_key()
    recorded: dict[str, str] = dict(state.get("requirements", {}))
    wanted = {requirement_name(r): r for r in requirements}
    if state.get("chanx") == key:
        missing = {name: r for name, r in wanted.items() if recorded.get(name) != r}
        if not missing:
            return
        args: list[str | Path] = list(missing.values())
    else:
        missing = {**recorded, **wanted}
        args = ["-e", ROOT, *missing.values()]
        recorded = {}
    print(f"Installing into .venv: {' '.join(map(str, args))}", flush=True)
    if not state:
        run(PYTHON, "-m", "pip", "install", "-q", "--upgrade", "pip")
    run(PYTHON, "-m", "pip", "install", "-q", *args)
    recorded.update(missing)
    partial = STAMP.with_suffix(".tmp")
    partial.write_text(json.dumps({"chanx": key, "requirements": recorded}, indent=1) + "\n")
    partial.replace(STAMP)
    for old in VENV.glob(".dev-stamp-*"):  # the per-command stamps of earlier versions
        old.unlink()


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
    # -rfEs: the summary lists skip reasons too (a plain -rs would drop failures and errors)
    result = subprocess.run([str(PYTHON), "-m", "pytest", "-rfEs", *extra], cwd=ROOT, env=env)
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
