"""README.md's Quick start and "Testing your consumers", run as written.

The code comes from README.md itself, never from a copy. For each way of
installing chanx, a fresh project is built in a temporary directory:

- ``wheel``: a wheel built from the repository's files (once per run of this
  module) is installed, with ``--no-deps``, into a throwaway venv;
- ``vendored``: ``chanx.py`` alone is copied next to ``manage.py``, in a venv
  where no other chanx can be imported.

Both venvs see the dependencies of the running interpreter's venv through a
``.pth`` path line (so nothing is downloaded), but not its editable chanx: that
is an import hook in a ``.pth`` file, and only a venv's own site-packages runs
those. ``chanx.__file__`` is checked in each project.

How README.md is read (the two sections' blocks, in order):

- A fenced block whose first line is ``# <path>`` is that file of the project
  (relative to the directory ``startproject`` made); ``# <path> (add at the
  end)`` is appended to the file ``startproject`` wrote. Users see these lines
  anyway; nothing else marks a block.
- ``bash`` blocks are run command by command (``run_command`` says how; a
  command it does not know fails the test). ``pip install`` lines are checked,
  not run: the case installs chanx, and the other packages must import.
  ``createsuperuser`` gets ``--noinput`` and a password from the environment.
- The server is the README's ``uvicorn mysite.asgi:application`` on a free
  port (``--port``), and daphne's ``manage.py runserver --noreload`` with the
  settings block's commented daphne line applied. ``client.py`` is run with
  ``127.0.0.1:8000`` replaced by that port; its output must equal the "A
  client sees" block. The testing snippet runs under ``pytest`` (the README's
  command) and under ``manage.py test``.
- Other sections' blocks that a user would copy run too: the Logging block is
  appended to settings.py (the server's chanx records must be JSON), and the
  Playground ``urls.py`` block becomes ``mysite/readme_playground.py``, whose
  ``urlpatterns`` are added to the project's (the page loads with ``DEBUG``
  on, as startproject leaves it). ``BLOCKS`` lists every block of README.md
  and what runs it; a new block fails ``test_every_readme_block_is_accounted_for``
  until it is run and listed.

The database: the README's settings keep ``startproject``'s SQLite file (and
Django's in-memory test database), as a newcomer gets them. When
``DATABASE_URL`` is a PostgreSQL URL, an override is appended to settings.py
after the README's code: a fresh database ``<name>_qs_<case>`` on that server
(dropped at the end, with the ``test_`` twin the test runner makes), in the
example's own ``database_from_url`` form.

With ``CHANX_REQUIRE_ALL=1`` a missing tool (uvicorn, websockets, pytest-django,
daphne, psycopg for PostgreSQL) fails the tests instead of skipping them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from config.settings import database_from_url
from e2e.postgres import create_database, drop_database, postgres_url
from e2e.servers import (
    MANAGE_TIMEOUT,
    REPO_DIR,
    START_TIMEOUT,
    OutputCapture,
    free_port,
    port_accepts,
    stop_process,
    wait_until,
)

pytestmark = pytest.mark.timeout(600)  # the first test builds a wheel and a project

README = REPO_DIR / "README.md"
QUICK_START = "Quick start"
TESTING = "Testing your consumers"
CASES = ["wheel", "vendored"]
REQUIRE_ALL = os.environ.get("CHANX_REQUIRE_ALL") == "1"
BUILD_TIMEOUT = 240.0  # seconds for `pip wheel` (an isolated build environment)
CLIENT_TIMEOUT = 30.0  # seconds for client.py to finish
SUPERUSER_PASSWORD = "readme-test-password"

T = TypeVar("T")

# Reading README.md ###########################################################


@dataclass(frozen=True)
class Block:
    section: str  # the "## " heading it sits under
    lang: str
    text: str
    line: int  # of the opening fence, 1-based

    @property
    def target(self) -> tuple[str, bool] | None:
        """(path, append) from a first line ``# <path>`` / ``# <path> (add at the end)``."""
        first = self.text.split("\n", 1)[0]
        match = re.fullmatch(r"# ([\w./-]+\.\w+)( \(add at the end\))?", first)
        return (match.group(1), bool(match.group(2))) if match else None

    def commands(self) -> list[str]:
        """The shell commands of a bash block, comments and blank lines dropped."""
        found = []
        for raw in self.text.splitlines():
            line = raw.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                found.append(line)
        return found


