"""The example's websocket description: AsyncAPI document, routes JSON, CLI.

The AsyncAPI document is validated against the official AsyncAPI 3.0 JSON
schema from the npm package ``@asyncapi/specs`` (installed by ``dev.py test``
and CI into ``.ci/node``; ``ASYNCAPI_SPECS_DIR`` points at it). Without it, or
without jsonschema, that test is skipped, unless CHANX_REQUIRE_ALL=1 (then it fails).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings

import chanx

ROOT = Path(__file__).resolve().parents[2]
SPECS = Path(
    os.environ.get(
        "ASYNCAPI_SPECS_DIR", ROOT / ".ci" / "node" / "node_modules" / "@asyncapi" / "specs"
    )
)
REQUIRE_ALL = os.environ.get("CHANX_REQUIRE_ALL") == "1"


def require(missing: str) -> NoReturn:
    """Skip for ``missing``; fail instead under CHANX_REQUIRE_ALL=1 (CI: every test runs)."""
    if REQUIRE_ALL:
        pytest.fail(f"{missing} (CHANX_REQUIRE_ALL=1)", pytrace=False)
    pytest.skip(missing)


def official_validator() -> Any:
    try:
        import jsonschema
    except ImportError:
        require("jsonschema is not installed; run python3 dev.py test")
    schema_file = SPECS / "schemas" / "3.0.0-without-$id.json"
    if not schema_file.exists():
        require(f"The official AsyncAPI schema is missing: {schema_file}; run python3 dev.py test")
    return jsonschema.Draft7Validator(json.loads(schema_file.read_text()))


def test_example_document_passes_the_official_asyncapi_schema() -> None:
    validator = official_validator()
    document = chanx.asyncapi_schema()
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == []
    addresses = {c["address"] for c in document["channels"].values()}
    assert addresses == {"/ws/assistants/", "/ws/assistants/{pk}/", "/ws/chat/{pk}/"}
    assert document["info"]["title"] == "chanx example"
    # The validator is not a rubber stamp: a broken document is rejected.
    broken = copy.deepcopy(document)
    next(iter(broken["operations"].values()))["action"] = "publish"
    assert list(validator.iter_errors(broken))


def test_document_describes_handlers_and_their_replies() -> None:
    document = chanx.asyncapi_schema()
    ops = document["operations"]
    receive = [op for op in ops.values() if op["action"] == "receive"]
    assert any("reply" in op for op in receive)
    schemas = document["components"]["schemas"]
    assert schemas["PingMessage"]["properties"]["action"]["const"] == "ping"
    for op in ops.values():  # every reference resolves
        for ref in op["messages"]:
            _, _, cid, _, name = ref["$ref"].split("/")
            assert name in document["channels"][cid]["messages"]


@pytest.mark.django_db
def test_playground_endpoints_answer_in_debug_and_hide_otherwise() -> None:
    client = Client()
    with override_settings(DEBUG=True):
        page = client.get("/playground/websocket/")
        assert page.status_code == 200
        assert b"{{ROUTES_URL}}" not in page.content
        routes = client.get("/playground/routes.json").json()
        paths = {r["path"] for r in routes["routes"]}
        assert "/ws/chat/<pk>/" in paths
        echo = next(r for r in routes["routes"] if r["path"] == "/ws/assistants/")
        templates = {m["action"]: m["example"] for m in echo["messages"]}
        assert templates["ping"] == {"action": "ping", "payload": None}
        assert templates["new_message"]["payload"] == {"content": ""}
        assert client.get("/playground/asyncapi.json").json()["asyncapi"] == "3.0.0"
    with override_settings(DEBUG=False):
        for url in (
            "/playground/websocket/",
            "/playground/routes.json",
            "/playground/asyncapi.json",
        ):
            assert client.get(url).status_code == 404
        staff = User.objects.create_user("staffer", password="pw", is_staff=True)
        client.force_login(staff)
        assert client.get("/playground/routes.json").status_code == 200
    with override_settings(DEBUG=True, CHANX={"PLAYGROUND_ACCESS": "off"}):
        assert client.get("/playground/websocket/").status_code == 404


def run_cli(
    *args: str, settings: str | None = "config.settings"
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    if settings:
        env["DJANGO_SETTINGS_MODULE"] = settings
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "example")])
    return subprocess.run(
        [sys.executable, "-m", "chanx", *args],
        cwd=ROOT / "example",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_lists_routes_and_prints_the_document() -> None:
    routes = run_cli("routes")
    assert routes.returncode == 0, routes.stderr
    assert "/ws/chat/<pk>/\tchat.consumers.RoomConsumer" in routes.stdout
    document = run_cli("asyncapi")
    assert document.returncode == 0, document.stderr
    assert json.loads(document.stdout)["asyncapi"] == "3.0.0"


def test_cli_explains_a_missing_settings_module_and_bad_usage() -> None:
    missing = run_cli("routes", settings=None)
    assert missing.returncode == 2
    assert "DJANGO_SETTINGS_MODULE is not set" in missing.stderr
    usage = run_cli("bogus")
    assert usage.returncode == 2
    assert "usage: python -m chanx" in usage.stderr
