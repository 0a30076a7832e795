"""Both HTTP servers under generated input, driven by their own OpenAPI documents (schemathesis), plus
what a document cannot describe: oversize and deeply nested bodies, odd unicode in paths, and every
way of naming a file outside the corpus on ``read``.

Asserted for every generated request, with the token and without: no 5xx, the status is one the
document declares, the body matches that status's schema, and no route but ``/healthz`` answers
without the token. The generated data is deterministic (hypothesis derandomized) and bounded:
``AGENTRFT_FUZZ_EXAMPLES`` examples per route and mode (20 here; ``make fuzz`` runs 1000).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from agentrft.agent.settings import RolloutSettings
from agentrft.serve import create_app
from agentrft.tools.local_server import running_server, serve_app

pytestmark = pytest.mark.timeout(600)
EXAMPLES = int(os.environ.get("AGENTRFT_FUZZ_EXAMPLES", "20"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
TOKEN = "fuzz-tool-token"
KEY = "fuzz-serve-key"
SECRET = "SECRET-OUTSIDE-THE-CORPUS-7f3a"
# The servers read arguments the way pydantic's lax mode does ("3" for an integer: models write
# numbers as strings) and take a managed call's arguments as a JSON string the schema cannot see
# into, so "every valid request is accepted / every invalid one refused" is not the contract here;
# no 5xx, declared statuses, conforming bodies and enforced auth are.
EXCLUDED = [negative_data_rejection, positive_data_acceptance]
SENT = {"inputs": 0, "requests": 0}


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Say how much was tried (the README quotes it)."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nfuzz: {SENT['inputs']:,} generated inputs, {SENT['requests']:,} requests")


@pytest.fixture(scope="module")
def escape_corpus(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test corpus, a secret file beside it, and symlinks from inside the corpus to it."""
    root = tmp_path_factory.mktemp("escape")
    (root / "secret.txt").write_text(SECRET)
    (root / "outside").mkdir()
    (root / "outside" / "doc.html").write_text(f"<p>{SECRET}</p>")
    corpus = root / "corpus"
    shutil.copytree(corpus_dir, corpus)
    (corpus / "filings" / "link.txt").symlink_to(root / "secret.txt")
    (corpus / "linked").symlink_to(root / "outside", target_is_directory=True)
    return corpus


@pytest.fixture(scope="module")
def tools_url(escape_corpus: Path):
    with running_server(corpus_dir=escape_corpus, token=TOKEN, embed=False) as url:
        yield url