def readme_blocks() -> list[Block]:
    blocks = []
    section = ""
    fence: tuple[str, int, list[str]] | None = None
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if fence is None:
            if line.startswith("## "):
                section = line[3:].strip()
            elif line.startswith("```"):
                fence = (line[3:].strip(), number, [])
        elif line.startswith("```"):
            lang, start, lines = fence
            blocks.append(Block(section, lang, "\n".join(lines) + "\n", start))
            fence = None
        else:
            fence[2].append(line)
    assert fence is None, f"README.md: the block at line {fence[1]} is never closed"
    return blocks


def section_blocks(section: str) -> list[Block]:
    found = [b for b in readme_blocks() if b.section == section]
    assert found, f"README.md has no code blocks under '## {section}'"
    return found


def file_blocks() -> list[Block]:
    """The Quick start's and the testing section's files, in README order."""
    return [b for b in section_blocks(QUICK_START) + section_blocks(TESTING) if b.target]


def bash_blocks(section: str) -> list[Block]:
    return [b for b in section_blocks(section) if b.lang == "bash"]


def client_sees() -> str:
    """The "A client sees" block."""
    (block,) = [b for b in section_blocks(QUICK_START) if b.lang == "text"]
    return block.text


def quick_start_commands(start: str) -> list[str]:
    """The Quick start's shell commands that start with ``start``."""
    return [c for b in bash_blocks(QUICK_START) for c in b.commands() if c.startswith(start)]


def settings_block() -> str:
    (block,) = [b for b in file_blocks() if b.target == ("mysite/settings.py", True)]
    return block.text


def other_block(section: str, lang: str = "python") -> Block:
    (block,) = [b for b in section_blocks(section) if b.lang == lang]
    return block


# Every block of README.md and what runs it. Blocks are named by section and
# by their first line; a block missing from this table fails the inventory test.
BLOCKS: dict[tuple[str, str], str] = {
    ("The two commands", "python3 dev.py example"): (
        "not here: `dev.py test` is what .ci/run runs; `dev.py example` starts runserver"
    ),
    (QUICK_START, "pip install ."): (
        "checked: the case installs chanx (a built wheel, or the copied file); "
        "the other packages must import in the venv"
    ),
    (QUICK_START, "django-admin startproject mysite"): "run by the project fixture",
    (QUICK_START, "# chat/messages.py"): "a project file",
    (QUICK_START, "# chat/consumers.py"): "a project file",
    (QUICK_START, "# chat/routing.py"): "a project file",
    (QUICK_START, "# chat/views.py"): "a project file",
    (QUICK_START, "# mysite/urls.py"): "a project file",
    (QUICK_START, "# mysite/asgi.py"): "a project file",
    (QUICK_START, "# mysite/settings.py (add at the end)"): "appended to settings.py",
    (QUICK_START, "python manage.py migrate"): "run by the project fixture and the server",
    (QUICK_START, "# client.py"): "run by test_client_sees_what_the_readme_shows",
    (QUICK_START, "python client.py <token>"): "run by the same test",
    (QUICK_START, '<- {"action":"authentication",'): "compared with client.py's output",
    (TESTING, "# chat/tests.py"): "run by test_testing_snippet_*",
    (TESTING, "pip install pytest pytest-django"): "run by test_testing_snippet_*",
    ("Logging", "LOGGING = {"): "appended to settings.py; the server's records are checked",
    ("Playground and AsyncAPI", "# urls.py"): "mounted in the project; test_playground_*",
}


