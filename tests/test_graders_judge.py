"""The score_model judge over real HTTP: the official openai client against a small
OpenAI-compatible server on 127.0.0.1 that can score, reply nonsense, stall, fail, or go out of range."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from agentrft.graders import grade_answer, load_grader
from agentrft.graders.score_model import parse_score

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "graders"


def _judge_app(seen: list[dict]) -> FastAPI:
    """The model name picks the behaviour: score-<x>, malformed, slow, out-of-range, flaky, error."""
    app = FastAPI()
    failures: dict[str, int] = {}

    @app.post("/v1/chat/completions")
    async def complete(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(body)
        model: str = body["model"]
        if model == "slow":
            await asyncio.sleep(3)
            text = "1"
        elif model == "error":
            return JSONResponse({"error": {"message": "model exploded"}}, status_code=400)
        elif model == "flaky" and failures.setdefault(model, 0) == 0:
            failures[model] += 1
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        else:
            replies = {"malformed": "The answer looks right to me.", "out-of-range": "Score: 7", "flaky": "0.5"}
            text = replies.get(model, model.removeprefix("score-") if model.startswith("score-") else "1")
        return JSONResponse({
            "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })  # fmt: skip

    return app


@pytest.fixture(scope="module")
def judge() -> Iterator[tuple[str, list[dict]]]:
    seen: list[dict] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(_judge_app(seen), log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.025)
    assert server.started, "judge test server did not start"
    yield f"http://127.0.0.1:{port}/v1", seen
    server.should_exit = True
    thread.join(timeout=5)
    sock.close()


def _grader(url: str, model: str, **extra: object):  # type: ignore[no-untyped-def]
    spec = {
        "type": "score_model",
        "name": "judge",
        "model": model,
        "base_url": url,
        "range": [0, 1],
        "pass_threshold": 0.75,
        "input": [
            {"role": "system", "content": "Score the Model Answer. Reply with ONLY the score."},
            {"role": "user", "content": "- Reference Answer: {{item.reference_answer}}\n- Model Answer: {{sample.output_text}}"},
        ],
        **extra,
    }
    return load_grader(spec)


def test_score_is_read_and_templates_are_rendered(judge) -> None:  # type: ignore[no-untyped-def]
    url, seen = judge
    grade = grade_answer(_grader(url, "score-0.5"), "13.4%", "13.41%")
    assert grade.reward == 0.5 and grade.grader == "judge"
    body = seen[-1]
    assert body["temperature"] == 0
    assert body["messages"][1]["content"] == "- Reference Answer: 13.4%\n- Model Answer: 13.41%"
    assert grade_answer(_grader(url, "score-1"), "13.4%", "13.4%").reason.endswith("pass")


def test_range_is_normalised_and_out_of_range_clamped(judge) -> None:  # type: ignore[no-untyped-def]
    url, _ = judge
    assert grade_answer(_grader(url, "score-7.5", range=[0, 10]), "1", "1").reward == 0.75
    grade = grade_answer(_grader(url, "out-of-range"), "1", "1")
    assert grade.reward == 1.0 and "out of range" in grade.reason
    assert grade_answer(_grader(url, "score--2"), "1", "1").reward == 0.0


def test_malformed_reply_is_no_grade(judge) -> None:  # type: ignore[no-untyped-def]
    url, _ = judge
    grade = grade_answer(_grader(url, "malformed"), "13.4%", "13.4%")
    assert grade.reward is None and "no score" in grade.reason


def test_timeout_is_no_grade_and_bounded(judge) -> None:  # type: ignore[no-untyped-def]
    url, _ = judge
    start = time.monotonic()
    grade = grade_answer(_grader(url, "slow", timeout_s=0.5, retries=0), "13.4%", "13.4%")
    assert grade.reward is None and "Timeout" in grade.reason
    assert time.monotonic() - start < 2.5


def test_http_error_is_no_grade_and_server_errors_are_retried(judge) -> None:  # type: ignore[no-untyped-def]
    url, _ = judge
    grade = grade_answer(_grader(url, "error", retries=0), "1", "1")
    assert grade.reward is None and "model exploded" in grade.reason
    assert grade_answer(_grader(url, "flaky", retries=2), "1", "1").reward == 0.5


def test_unreachable_endpoint_is_no_grade() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        grade = grade_answer(_grader(f"http://127.0.0.1:{port}/v1", "score-1", retries=0, timeout_s=2), "1", "1")
    assert grade.reward is None and "judge call failed" in grade.reason


def test_tutorial_judge_file_runs_against_the_base_url_from_env(judge, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    url, seen = judge
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    for name in ("numerical_judge.json", "numerical_judge.yaml"):
        grader = load_grader(EXAMPLES / name)
        grade = grade_answer(grader, "$842M", "$842 million dollars")
        assert grade.grader == "numerical_grader"
        assert grade.reward == 1.0 and grade.reason == "judge scored 1 pass"
        assert seen[-1]["model"] == "gpt-4.1" and "Reply with ONLY the numeric score" in seen[-1]["messages"][0]["content"]


def test_no_key_and_no_endpoint_is_no_grade(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    grade = grade_answer(load_grader(EXAMPLES / "numerical_judge.json"), "1", "1")
    assert grade.reward is None and "OPENAI_API_KEY" in grade.reason


@pytest.mark.parametrize(
    ("reply", "score"),
    [("1", 1.0), ("0.5\n", 0.5), ('{"score": 0.25}', 0.25), ("Score: 0.75", 0.75), ("**Score:** 0.5", 0.5), ("I give it 1.", 1.0),
     ("The grade is 0 because 13.4 differs from 12", 0.0), ("", None), ("maybe 1 or 0", None), ("good", None)],
)  # fmt: skip
def test_parse_score(reply: str, score: float | None) -> None:
    assert parse_score(reply) == score