@pytest.fixture(scope="module")
def tools_schema(tools_url: str):
    return schemathesis.openapi.from_url(f"{tools_url}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture(scope="module")
def serve_url(tiny_model_dir: Path, tools_url: str, tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentrft.agent.testing import ScriptedLocalPolicy, tool_call_text

    def script(messages: list[dict]) -> str:
        if not any(m["role"] == "tool" for m in messages):
            return tool_call_text("list", {"prefix": "filings/"})
        return "13.4%"

    policy = ScriptedLocalPolicy(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                 AutoTokenizer.from_pretrained(tiny_model_dir), script)
    settings_ = RolloutSettings(temperature=0, max_trajectory_tokens=1024, max_new_tokens=32)
    app = create_app(policy, tools_url, TOKEN, settings_, tmp_path_factory.mktemp("fuzz-traces"), api_key=KEY)
    with serve_app(app) as url:
        yield url


@pytest.fixture(scope="module")
def serve_schema(serve_url: str):
    return schemathesis.openapi.from_url(f"{serve_url}/openapi.json", headers={"Authorization": f"Bearer {KEY}"})


TOOL_ROUTES = [("GET", "/healthz"), ("GET", "/tools"), ("POST", "/search"), ("POST", "/list"), ("POST", "/read")]
SERVE_ROUTES = [("GET", "/healthz"), ("GET", "/v1/models"), ("POST", "/v1/agent"), ("POST", "/v1/chat/completions")]


def _cases(routes: list[tuple[str, str]]) -> list:  # type: ignore[type-arg]
    """Positive data for every route; negative data too where there is a body to get wrong."""
    modes = {"GET": [GenerationMode.POSITIVE], "POST": [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]}
    return [pytest.param(m, p, mode, id=f"{m} {p} {mode.value}") for m, p in routes for mode in modes[m]]


def _routes(schema) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return sorted((op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations())


def _fuzz(schema, method: str, path: str, mode: GenerationMode, base_url: str, auth: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """Send every generated case with the token (checks: no 5xx, declared status, body schema, auth
    not ignored), then again without it and with a wrong one (401 everywhere but /healthz)."""

    @FUZZ
    @given(case=schema[path][method].as_strategy(generation_mode=mode))
    def run(case) -> None:  # type: ignore[no-untyped-def]
        SENT["inputs"] += 1
        SENT["requests"] += 3
        case.call_and_validate(base_url=base_url, headers=auth, excluded_checks=EXCLUDED)
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = case.call(base_url=base_url, headers=headers)
            if path == "/healthz":
                assert response.status_code == 200
            else:
                assert response.status_code == 401, (method, path, response.status_code, response.text[:200])
                case.validate_response(response, excluded_checks=EXCLUDED)

    run()


def test_documents_list_every_route(tools_schema, serve_schema) -> None:  # type: ignore[no-untyped-def]
    assert _routes(tools_schema) == sorted(TOOL_ROUTES)
    assert _routes(serve_schema) == sorted(SERVE_ROUTES)


@pytest.mark.parametrize("method,path,mode", _cases(TOOL_ROUTES))
def test_tool_server_follows_its_document(tools_schema, tools_url: str, method: str, path: str, mode) -> None:  # type: ignore[no-untyped-def]
    _fuzz(tools_schema, method, path, mode, tools_url, {"Authorization": f"Bearer {TOKEN}"})


@pytest.mark.parametrize("method,path,mode", _cases(SERVE_ROUTES))
def test_serve_follows_its_document(serve_schema, serve_url: str, method: str, path: str, mode) -> None:  # type: ignore[no-untyped-def]
    _fuzz(serve_schema, method, path, mode, serve_url, {"Authorization": f"Bearer {KEY}"})


# --- what the documents cannot describe ---------------------------------------------------------

BIG = b'{"arguments": {"query": "' + b"x" * 1_100_000 + b'"}, "call_id": "big"}'


def _chunks(data: bytes, size: int = 64_000):  # type: ignore[no-untyped-def]
    for start in range(0, len(data), size):  # no Content-Length: the limit must hold while streaming
        yield data[start : start + size]


@pytest.mark.parametrize("server", ["tools", "serve"])
def test_oversize_bodies_are_refused_declared_or_streamed(server: str, tools_url: str, serve_url: str) -> None:
    url, auth, route = ((tools_url, TOKEN, "/search") if server == "tools" else (serve_url, KEY, "/v1/agent"))
    for content in (BIG, _chunks(BIG)):
        reply = httpx.post(url + route, content=content, timeout=30,
                           headers={"Authorization": f"Bearer {auth}", "Content-Type": "application/json"})
        assert reply.status_code == 413, reply.text[:200]
    reply = httpx.post(url + route, content=BIG, timeout=30, headers={"Content-Type": "application/json"})
    assert reply.status_code in (401, 413)  # refused either way; never read, parsed or answered


@pytest.mark.parametrize("server", ["tools", "serve"])
@pytest.mark.parametrize("depth", [2_000, 200_000])
def test_deeply_nested_json_is_a_400(server: str, depth: int, tools_url: str, serve_url: str) -> None:
    url, auth, route = ((tools_url, TOKEN, "/search") if server == "tools" else (serve_url, KEY, "/v1/agent"))
    for body in ("[" * depth + "]" * depth, '{"arguments": ' + '{"a": ' * depth + "1" + "}" * depth + "}"):
        reply = httpx.post(url + route, content=body, timeout=30,
                           headers={"Authorization": f"Bearer {auth}", "Content-Type": "application/json"})
        assert reply.status_code in (400, 413, 422), (reply.status_code, reply.text[:200])
        assert reply.json()  # a JSON error body, not a dropped connection


_SEGMENT = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=40) | st.sampled_from(
    ["\u202e\u0645txt", "\ufeff", "\x00", "%00", "..", "%2e%2e", "\ud7ff\ue000", "a" * 3000, "\u0130\u0307", "😀" * 50]
)


@FUZZ
@given(segment=_SEGMENT, method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
def test_odd_unicode_in_paths_never_answers_without_the_token(segment: str, method: str, tools_url: str,
                                                               serve_url: str) -> None:
    path = "/" + quote(segment.encode("utf-8", "surrogatepass"), safe="")
    SENT["inputs"] += 1
    SENT["requests"] += 5
    for url, secret in ((tools_url, TOKEN), (serve_url, KEY)):
        anonymous = httpx.request(method, url + path, content=b"{}", timeout=30)
        assert anonymous.status_code == 401, (url, path, anonymous.status_code)
        known = httpx.request(method, url + path, content=b"{}", timeout=30, headers={"Authorization": f"Bearer {secret}"})
        assert known.status_code < 500 and known.json(), (url, path, known.status_code)
    raw = httpx.get(tools_url + "/%ff%fe%C0%AF", headers={"Authorization": f"Bearer {TOKEN}"})  # not UTF-8 at all
    assert raw.status_code in (404, 405)


_ESCAPES = ["..", "%2e%2e", "%252e%252e", "\uff0e\uff0e", ".%2e", "%2e.", "....", "..\\"]
_SEPARATORS = ["/", "%2f", "%252f", "\\", "\uff0f", "//", "/./"]
_TARGETS = ["secret.txt", "outside/doc.html", "etc/passwd"]


@FUZZ
@given(
    ups=st.lists(st.tuples(st.sampled_from(_ESCAPES), st.sampled_from(_SEPARATORS)), min_size=1, max_size=6),
    start=st.sampled_from(["", "filings/", "./", "linked/", "/", "~/", "C:/", "file://"]),
    target=st.sampled_from(_TARGETS),
)
def test_read_never_leaves_the_corpus(ups: list[tuple[str, str]], start: str, target: str, tools_url: str) -> None:
    path = start + "".join(up + sep for up, sep in ups) + target
    SENT["inputs"] += 1
    SENT["requests"] += 1
    reply = httpx.post(tools_url + "/read", json={"arguments": {"path": path}, "call_id": "esc"},
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert reply.status_code == 200
    output = reply.json()["output"]
    assert output.startswith("Error: ") and SECRET not in output and "root:" not in output


def test_symlinks_out_of_the_corpus_are_not_served(tools_url: str, escape_corpus: Path) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    listing = httpx.post(tools_url + "/list", json={"arguments": {"prefix": ""}}, headers=auth).json()["output"]
    assert "link.txt" not in listing and "linked/" not in listing and listing.count("\n") > 10
    secret = escape_corpus.parent / "secret.txt"
    for path in ("filings/link.txt", "linked/doc.html", "linked%2Fdoc.html", str(secret), quote(str(secret), safe=""),
                 f"filings/../../{secret.name}"):
        output = httpx.post(tools_url + "/read", json={"arguments": {"path": path}}, headers=auth).json()["output"]
        assert output.startswith("Error: ") and SECRET not in output, path
    hits = httpx.post(tools_url + "/search", json={"arguments": {"query": SECRET}}, headers=auth).json()["output"]
    assert SECRET not in hits