def block_key(block: Block) -> tuple[str, str]:
    first = block.text.split("\n", 1)[0]
    for section, start in BLOCKS:
        if section == block.section and first.startswith(start):
            return section, start
    return block.section, first


# Tools #######################################################################


def require(what: str, ok: bool) -> None:
    if ok:
        return
    reason = f"the README test needs {what}"
    if REQUIRE_ALL:
        pytest.fail(reason + " (CHANX_REQUIRE_ALL=1)", pytrace=False)
    pytest.skip(reason)


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


# The venvs and the wheel #####################################################


def make_venv(directory: Path) -> Path:
    """A venv without pip that imports the running venv's packages, but not its chanx."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(directory)],
        check=True,
        capture_output=True,
        timeout=MANAGE_TIMEOUT,
    )
    python = directory / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
        timeout=MANAGE_TIMEOUT,
    ).stdout.strip()
    paths = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    # Plain path lines: the directories' own .pth files (the editable chanx's
    # import hook among them) are not run from here.
    Path(site, "_readme_base.pth").write_text("".join(f"{p}\n" for p in paths))
    return python


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """chanx's wheel, built as the README says, once per run of this module.

    From a copy of the files the build reads, so that it leaves nothing (build/,
    dist/) in the repository.
    """
    root = tmp_path_factory.mktemp("readme-wheel")
    source = root / "src"
    source.mkdir()
    for name in ("chanx.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO_DIR / name, source / name)
    # The README's command, in the copy: `pip wheel --no-deps -w dist .`
    command = re.search(r"`(pip wheel [^`]+)`", README.read_text())
    assert command, "README.md: no `pip wheel ...` command"
    words = shlex.split(command.group(1))
    assert words == ["pip", "wheel", "--no-deps", "-w", "dist", "."], words
    done = subprocess.run(
        [sys.executable, "-m", *words, "-q"],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = (source / "dist").glob("chanx-*.whl")
    assert "`dist/chanx-<version>-py3-none-any.whl`" in README.read_text()
    version = re.search(r'^__version__ = "([^"]+)"', (source / "chanx.py").read_text(), re.M)
    assert version and built.name == f"chanx-{version.group(1)}-py3-none-any.whl", built.name
    return built


# Projects ####################################################################


def project_env(venv_python: Path) -> dict[str, str]:
    """The environment a newcomer's shell would have: nothing of this test run's."""
    ours = {"DJANGO_SETTINGS_MODULE", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
    ours |= {"DATABASE_URL", "REDIS_URL", "SQLITE_PATH", "ASYNCAPI_SPECS_DIR"}
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ours and not key.startswith(("PYTEST_", "CHANX_", "DJANGO_"))
    }
    env["PATH"] = os.pathsep.join([str(venv_python.parent), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(venv_python.parent.parent)
    env["PYTHONUNBUFFERED"] = "1"
    env["DJANGO_SUPERUSER_PASSWORD"] = SUPERUSER_PASSWORD
    return env


@dataclass
class Project:
    case: str
    root: Path  # where `django-admin startproject` ran
    python: Path
    env: dict[str, str]
    database: str | None = None  # PostgreSQL URL, when DATABASE_URL is one
    cwd: Path | None = None
    token: str = ""

    @property
    def dir(self) -> Path:
        assert self.cwd is not None, "no `cd` into the project yet"
        return self.cwd

    def python_command(self, *args: str) -> list[str]:
        """``python -m tool`` for a console script (uvicorn, pytest, django-admin).

        With -P (Python 3.11+), like the script, Python itself does not put
        the current directory on sys.path.
        """
        safe_path = ["-P"] if sys.version_info >= (3, 11) else []
        return [str(self.python), *safe_path, *args]

    def run(
        self,
        command: list[str],
        timeout: float = MANAGE_TIMEOUT,
        check: bool = True,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            command,
            cwd=cwd or self.cwd or self.root,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{shlex.join(command)} failed ({done.returncode}) in {self.case}:\n"
                f"{done.stdout}\n{done.stderr}"
            )
        return done

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run([str(self.python), "manage.py", *args], check=check)

    def chanx_file(self) -> str:
        done = self.manage("shell", "-c", "import chanx; print(chanx.__file__)")
        return done.stdout.strip().splitlines()[-1]


def check_pip_install(project: Project, command: str) -> None:
    """A README `pip install` line: chanx comes from the case, the rest must import."""
    modules = {
        "uvicorn[standard]": "uvicorn",
        "websockets": "websockets",
        "pytest": "pytest",
        "pytest-django": "pytest_django",
        "django": "django",
        "channels": "channels",
        "djangorestframework": "rest_framework",
        "pydantic": "pydantic",
    }
    for requirement in shlex.split(command)[2:]:
        if requirement.startswith("git+") or requirement == ".":
            continue  # chanx itself: installed by the case
        module = modules[requirement]  # a KeyError: teach this table the new package
        project.run([str(project.python), "-c", f"import {module}"])


def run_command(project: Project, command: str) -> None:
    """One command of a README bash block (the server, client and tests: their tests)."""
    words = shlex.split(command)
    if words[:2] == ["pip", "install"]:
        check_pip_install(project, command)
    elif words[:2] == ["django-admin", "startproject"]:
        project.run(project.python_command("-m", "django", *words[1:]))
    elif words[0] == "cd":
        project.cwd = (project.cwd or project.root) / words[1]
    elif words[:2] == ["python", "manage.py"] and words[2] == "createsuperuser":
        project.manage(*words[2:], "--noinput")
    elif words[:2] == ["python", "manage.py"] and words[2] == "drf_create_token":
        out = project.manage(*words[2:]).stdout
        match = re.search(r"Generated token (\w+) for user", out)
        assert match, out
        project.token = match.group(1)
    elif words[:2] == ["python", "manage.py"] and words[2] == "check":
        out = project.manage(*words[2:]).stdout
        assert "System check identified no issues" in out, out
    elif words[:2] == ["python", "manage.py"]:
        project.manage(*words[2:])
    elif words[0] in ("uvicorn", "pytest") or words[:2] == ["python", "client.py"]:
        pass  # the server, the client and the tests: run by their tests
    else:
        raise AssertionError(f"README.md: test_readme.py does not know how to run {command!r}")


def write_file(project: Project, block: Block) -> None:
    """A ``# <path>`` block: the file, or ``(add at the end)`` of startproject's file."""
    assert block.target is not None
    path, append = block.target
    file = project.dir / path
    if append:
        assert file.exists(), f"{path} (add at the end): startproject made no such file"
        file.write_text(file.read_text() + "\n\n" + block.text)
    else:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(block.text)


