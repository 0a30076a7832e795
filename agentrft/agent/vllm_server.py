"""vLLM's OpenAI-compatible server for one model, in a process group of its own, for a ``with`` block.

vLLM runs from the Python of its own virtual environment (``make vllm`` creates ``.venv-vllm``): it pins
its own torch, so it cannot share agentrft's. ``VLLMPolicy`` (``agentrft.agent.vllm``) speaks to it.

The server always runs with ``--logprobs-mode processed_logprobs`` (sampled tokens' log-probs after
temperature, top-k and top-p, as ``LocalPolicy`` records them) and ``--generation-config vllm`` (no
defaults from the model's ``generation_config.json``, such as a repetition penalty).

A trap of vLLM's CPU build (0.32): a request with its own ``seed`` crashes the engine ("CPU Generator
does not use offset") when its prefill is chunked, so on a CPU ``max_num_batched_tokens`` must hold
every prefill of one scheduler step: at least ``max_num_seqs`` × the longest context.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
import weakref
from pathlib import Path

import httpx

from ..errors import UserError

PYTHON_ENV = "AGENTRFT_VLLM_PYTHON"
"""Environment variable naming a Python that has vLLM (default: ``.venv-vllm/bin/python``)."""


def find_vllm_python() -> Path:
    """``$AGENTRFT_VLLM_PYTHON``, else ``.venv-vllm/bin/python`` of the repository or the working directory."""
    named = os.environ.get(PYTHON_ENV)
    if named:
        if not Path(named).is_file():
            raise UserError(f"{PYTHON_ENV}={named}: no such file; point it at a Python with vLLM or run `make vllm`")
        return Path(named)
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        candidate = root / ".venv-vllm" / "bin" / "python"
        if candidate.is_file():
            return candidate
    raise UserError(f"no Python with vLLM found: run `make vllm` (it creates .venv-vllm) or set {PYTHON_ENV}")


_WRAPPERS = ("Engine core initialization failed", "See stack trace", "See root cause")
"""vLLM's errors that only say that another one (above them in the log) happened."""
_LOG_PREFIX = re.compile(r"^(\(\w+ pid=\d+\)\s*)?((INFO|WARNING|ERROR|CRITICAL|DEBUG) \S+ \S+ \[[^\]]*\]\s*)?")


def log_summary(path: Path, max_chars: int = 300) -> str:
    """The most telling line at the end of a vLLM log: the last error that is not a generic wrapper."""
    try:
        with open(path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 65536))
            lines = [_LOG_PREFIX.sub("", line).strip() for line in log.read().decode(errors="replace").splitlines()]
    except OSError:
        return "(no log)"
    lines = [line for line in lines if line]
    errors = [line for line in lines if re.search(r"(Error|Exception)\b", line)
              and not any(wrapper in line for wrapper in _WRAPPERS)]
    line = (errors or lines or ["(empty log)"])[-1]
    return line if len(line) <= max_chars else line[: max_chars - 1] + "…"


def has_nvidia_gpu() -> bool:
    """Whether an NVIDIA driver answers here (as ``make vllm`` decides between vLLM's CUDA and CPU builds)."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _stop_group(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the server's process group (API server, engine core, workers); SIGKILL what is left of it
    after ``grace_s``."""
    deadline = time.monotonic() + grace_s
    try:
        os.killpg(process.pid, signal.SIGTERM)
        while time.monotonic() < deadline:
            process.poll()  # reaps the leader once it exits, so that it no longer counts as a member
            os.killpg(process.pid, 0)  # ProcessLookupError once no member is left
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


