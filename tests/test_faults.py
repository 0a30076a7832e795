"""Faults during evaluation and rollouts, each provoked for real: the tool server killed and restarted
mid-run, a tool that hangs, a judge that times out, the disk full while records are written.

The agent is a scripted OpenAI-compatible endpoint (``running_chat_server``), so the runs are exact
and take seconds; the tool servers, the judge and ``agentrft eval`` are the real ones on loopback.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from agentrft.agent.testing import running_chat_server
from agentrft.cli import main
from agentrft.jsonl import read_models, write_models
from agentrft.schema import EvalRecord, Row, ToolResultTurn, Trajectory
from agentrft.tools.server import create_app
from agentrft.tools.local_server import build_registry, running_server, serve_app

pytestmark = pytest.mark.timeout(300)
TOKEN = "fault-token"


def _rows(synth_dir: Path, n: int, tmp_path: Path, server_tools: bool = False) -> tuple[Path, list[Row]]:
    """The first ``n`` val rows; with ``server_tools`` they carry no tools list, so the server's are used."""
    rows = read_models(synth_dir / "research_val.jsonl", Row)[:n]
    if server_tools:
        rows = [row.model_copy(update={"tools": []}) for row in rows]
    path = tmp_path / "val.jsonl"
    write_models(path, rows)
    return path, rows


def _answers(rows: list[Row]) -> dict[str, str]:
    return {row.prompt: row.reference_answer for row in rows}


def _traces(out: Path) -> dict[str, Trajectory]:
    lines = out.with_name(out.stem + ".traces.jsonl").read_text().splitlines()
    return {rec.id: Trajectory.model_validate_json(lines[rec.trace_line - 1]) for rec in read_models(out, EvalRecord)}


# --- the tool server killed and restarted --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_tool_server(corpus: Path, port: int, token_file: Path, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "agentrft.cli", "tools", "serve", "--corpus", str(corpus), "--port", str(port),
               "--no-embeddings", "--token-file", str(token_file)]
    proc = subprocess.Popen(command, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"tool server did not start: {log.read_text()[-2000:]}")