def add_other_sections(project: Project) -> None:
    """The Logging and Playground blocks, run as written inside the project."""
    settings = project.dir / "mysite" / "settings.py"
    logging_block = other_block("Logging")
    settings.write_text(
        settings.read_text()
        + "\n\n# README.md, Logging (added by test_readme.py):\n"
        + logging_block.text
    )
    playground = other_block("Playground and AsyncAPI")
    assert playground.target == ("urls.py", False), playground.text
    (project.dir / "mysite" / "readme_playground.py").write_text(playground.text)
    urls = project.dir / "mysite" / "urls.py"
    urls.write_text(
        urls.read_text()
        + "\n\n# README.md, Playground and AsyncAPI (added by test_readme.py):\n"
        + "from mysite.readme_playground import urlpatterns as readme_playground\n\n"
        + "urlpatterns += readme_playground\n"
    )


def add_database(project: Project) -> None:
    if project.database is None:
        return
    settings = project.dir / "mysite" / "settings.py"
    config = database_from_url(project.database)
    settings.write_text(
        settings.read_text()
        + "\n\n# DATABASE_URL's PostgreSQL server (added by test_readme.py):\n"
        + f"DATABASES = {{'default': {config!r}}}\n"
    )


def build_project(case: str, root: Path, python: Path, database: str | None) -> Project:
    """Run the two sections' blocks in README order: commands, then files, then commands."""
    project = Project(case, root, python, project_env(python), database)
    prepared = False
    for block in section_blocks(QUICK_START) + section_blocks(TESTING):
        if block.target:
            write_file(project, block)
        elif block.lang == "bash":
            for command in block.commands():
                first_manage = command.startswith("python manage.py") and "startapp" not in command
                if first_manage and not prepared:
                    # Before the project first runs: what the case and the other
                    # README sections add to it.
                    if case == "vendored":
                        shutil.copy(REPO_DIR / "chanx.py", project.dir / "chanx.py")
                    add_other_sections(project)
                    add_database(project)
                    prepared = True
                run_command(project, command)
    assert prepared, "the Quick start never runs manage.py after writing the files"
    assert project.token, "the Quick start never made a token (drf_create_token)"
    return project


