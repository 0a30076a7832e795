"""Serve's defaults and the secrets: ``agentrft serve`` will not listen beyond loopback without a key
unless told to; the key and the tool token appear in nothing a real serve and eval flow writes or prints.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agentrft.cli import main
from agentrft.schema import Row
from agentrft.serve import check_exposure, is_loopback

pytestmark = pytest.mark.timeout(300)


def test_loopback_addresses() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.internal", ""))
    assert check_exposure("0.0.0.0", "a-key", allow_no_key=False) is None
    assert check_exposure("127.0.0.1", None, allow_no_key=False) is None


def test_serve_refuses_a_public_address_without_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["serve", "--model", str(tmp_path / "no-model"), "--tools-url", "http://127.0.0.1:9"]
    for host in ("0.0.0.0", "::", "192.168.1.20"):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--host", host])
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        # Refused before the model is even looked at (it does not exist).
        assert err.count("\n") == 1 and err.startswith(f"error: --host {host}: refusing to serve without a key")
    monkeypatch.setenv("EMPTY_KEY", "")
    with pytest.raises(SystemExit):
        main([*argv, "--host", "0.0.0.0", "--api-key-env", "EMPTY_KEY"])
    assert "EMPTY_KEY: that environment variable is empty" in capsys.readouterr().err


def test_allow_no_key_serves_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from agentrft.agent.policy import LocalPolicy

    class Stub:
        name = "stub"
        model = type("M", (), {"config": type("C", (), {"max_position_embeddings": 512})()})()

    started: list[dict] = []
    monkeypatch.setattr(LocalPolicy, "from_pretrained", classmethod(lambda cls, path, **kw: Stub()))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(kw))
    argv = ["serve", "--model", "m", "--tools-url", "http://127.0.0.1:9", "--traces", str(tmp_path / "t")]
    main([*argv, "--host", "0.0.0.0", "--allow-no-key"])
    assert started[-1]["host"] == "0.0.0.0"
    assert "warning: serving on 0.0.0.0 WITHOUT a key (--allow-no-key)" in capsys.readouterr().err
    monkeypatch.setenv("SERVE_KEY", "k")
    main([*argv, "--host", "0.0.0.0", "--api-key-env", "SERVE_KEY"])
    assert len(started) == 2 and "warning" not in capsys.readouterr().err


# --- the secrets in a real flow ------------------------------------------------------------------


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not start: {log.read_text()[-2000:]}")


def test_tokens_and_keys_appear_in_nothing_written_or_printed(
    tmp_path: Path, synth_dir: Path, tiny_model_dir: Path
) -> None:
    """Tool server (access log on), serve, eval (right and wrong token), smoke, compare and inspect, all as
    the real commands; then every file under the run's folder and everything printed is searched."""
    token, key = f"tok-{secrets.token_hex(16)}", f"key-{secrets.token_hex(16)}"
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    (secret_dir / "token").write_text(token + "\n")
    (secret_dir / "wrong").write_text("not-the-token\n")
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, SERVE_KEY=key, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", AGENTRFT_CACHE=str(work / "cache"))
    env.pop("TOOL_BEARER", None)
    cli = [sys.executable, "-m", "agentrft.cli"]
    tools_port, serve_port = _port(), _port()
    tools_url, serve_url = f"http://127.0.0.1:{tools_port}", f"http://127.0.0.1:{serve_port}"
    procs: list[subprocess.Popen] = []
    outputs: list[str] = []

    def run(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([*cli, *args], env=env, cwd=work, capture_output=True, text=True, timeout=180)
        outputs.extend([done.stdout, done.stderr])
        return done

    try:
        tools_log = work / "tools.log"
        procs.append(subprocess.Popen(
            [*cli, "tools", "serve", "--corpus", str(synth_dir / "corpus"), "--port", str(tools_port), "--no-embeddings",
             "--token-file", str(secret_dir / "token"), "--access-log"],
            env=env, cwd=work, stdout=tools_log.open("w"), stderr=subprocess.STDOUT))
        serve_log = work / "serve.log"
        procs.append(subprocess.Popen(
            [*cli, "serve", "--model", str(tiny_model_dir), "--tools-url", tools_url, "--port", str(serve_port),
             "--tools-token-file", str(secret_dir / "token"), "--api-key-env", "SERVE_KEY",
             "--traces", str(work / "prod-traces"), "--max-new-tokens", "24", "--max-tool-calls", "2"],
            env=env, cwd=work, stdout=serve_log.open("w"), stderr=subprocess.STDOUT))
        _wait(tools_url, procs[0], tools_log)
        _wait(serve_url, procs[1], serve_log)

        good, bad = {"Authorization": f"Bearer {key}"}, {"Authorization": f"Bearer {token}"}  # a secret, wrong place
        replies = [
            httpx.post(f"{serve_url}/v1/agent", json={"prompt": "Henderson Q3 2025 operating margin?", "id": "q1"},
                       headers=good, timeout=120),
            httpx.post(f"{serve_url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
                       headers=good, timeout=120),
            httpx.post(f"{serve_url}/v1/agent", json={"prompt": "x"}, headers=bad, timeout=30),
            httpx.post(f"{serve_url}/v1/agent", content=b"{not json", headers=good, timeout=30),
            httpx.get(f"{serve_url}/openapi.json", headers={"Authorization": f"Bearer {key}x"}, timeout=30),
            httpx.post(f"{tools_url}/read", json={"arguments": {"path": "../x"}}, headers=bad, timeout=30),
            httpx.post(f"{tools_url}/nope", json={}, headers={"Authorization": f"Bearer {key}"}, timeout=30),
        ]
        assert [r.status_code for r in replies] == [200, 200, 401, 422, 401, 200, 401], [r.text for r in replies]
        outputs.extend(r.text + str(r.headers) for r in replies)

        val = synth_dir / "research_val.jsonl"
        common = ["eval", "--model", str(tiny_model_dir), "--data", str(val), "--tools-url", tools_url, "--limit", "2"]
        assert run(*common, "--out", "eval/base.jsonl", "--token-file", str(secret_dir / "token")).returncode == 0
        # Rows without a tools list make eval ask GET /tools, which the wrong token cannot pass.
        bare = work / "bare.jsonl"
        bare.write_text("".join(Row.model_validate_json(line).model_copy(update={"tools": []}).model_dump_json() + "\n"
                                for line in val.read_text().splitlines()[:2]))
        wrong = run(*common, "--data", str(bare), "--out", "eval/wrong.jsonl", "--token-file", str(secret_dir / "wrong"))
        assert wrong.returncode == 1 and "401: Error: missing or invalid bearer token" in wrong.stderr
        down = run(*common, "--data", str(bare), "--out", "eval/down.jsonl", "--tools-url", "http://127.0.0.1:9",
                   "--token-file", str(secret_dir / "token"))
        assert down.returncode == 1 and "unreachable" in down.stderr.strip().splitlines()[-1]
        assert run("tools", "smoke", "--url", tools_url, "--token-file", str(secret_dir / "token")).returncode == 0
        assert run(*common, "--out", "eval/tuned.jsonl", "--token-file", str(secret_dir / "token"),
                   "--samples", "2").returncode == 0
        assert run("compare", "eval/base.jsonl", "eval/tuned.jsonl").returncode == 0
        assert run("inspect", "eval/base.jsonl", "eval/tuned.jsonl", "--rows", str(val), "--bucket", "unsolved").returncode == 0
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()

    written = [p for p in work.rglob("*") if p.is_file()]
    names = {p.relative_to(work).as_posix() for p in written}
    assert {"tools.log", "serve.log", "eval/base.jsonl", "eval/base.traces.jsonl"} <= names
    assert any(n.startswith("prod-traces/production-") for n in names)
    assert "GET /healthz" in (work / "tools.log").read_text()  # the access log was on
    for secret in (token, key):
        for path in written:
            assert secret.encode() not in path.read_bytes(), f"{secret[:4]}… found in {path}"
        for text in outputs:
            assert secret not in text
