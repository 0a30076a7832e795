"""The python grader: a user's ``grade(sample, item) -> float``, run in its own process.

Why a process: a grader that hangs or leaks must not stall training. Each grade has a time limit;
past it the worker is killed (and restarted for the next grade) and the grade is "no grade" with
the reason. An exception in ``grade`` is "no grade" with the exception's message — never a silent 0.
The result is clamped to [0, 1]; NaN or a non-number is "no grade".

``sample`` is ``{"output_text", "output_json", "output_tools", "n_tool_calls", "stop_reason"}`` and
``item`` the dataset row as a dict (``item["reference_answer"]``, ``item["expected"]``, ...), as
on the managed service. One worker serves one grader; concurrent grades take turns.
"""

from __future__ import annotations

import ast
import json
import math
import os
import selectors
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..schema import Grade, Row, Trajectory
from .base import clamp01, item_view, sample_view

_WORKER = Path(__file__).with_name("_python_worker.py")


def check_source(source: str) -> None:
    """Refuse source that does not parse or defines no top-level ``grade`` (UserError)."""
    try:
        tree = ast.parse(source, "<grader>")
    except SyntaxError as exc:
        raise UserError(f"source: line {exc.lineno}: {exc.msg}") from None
    if not any(isinstance(node, ast.FunctionDef) and node.name == "grade" for node in tree.body):
        raise UserError("source: defines no top-level grade(sample, item) function")


class _Timeout(Exception):
    pass


class PythonGrader:
    def __init__(self, name: str = "python", source: str = "", timeout_s: float = 10.0) -> None:
        check_source(source)
        self.name = name
        self.source = source
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._lock = threading.Lock()
        self._startup_error: str | None = None

    # -- the worker ------------------------------------------------------------------------------

    def _start(self) -> None:
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        # -P keeps this folder off sys.path, so the user's `import base` is never our base.py.
        self._proc = subprocess.Popen(
            [sys.executable, "-u", "-P", str(_WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        weakref.finalize(self, _kill, self._proc)
        self._buffer = b""
        reply = self._exchange({"source": self.source}, time.monotonic() + max(self.timeout_s, 10.0))
        if "error" in reply:
            self._startup_error = reply["error"]
            self.close()

    def _exchange(self, payload: dict[str, Any], deadline: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write((json.dumps(payload) + "\n").encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return {"error": "the grader process exited"}
        fd = self._proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise _Timeout
                chunk = os.read(fd, 65536)
                if not chunk:
                    return {"error": "the grader process exited (crash or sys.exit in grade?)"}
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        """Stop the worker (it is restarted on the next grade)."""
        if self._proc is not None:
            _kill(self._proc)
            self._proc = None

    # -- grading ---------------------------------------------------------------------------------

    def _ungraded(self, reason: str) -> Grade:
        return Grade(reward=None, grader=self.name, reason=reason)

    def grade(self, row: Row, trajectory: Trajectory) -> Grade:
        request = {"sample": sample_view(trajectory), "item": item_view(row)}
        with self._lock:
            if self._startup_error:
                return self._ungraded(f"grader source failed to load: {self._startup_error}")
            try:
                if self._proc is None or self._proc.poll() is not None:
                    self._start()
                    if self._startup_error:
                        return self._ungraded(f"grader source failed to load: {self._startup_error}")
                reply = self._exchange(request, time.monotonic() + self.timeout_s)
            except _Timeout:
                self.close()
                return self._ungraded(f"grade() took longer than {self.timeout_s:g}s; stopped")
            if "error" in reply:
                if self._proc is not None and self._proc.poll() is not None:
                    self.close()
                return self._ungraded(f"grade() raised {reply['error']}")
        score = reply["score"]
        if math.isnan(score):
            return self._ungraded("grade() returned NaN")
        reward = clamp01(score)
        note = "" if reward == score else f", clamped to {reward:g}"
        return Grade(reward=reward, grader=self.name, reason=f"grade() returned {score:g}{note}")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - a killed process always goes
        pass
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass


__all__ = ["PythonGrader", "check_source"]