@dataclass
class Server:
    """A server of the project on a free port: uvicorn, or daphne's runserver."""

    project: Project
    argv: list[str]  # everything but the port
    port_argv: Callable[[int], list[str]]
    port: int = 0
    process: subprocess.Popen[str] | None = None
    output: OutputCapture | None = None

    def start(self) -> Server:
        self.port = free_port()
        self.process = subprocess.Popen(
            [*self.argv, *self.port_argv(self.port)],
            cwd=self.project.dir,
            env=self.project.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = OutputCapture(self.process)
        try:
            # Not the server's "running on" line: the README's LOGGING may silence it.
            wait_until(
                lambda: (
                    self.process is not None
                    and (self.process.poll() is not None or port_accepts(self.port))
                ),
                START_TIMEOUT,
                f"{shlex.join(self.argv)} to listen",
            )
            if self.process.poll() is not None:
                self.output.close()
                raise AssertionError(f"{shlex.join(self.argv)} exited:\n{self.output.text()}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
        if self.output is not None:
            self.output.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        assert self.output is not None
        return self.output.text()


class Projects:
    """One project (and server) per case, built on first use and kept for the module.

    A build that failed is not tried again: every later test of the case gets
    the same error at once.
    """

    def __init__(self, factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> None:
        self.factory = factory
        self.request = request
        self.stack = contextlib.ExitStack()
        self.made: dict[tuple[str, str], Project | Server | BaseException] = {}

    def _once(self, key: tuple[str, str], make: Callable[[], T]) -> T:
        if key not in self.made:
            try:
                self.made[key] = make()
            except BaseException as exc:
                self.made[key] = exc
        made = self.made[key]
        if isinstance(made, BaseException):
            raise made
        return made  # type: ignore[return-value]

    def project(self, case: str) -> Project:
        return self._once(("project", case), lambda: self._build(case))

    def server(self, case: str, kind: str = "uvicorn") -> Server:
        return self._once((kind, case), lambda: self._serve(case, kind))

    def _serve(self, case: str, kind: str) -> Server:
        project = self.project(case)
        if kind == "uvicorn":
            # `uvicorn mysite.asgi:application` as the Quick start runs it.
            (command,) = quick_start_commands("uvicorn")
            argv = project.python_command("-m", *shlex.split(command))
            server = Server(project, argv, lambda port: ["--port", str(port)])
        else:
            # `python manage.py runserver` with the settings block's daphne line
            # uncommented (--noreload: one process, stopped by its pid).
            (line,) = re.findall(
                r"^# (INSTALLED_APPS.insert\(0, \"daphne\"\))", settings_block(), re.M
            )
            settings = project.dir / "mysite" / "settings_daphne.py"
            settings.write_text(f"from mysite.settings import *  # noqa: F403\n\n{line}\n")
            argv = [str(project.python), "manage.py", "runserver", "--noreload"]
            argv += ["--settings", "mysite.settings_daphne"]
            server = Server(project, argv, lambda port: [f"127.0.0.1:{port}"])
        server.start()
        self.stack.callback(server.stop)
        return server

    def _build(self, case: str) -> Project:
        root = self.factory.mktemp(f"readme-{case}")
        python = make_venv(root / "venv")
        if case == "wheel":
            built: Path = self.request.getfixturevalue("wheel")
            pip = [sys.executable, "-m", "pip", "--python", str(python)]
            subprocess.run(
                [*pip, "install", "-q", "--no-deps", "--no-index", str(built)],
                check=True,
                capture_output=True,
                timeout=MANAGE_TIMEOUT,
            )
        database = None
        if (url := postgres_url()) is not None:
            name = database_from_url(url)["NAME"][:40] + f"_qs_{case}"  # at most 63 bytes
            database = create_database(url, name)
            for made in (name, f"test_{name}"):  # and the test runner's, if it is left
                self.stack.callback(drop_database, url, made)
        (root / "work").mkdir()
        return build_project(case, root / "work", python, database)

    def close(self) -> None:
        self.stack.close()


@pytest.fixture(scope="module")
def projects(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Projects]:
    require("uvicorn (pip install 'uvicorn[standard]')", has_module("uvicorn"))
    require("websockets", has_module("websockets"))
    require("pytest-django", has_module("pytest_django"))
    if postgres_url() is not None:
        require("psycopg for DATABASE_URL's PostgreSQL", has_module("psycopg"))
    registry = Projects(tmp_path_factory, request)
    try:
        yield registry
    finally:
        registry.close()


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def project(projects: Projects, case: str) -> Project:
    return projects.project(case)


@pytest.fixture
def server(projects: Projects, case: str) -> Server:
    return projects.server(case)


# The README itself ###########################################################


def test_every_readme_block_is_accounted_for() -> None:
    blocks = readme_blocks()
    keys = [block_key(b) for b in blocks]
    unknown = [f"line {b.line}: {k}" for b, k in zip(blocks, keys, strict=True) if k not in BLOCKS]
    assert unknown == [], (
        "README.md has code blocks that no test runs; run them here and add them to "
        f"BLOCKS in {Path(__file__).name}: {unknown}"
    )
    missing = sorted(set(BLOCKS) - set(keys))
    assert missing == [], f"BLOCKS lists blocks README.md no longer has: {missing}"
    # Every Python block of the two sections is a file of the project.
    for section in (QUICK_START, TESTING):
        for block in section_blocks(section):
            if block.lang == "python":
                assert block.target, f"README.md line {block.line}: no '# <path>' first line"


def test_quick_start_says_how_to_install_this_chanx() -> None:
    text = README.read_text()
    quick = text[text.index("## Quick start") : text.index("## The API in brief")]
    assert "pip install ." in quick and "python -m build" in quick
    assert "next to your `manage.py`" in quick
    assert "unrelated" in quick  # PyPI's chanx is another package


# The project #################################################################


def test_chanx_is_the_one_the_case_installed(project: Project) -> None:
    location = Path(project.chanx_file())
    if project.case == "vendored":
        assert location == project.dir / "chanx.py"
        # Nothing else could have been imported: outside the project, no chanx.
        elsewhere = project.run(
            [str(project.python), "-c", "import chanx"], check=False, cwd=project.root
        )
        assert elsewhere.returncode != 0 and "No module named 'chanx'" in elsewhere.stderr
    else:
        purelib = project.run(
            [str(project.python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
        ).stdout.strip()
        assert location == Path(purelib, "chanx.py")  # the venv's own site-packages
        (record,) = Path(purelib).glob("chanx-*.dist-info/RECORD")  # installed by pip
        assert "chanx.py," in record.read_text()


def test_check_passes_and_migrations_are_applied(project: Project) -> None:
    done = project.manage("check")
    assert "System check identified no issues (0 silenced)." in done.stdout
    shown = project.manage("showmigrations", "--plan").stdout
    assert "[ ]" not in shown and "[X]  authtoken.0001_initial" in shown
    # "chanx" in INSTALLED_APPS: its checks run, so a bad CHANX key is reported.
    bad = project.dir / "mysite" / "settings_bad_chanx.py"
    bad.write_text("from mysite.settings import *\n\nCHANX = {'NOT_A_SETTING': 1}\n")
    refused = project.manage("check", "--settings", "mysite.settings_bad_chanx", check=False)
    assert refused.returncode != 0 and "chanx.E001" in refused.stderr, refused.stderr


def test_database_is_the_one_configured(project: Project) -> None:
    vendor = project.manage(
        "shell", "-c", "from django.db import connection; print(connection.vendor)"
    )
    expected = "postgresql" if postgres_url() else "sqlite"
    assert vendor.stdout.split()[-1] == expected


# Under uvicorn ###############################################################


def client_source(server: Server) -> str:
    (block,) = [b for b in file_blocks() if b.target == ("client.py", False)]
    assert block.text.count("127.0.0.1:8000") == 2, block.text  # the URL and the Origin
    return block.text.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")


def json_record(line: str) -> dict[str, Any] | None:
    """A line of chanx.JsonFormatter, decoded (None for any other line)."""
    if line.startswith("{"):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            return record if isinstance(record, dict) else None
    return None


def run_client(project: Project, server: Server) -> None:
    """`python client.py <token>`: its output must be the "A client sees" block."""
    (command,) = quick_start_commands("python client.py")
    assert command == "python client.py <token>"
    client = project.dir.parent / f"client-{server.port}.py"  # client.py, on the free port
    client.write_text(client_source(server))
    done = project.run(project.python_command(str(client), project.token), timeout=CLIENT_TIMEOUT)
    assert done.stdout == client_sees(), server.text()


def test_client_sees_what_the_readme_shows(project: Project, server: Server) -> None:
    run_client(project, server)
    # The Logging block's JSON records: one per frame, the token in none of them.
    assert server.output is not None
    record = server.output.wait_for(
        lambda line: (r := json_record(line)) and r.get("action") == "send_chat" and r,
        START_TIMEOUT,
        "chanx's JSON log record of send_chat",
    )
    assert record["logger"] == "chanx" and record["path"] == "/ws/chat/", record
    assert project.token not in server.text()


def test_runserver_with_daphne_serves_the_same(projects: Projects, case: str) -> None:
    require("daphne (pip install daphne)", has_module("daphne"))
    text = README.read_text()
    assert "or, with daphne: python manage.py runserver" in text
    project = projects.project(case)
    server = projects.server(case, "daphne")
    run_client(project, server)


def test_logging_block_keeps_the_servers_own_log(project: Project) -> None:
    code = (
        "import logging, os, django\n"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n"
        "server_log = logging.getLogger('uvicorn.error')  # as uvicorn does, before Django\n"
        "django.setup()\n"
        "print(server_log.disabled)\n"
    )
    assert project.run([str(project.python), "-c", code]).stdout.split() == ["False"]


def test_anonymous_client_is_refused(project: Project, server: Server) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async def talk() -> tuple[dict[str, Any], int | None]:
        async with connect(
            f"ws://127.0.0.1:{server.port}/ws/chat/", origin=server.base_url
        ) as websocket:
            frame = json.loads(await asyncio.wait_for(websocket.recv(), CLIENT_TIMEOUT))
            with contextlib.suppress(ConnectionClosed):
                await asyncio.wait_for(websocket.recv(), CLIENT_TIMEOUT)
            return frame, websocket.close_code

    frame, code = asyncio.run(talk())
    assert frame["payload"]["status_code"] == 401 and code == 4401


def test_cross_origin_handshake_is_refused(project: Project, server: Server) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    async def talk() -> None:
        async with connect(
            f"ws://127.0.0.1:{server.port}/ws/chat/",
            origin="http://evil.example",
            additional_headers={"Authorization": f"Token {project.token}"},
        ):
            pass

    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(talk())
    assert refused.value.response.status_code == 403


def test_browser_token_subprotocol(project: Project, server: Server) -> None:
    """What the README tells browsers: ["chanx", "chanx.auth." + b64url("Token " + key)]."""
    from websockets.asyncio.client import connect

    assert '["chanx", "chanx.auth." + b64url("Token " + key)]' in README.read_text()
    encoded = base64.urlsafe_b64encode(f"Token {project.token}".encode()).rstrip(b"=").decode()

    async def talk() -> tuple[str | None, dict[str, Any]]:
        async with connect(
            f"ws://127.0.0.1:{server.port}/ws/chat/",
            origin=server.base_url,
            subprotocols=["chanx", f"chanx.auth.{encoded}"],  # type: ignore[list-item]
        ) as websocket:
            frame = json.loads(await asyncio.wait_for(websocket.recv(), CLIENT_TIMEOUT))
            return websocket.subprotocol, frame

    subprotocol, frame = asyncio.run(talk())
    assert subprotocol == "chanx", subprotocol
    assert frame["payload"]["status_code"] == 200, frame
    assert encoded not in server.text()


def test_playground_page_in_debug(project: Project, server: Server) -> None:
    with urllib.request.urlopen(f"{server.base_url}/playground/websocket/", timeout=10) as page:
        assert page.status == 200 and b"<title>" in page.read()
    with urllib.request.urlopen(f"{server.base_url}/playground/routes.json", timeout=10) as found:
        routes = json.load(found)["routes"]
    assert [r["path"] for r in routes] == ["/ws/chat/"]


# The testing snippet #########################################################


def readme_testing_command(kind: str) -> str:
    (block,) = bash_blocks(TESTING)
    check_pip_install_line = block.commands()[0]
    assert check_pip_install_line == "pip install pytest pytest-django"
    if kind == "pytest":
        return block.commands()[1]
    match = re.search(r"# or: (python manage\.py test \w+)", block.text)
    assert match, block.text
    return match.group(1)


def snippet_tests() -> list[str]:
    (block,) = [b for b in file_blocks() if b.target == ("chat/tests.py", False)]
    return re.findall(r"^    (?:async )?def (test_\w+)", block.text, re.M)


def snippet_failures(failures: dict[str, str]) -> str:
    return "the testing snippet failed:\n" + "\n\n".join(
        f"{name}:\n{text}" for name, text in sorted(failures.items())
    )


def test_testing_snippet_under_pytest(project: Project) -> None:
    command = readme_testing_command("pytest")
    words = shlex.split(command)
    assert words[0] == "pytest", command
    report = project.dir.parent / f"report-{project.case}.xml"
    # Only the plugin the README installs (this venv has pytest-asyncio and more).
    done = project.run(
        project.python_command("-m", *words, "-p", "pytest_django.plugin", f"--junitxml={report}"),
        check=False,
        env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    assert report.exists(), done.stdout + done.stderr
    cases = ElementTree.parse(report).getroot().iter("testcase")
    ran: list[str] = []
    failures: dict[str, str] = {}
    for testcase in cases:
        ran.append(testcase.get("name", ""))
        for problem in testcase.findall("failure") + testcase.findall("error"):
            failures[ran[-1]] = (problem.get("message") or "") + "\n" + (problem.text or "")
    assert sorted(ran) == sorted(snippet_tests()), done.stdout
    assert not failures, snippet_failures(failures)
    assert done.returncode == 0, done.stdout + done.stderr


def test_testing_snippet_under_manage_py_test(project: Project) -> None:
    command = readme_testing_command("manage.py test")
    words = shlex.split(command)
    done = project.run([str(project.python), *words[1:]], check=False)
    output = done.stdout + done.stderr
    ran = re.search(r"^Ran (\d+) tests?", output, re.M)
    assert ran and int(ran.group(1)) == len(snippet_tests()), output
    # Django's runner: "ERROR: test_x (...)" then its traceback, up to the next rule.
    failures = dict(
        re.findall(
            r"^(?:ERROR|FAIL): (test_\w+) .*?\n(.*?)(?=^={20,}|^-{20,}\nRan )", output, re.M | re.S
        )
    )
    assert not failures, snippet_failures(failures)
    assert done.returncode == 0, output