def test_tool_server_killed_and_restarted_mid_eval(
    synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """24 rows in 3 batches of 8: the server is SIGKILLed as batch 2 starts and back before batch 3.
    Batch 2's calls come back as recorded tool errors; the run finishes; the rate is reported."""
    import agentrft.agent.loop

    monkeypatch.setattr(agentrft.agent.loop, "ROLLOUTS_PER_CALL", 8)  # eval's calls: 8 greedy rows each
    data, rows = _rows(synth_dir, 24, tmp_path)
    answers = _answers(rows)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    port, log = _free_port(), tmp_path / "tools.log"
    server = {"proc": _start_tool_server(synth_dir / "corpus", port, token_file, log)}
    first_turns = {"n": 0}
    lock = threading.Lock()

    def agent(messages: list[dict]) -> dict:
        prompt = next(m["content"] for m in messages if m["role"] == "user")
        if any(m["role"] == "tool" for m in messages):
            return {"content": answers[prompt]}
        with lock:  # the chat server runs this on its event loop: a batch's first turns come in order
            first_turns["n"] += 1
            if first_turns["n"] == 9:  # batch 2 begins: kill the server
                server["proc"].kill()
                server["proc"].wait()
            elif first_turns["n"] == 17:  # batch 3 begins: the server is back
                server["proc"] = _start_tool_server(synth_dir / "corpus", port, token_file, log)
        return {"content": None, "tool_calls": [("search", json.dumps({"query": prompt}))]}

    out = tmp_path / "eval.jsonl"
    try:
        with running_chat_server(agent) as (url, _):
            main(["eval", "--model", url, "--data", str(data), "--out", str(out), "--grader", "numeric",
                  "--tools-url", f"http://127.0.0.1:{port}", "--token-file", str(token_file)])
    finally:
        server["proc"].kill()
    printed = capsys.readouterr().out
    records = {r.id: r for r in read_models(out, EvalRecord)}
    assert list(records) == [row.id for row in rows]  # the run went on to the end
    traces = _traces(out)
    for index, row in enumerate(rows):
        [result] = [t for t in traces[row.id].turns if isinstance(t, ToolResultTurn)]
        if 8 <= index < 16:
            assert result.is_error and "unavailable" in result.output and records[row.id].tool_errors == 1
        else:
            assert not result.is_error and "(score " in result.output and records[row.id].tool_errors == 0
        assert records[row.id].reward == 1.0 and traces[row.id].stop_reason == "answer"
    assert "tool errors: 8 of 24 calls (33.3%)" in printed


# --- a tool that hangs ---------------------------------------------------------------------------


async def hang(seconds: float) -> str:
    """Wait, then answer (a tool stuck on a dead upstream).

    Args:
        seconds: How long to wait.
    """
    await asyncio.sleep(seconds)
    return "finally"


def echo(text: str) -> str:
    """Answer with the text.

    Args:
        text: What to answer.
    """
    return f"echo: {text}"


def test_a_hanging_tool_times_out_and_the_rollout_goes_on(
    tmp_path: Path, synth_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, rows = _rows(synth_dir, 2, tmp_path, server_tools=True)

    def agent(messages: list[dict]) -> dict:
        done = sum(m["role"] == "tool" for m in messages)
        if done == 0:
            return {"content": None, "tool_calls": [("hang", json.dumps({"seconds": 60}))]}
        if done == 1:
            return {"content": None, "tool_calls": [("echo", json.dumps({"text": "still here"}))]}
        return {"content": "done"}

    out = tmp_path / "eval.jsonl"
    # The server's own limit (2 s) is past the client's (0.5 s): the client's is the one tested here.
    app = create_app(build_registry(tools=[hang, echo]), TOKEN, tool_timeout_s=2)
    with serve_app(app) as tools_url, running_chat_server(agent) as (url, _):
        start = time.monotonic()
        main(["eval", "--model", url, "--data", str(data), "--out", str(out), "--grader", "numeric",
              "--tools-url", tools_url, "--tool-timeout", "0.5"])
        took = time.monotonic() - start
    assert took < 20
    for row in rows:
        trajectory = _traces(out)[row.id]
        hung, echoed = [t for t in trajectory.turns if isinstance(t, ToolResultTurn)]
        assert hung.is_error and "timed out after 0.5s" in hung.output and hung.latency_ms < 5000
        assert not echoed.is_error and echoed.output == "echo: still here"
        assert trajectory.stop_reason == "answer" and trajectory.output_text == "done"
    assert "tool errors: 2 of 4 calls (50.0%)" in capsys.readouterr().out


@pytest.fixture(autouse=True)
def _tool_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOOL_BEARER", TOKEN)


def test_the_server_answers_a_hanging_tool_call_itself() -> None:
    """Without a client timeout, the server's own (--tool-timeout) still answers, and goes on serving."""
    app = create_app(build_registry(tools=[hang, echo]), TOKEN, tool_timeout_s=0.5)
    with serve_app(app) as url:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        start = time.monotonic()
        reply = httpx.post(url + "/hang", json={"arguments": {"seconds": 60}, "call_id": "h"}, headers=auth, timeout=30)
        assert time.monotonic() - start < 5
        assert reply.status_code == 200 and reply.json() == {
            "output": "Error: tool 'hang' did not answer within 0.5s", "call_id": "h"}
        assert httpx.post(url + "/echo", json={"arguments": {"text": "x"}}, headers=auth).json()["output"] == "echo: x"


# --- the judge times out -------------------------------------------------------------------------


@pytest.fixture
def slow_judge() -> Iterator[str]:
    """A judge that scores 1, but takes 2 s over any answer containing SLOW (its graders wait 0.5 s)."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def complete(request: Request) -> dict[str, Any]:
        body = await request.json()
        if "SLOW" in body["messages"][-1]["content"]:
            await asyncio.sleep(2)
        return {"id": "j", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "1"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    with serve_app(app) as url:
        yield url + "/v1"


def test_judge_timeouts_are_no_grade_and_left_out_of_the_mean(
    tmp_path: Path, synth_dir: Path, slow_judge: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data, rows = _rows(synth_dir, 6, tmp_path)
    slow = {row.prompt for row in rows[::3]}  # 2 of 6

    def agent(messages: list[dict]) -> dict:
        prompt = next(m["content"] for m in messages if m["role"] == "user")
        return {"content": "SLOW answer" if prompt in slow else "a fine answer"}

    grader = tmp_path / "judge.json"
    grader.write_text(json.dumps({
        "type": "score_model", "name": "judge", "model": "judge", "base_url": slow_judge, "timeout_s": 0.5,
        "retries": 0, "range": [0, 1],
        "input": [{"role": "user", "content": "Reference: {{item.reference_answer}}\nAnswer: {{sample.output_text}}"}],
    }))
    out = tmp_path / "eval.jsonl"
    with running_server(tools=[echo], token=TOKEN) as tools_url, running_chat_server(agent) as (url, _):
        start = time.monotonic()
        main(["eval", "--model", url, "--data", str(data), "--out", str(out), "--grader", str(grader),
              "--tools-url", tools_url])
        assert time.monotonic() - start < 20
    printed = capsys.readouterr().out
    records = read_models(out, EvalRecord)
    assert len(records) == 6
    for rec, row in zip(records, rows):
        if row.prompt in slow:
            assert rec.reward is None and "judge call failed" in rec.reason and "Timeout" in rec.reason
        else:
            assert rec.reward == 1.0
    assert "mean reward: 1.000 over 4 graded records" in printed  # not 4/6 = 0.667
    assert "no grade (the grader failed): 2 records, left out of the mean" in printed
    main(["compare", str(out), str(out), "--json"])
    comparison = json.loads(capsys.readouterr().out)
    assert comparison["n"] == 4 and sorted(comparison["ungraded"]) == sorted(r.id for r in rows if r.prompt in slow)


# --- the disk full --------------------------------------------------------------------------------


class _DiskFillsUp:
    """``os`` for agentrft.jsonl, except that the disk fills up during the second write to one file,
    the way a full disk behaves: that write lands in part (a short count), the next raises ENOSPC."""

    def __init__(self, target: Path) -> None:
        self.target, self.writes = target.resolve(), 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        if Path(os.readlink(f"/proc/self/fd/{fd}")) != self.target:
            return os.write(fd, data)
        self.writes += 1
        if self.writes == 1:
            return os.write(fd, data)
        if self.writes == 2:
            return os.write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_records_keeps_earlier_ones_and_resumes(
    tmp_path: Path, synth_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import agentrft.agent.loop
    import agentrft.jsonl

    monkeypatch.setattr(agentrft.agent.loop, "ROLLOUTS_PER_CALL", 8)
    data, rows = _rows(synth_dir, 16, tmp_path)  # two batches of 8
    answers = _answers(rows)

    def agent(messages: list[dict]) -> dict:
        return {"content": answers[next(m["content"] for m in messages if m["role"] == "user")]}

    out = tmp_path / "eval.jsonl"
    argv = ["eval", "--data", str(data), "--out", str(out), "--grader", "numeric"]
    with running_server(tools=[echo], token=TOKEN) as tools_url, running_chat_server(agent) as (url, _):
        argv += ["--model", url, "--tools-url", tools_url]
        monkeypatch.setattr(agentrft.jsonl, "os", _DiskFillsUp(out))
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 1
        [error] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert error == (f"error: {out}: cannot write (No space left on device); what it held before this write "
                         "is kept (8 new records before it); free space and rerun the same command to continue")
        kept = read_models(out, EvalRecord)  # every line whole: the cut line was taken back
        assert [r.id for r in kept] == [row.id for row in rows[:8]]
        assert out.read_bytes().endswith(b"}\n")

        monkeypatch.setattr(agentrft.jsonl, "os", os)  # space freed
        main(argv)
    assert "skipped 8 rows already in eval.jsonl" in capsys.readouterr().out
    records = read_models(out, EvalRecord)
    assert [r.id for r in records] == [row.id for row in rows]
    assert all(trajectory.row_id == rid for rid, trajectory in _traces(out).items())


def test_a_file_size_limit_leaves_whole_lines(tmp_path: Path) -> None:
    """The same through the kernel: RLIMIT_FSIZE in a subprocess makes the write itself fail (EFBIG)."""
    path = tmp_path / "records.jsonl"
    write_models(path, [EvalRecord(id=f"r{i}") for i in range(5)])
    script = textwrap.dedent(f"""
        import resource, signal
        from pathlib import Path
        from agentrft.errors import UserError
        from agentrft.jsonl import write_models
        from agentrft.schema import EvalRecord
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write instead of a killed process
        path = Path({str(path)!r})
        limit = path.stat().st_size + 150
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        try:
            write_models(path, [EvalRecord(id=f"new{{i}}") for i in range(5)], append=True)
        except UserError as exc:
            print(exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{path}: cannot write (File too large); what it held before this write is kept"
    assert [r.id for r in read_models(path, EvalRecord)] == [f"r{i}" for i in range(5)]


def test_serve_answers_503_when_the_production_tools_are_down(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The agent route asks the tool server for its tools first: down, that is a 503 the client can
    read (and retry), never a 500; with a server that dies between calls the loop records the error."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentrft.agent.settings import RolloutSettings
    from agentrft.agent.testing import ScriptedLocalPolicy, tool_call_text
    from agentrft.serve import create_app as serve_app_for

    policy = ScriptedLocalPolicy(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                 AutoTokenizer.from_pretrained(tiny_model_dir),
                                 lambda messages: tool_call_text("echo", {"text": "x"}) if len(messages) < 3 else "ok")
    dead = f"http://127.0.0.1:{_free_port()}"
    app = serve_app_for(policy, dead, TOKEN, RolloutSettings(temperature=0, max_trajectory_tokens=1024),
                        tmp_path / "traces")
    with serve_app(app) as url:
        start = time.monotonic()
        reply = httpx.post(url + "/v1/agent", json={"prompt": "anything"}, timeout=60)
        assert reply.status_code == 503 and time.monotonic() - start < 10
        detail = reply.json()["detail"]
        assert detail.startswith(f"production tools: tool server {dead} unreachable") and "\n" not in detail


# --- the tool server killed and restarted during training -------------------------------------------


def test_tool_server_killed_and_restarted_mid_training(
    synth_dir: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three GRPO steps whose rollouts search: the server is killed before step 2's rollouts and back for
    step 3's. Step 2's calls come back as tool errors, training goes on, and the rate is a metric."""
    import torch

    from agentrft.agent.loop import RolloutSettings, rollout
    from agentrft.agent.testing import ScriptedLocalPolicy, tool_call_text
    from agentrft.config import config_from_dict
    from agentrft.train.metrics import read_metrics
    from agentrft.train.trainer import train

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    port, log = _free_port(), tmp_path / "tools.log"
    url = f"http://127.0.0.1:{port}"
    server = {"proc": _start_tool_server(synth_dir / "corpus", port, token_file, log)}
    steps = {"n": 0}

    def script(messages: list[dict]) -> str:
        if not any(m["role"] == "tool" for m in messages):
            return tool_call_text("search", {"query": "Atlas Corp revenue"})
        return "Revenue: $107M"

    def runner(rows, model, tokenizer, greedy, seed):  # type: ignore[no-untyped-def]
        steps["n"] += 1
        if steps["n"] == 2:
            server["proc"].kill()
            server["proc"].wait()
        elif steps["n"] == 3:
            server["proc"] = _start_tool_server(synth_dir / "corpus", port, token_file, log)
        settings = RolloutSettings(max_tool_calls=2, max_trajectory_tokens=1024, max_new_tokens=32, seed=seed)
        return rollout(rows, ScriptedLocalPolicy(model, tokenizer, script), url, TOKEN, settings)

    class Graded:
        name = "coin"

        def grade(self, row: Row, trajectory: Trajectory) -> Any:
            from agentrft.schema import Grade

            return Grade(reward=float(trajectory.sample_index % 2), grader=self.name)

    monkeypatch.setenv("TOOL_BEARER", TOKEN)
    torch.set_num_threads(1)
    config = config_from_dict(dict(
        train_path=str(synth_dir / "research_train.jsonl"), val_path=None, base_model=str(tiny_model_dir),
        tools_url=url, group_size=2, batch_size=2, max_steps=3, temperature=1.0, learning_rate=1e-4,
        warmup_steps=0, seed=0, lora=None, bf16=False, output_dir=str(tmp_path / "run"), trace_samples=0,
    ))
    try:
        result = train(config, runner=runner, grader=Graded())
    finally:
        server["proc"].kill()
    assert result.steps == 3 and result.aborted is None
    rates = [row.tool_error_rate for row in read_metrics(tmp_path / "run" / "metrics.jsonl") if row.step >= 1]
    assert rates == [0.0, 1.0, 0.0]