class VLLMServer:
    """vLLM's OpenAI-compatible server for one model, in its own process group, for a ``with`` block.

    Example:
        >>> with VLLMServer("runs/tiny/model", dtype="float32", dev_mode=True) as server:
        ...     policy = VLLMPolicy(server.url)
        ...     trajectories = rollout(rows, policy, tools_url, token, RolloutSettings(seed=0))

    A server that exits during start-up, or does not answer ``/health`` within ``startup_timeout_s``,
    is a one-line ``UserError`` quoting its log; the log (``log_path``) is kept. ``VLLMServer.connect(url)``
    stands for a server that is already running: entering it only checks ``/health``.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        python: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        served_model_name: str | None = None,
        dtype: str = "auto",
        max_model_len: int | None = None,
        max_num_seqs: int = 32,
        max_num_batched_tokens: int | None = None,
        cpu_kv_cache_gib: float = 1.0,
        lora_rank: int | None = None,
        dev_mode: bool = False,
        log_path: str | Path | None = None,
        startup_timeout_s: float = 300.0,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        """``model``: a model folder or hub id. ``python``: one with vLLM (default ``find_vllm_python()``).
        ``port``: a free one when None. ``max_num_batched_tokens``: None is 65536 on a machine without an
        NVIDIA GPU, which must cover ``max_num_seqs`` full prefills there (see the module docstring), and
        vLLM's own default on one. ``cpu_kv_cache_gib`` sets ``VLLM_CPU_KVCACHE_SPACE`` (ignored on a GPU). ``lora_rank`` serves LoRA adapters up to that rank (one of vLLM's 8, 16,
        32, 64, …) with runtime loading on; ``dev_mode`` turns on vLLM's development endpoints,
        which full-weight reloading needs. ``extra_args`` and ``env`` go to the server as they are."""
        self.model = str(model)
        self.python = Path(python) if python is not None else None
        self.host = host
        self.port = port
        self.served_model_name = served_model_name
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        if max_num_batched_tokens is None and not has_nvidia_gpu():
            max_num_batched_tokens = 65536
        self.max_num_batched_tokens = max_num_batched_tokens
        if (max_num_batched_tokens and max_model_len and max_num_batched_tokens < max_num_seqs * max_model_len
                and not has_nvidia_gpu()):
            warnings.warn(f"max_num_batched_tokens={max_num_batched_tokens} < max_num_seqs × max_model_len "
                          f"({max_num_seqs} × {max_model_len}): a chunked prefill of a seeded request crashes "
                          "vLLM's CPU build", stacklevel=2)
        self.cpu_kv_cache_gib = cpu_kv_cache_gib
        self.lora_rank = lora_rank
        self.dev_mode = dev_mode
        self.log_path = Path(log_path) if log_path is not None else None
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        self.url = ""
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None
        """Seconds from launch until ``/health`` answered."""
        self._owned = True
        self._finalizer: weakref.finalize | None = None

    @classmethod
    def connect(cls, url: str, startup_timeout_s: float = 30.0) -> VLLMServer:
        """A server someone else runs at ``url``: entering waits for ``/health``, leaving does nothing."""
        server = cls(url, startup_timeout_s=startup_timeout_s)
        server.url = base_url(url)
        server._owned = False
        return server

    def command(self, python: Path, port: int) -> list[str]:
        """The server's command line."""
        args = [
            str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
            "--host", self.host, "--port", str(port), "--dtype", self.dtype,
            "--max-num-seqs", str(self.max_num_seqs), "--logprobs-mode", "processed_logprobs",
            "--generation-config", "vllm", "--disable-uvicorn-access-log",
        ]
        if self.max_num_batched_tokens:
            args += ["--max-num-batched-tokens", str(self.max_num_batched_tokens)]
        if self.served_model_name:
            args += ["--served-model-name", self.served_model_name]
        if self.max_model_len:
            args += ["--max-model-len", str(self.max_model_len)]
        if self.lora_rank:
            args += ["--enable-lora", "--max-lora-rank", str(self.lora_rank), "--max-loras", "1"]
        return args + list(self.extra_args)

    def start(self) -> str:
        """Launch the server and wait until it answers; returns its URL."""
        if not self._owned:
            wait_healthy(self.url, self.startup_timeout_s)
            return self.url
        if self.process is not None:
            raise RuntimeError(f"the vLLM server for {self.model} is already running at {self.url}")
        python = self.python or find_vllm_python()
        port = self.port or _free_port(self.host)
        self.url = f"http://{self.host}:{port}"
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="vllm-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": f"{self.cpu_kv_cache_gib:g}"}
        if self.lora_rank:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "1"
        if self.dev_mode:
            env["VLLM_SERVER_DEV_MODE"] = "1"
        env.update(self.env)
        began = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(python, port), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
        # Stopped also if the caller never leaves the block (an interpreter exiting on an error).
        self._finalizer = weakref.finalize(self, _stop_group, self.process, 10.0)
        try:
            wait_healthy(self.url, self.startup_timeout_s, self.process, self.log_path, self.model)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - began
        return self.url

    def stop(self, grace_s: float = 20.0) -> None:
        """Terminate the server's processes (SIGKILL after ``grace_s``); nothing for a connected server."""
        if self.process is None:
            return
        if self._finalizer is not None:
            self._finalizer.detach()
        _stop_group(self.process, grace_s)
        self.process = None

    def __enter__(self) -> VLLMServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def base_url(url: str) -> str:
    """``http://host:8000/v1/completions``, ``…/v1`` or ``http://host:8000`` → ``http://host:8000``."""
    base = url.rstrip("/")
    for suffix in ("/chat/completions", "/completions", "/v1"):
        base = base.removesuffix(suffix)
    return base


def wait_healthy(url: str, timeout_s: float, process: subprocess.Popen | None = None, log_path: Path | None = None,
                 model: str = "") -> None:
    """Poll ``url/health`` until it answers 200; a process that exits first, or the deadline, is a UserError."""
    what = f"vLLM server for {model}" if model else f"vLLM server at {url}"
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5.0) as client:
        while True:
            code = process.poll() if process is not None else None
            if code is not None:
                raise UserError(f"{what} exited during start-up (code {code}): {log_summary(log_path)} (log: {log_path})"
                                if log_path else f"{what} exited during start-up (code {code})")
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                last = f": {log_summary(log_path)} (log: {log_path})" if log_path else ""
                raise UserError(f"{what} did not answer {url}/health within {timeout_s:g} s{last}")
            time.sleep(0.5)


__all__ = ["PYTHON_ENV", "VLLMServer", "base_url", "find_vllm_python", "has_nvidia_gpu", "log_summary", "wait_healthy"]
