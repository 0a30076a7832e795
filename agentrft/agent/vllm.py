"""vLLM as the rollout engine: a server in its own process (``VLLMServer``), spoken to token-in / token-out.

``VLLMPolicy`` is the agent loop's policy on a vLLM server. It keeps the token bookkeeping of
``LocalPolicy`` (``render``: render the prompt once, then only append) and sends each episode's whole
token context to ``/v1/completions``, taking back the sampled ids and their log-probs exactly as
sampled. The chat endpoint is not used: it would re-render the conversation through the template,
which need not give back the tokens the model wrote, and the loss must be on what it wrote. Resending
the whole context costs little: vLLM's prefix cache prefills only what arrived since the last turn.

The recorded log-probs are those of the distribution sampled from, after temperature, top-k and top-p
(``VLLMServer`` runs vLLM with ``--logprobs-mode processed_logprobs``), as ``LocalPolicy`` records them.
Every request names each sampling parameter, so nothing from the model's ``generation_config.json``
(a repetition penalty, say) applies, also on a server started elsewhere.

Pushing new weights after an optimizer step (call between ``generate`` calls, never during one):

- LoRA (server with ``lora_rank``): ``policy.load_lora(DIR)`` posts ``/v1/load_lora_adapter``
  ``{"lora_name": "policy", "lora_path": DIR, "load_inplace": true}``; DIR holds what peft's
  ``save_pretrained`` writes (``adapter_config.json``, ``adapter_model.safetensors``) and must be a new
  directory for each update: vLLM keys its prefix cache by adapter name and path, so changed weights
  under the same path would reuse keys and values computed with the old ones.
- Full weights (server with ``dev_mode``): ``save_weights(model, DIR)`` then ``policy.reload_weights(DIR)``,
  which posts ``/collective_rpc`` ``{"method": "reload_weights", "kwargs": {"weights_path": DIR}}`` and
  then ``/reset_prefix_cache``. vLLM reads every ``*.safetensors`` in DIR, by the checkpoint's parameter
  names; DIR may be a new folder each time or the same one rewritten (a reload without a path reads the
  last DIR again). DIR must hold every parameter, tied ones included, which ``save_pretrained`` does
  not write: with tied embeddings it leaves ``lm_head.weight`` out, and vLLM's CPU build then keeps
  serving the old output layer (it computes the head from a packed copy of the weight, and repacks
  only layers whose weights the checkpoint carries). ``reload_weights`` refuses such a folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from ..errors import UserError
from . import render
from .episode import Episode, Reply
from .parse import ensure_response_parser
from .settings import RolloutSettings
from .vllm_server import VLLMServer, base_url


def request_seed(seed: int, episode: Episode) -> int:
    """The seed of one turn's request: a function of the run's seed, the row, the sample and the turn only,
    so a turn samples the same tokens whichever rollouts share its batch or finish first."""
    key = f"{seed}/{episode.row.id}/{episode.sample_index}/{episode.replies}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=7).digest(), "big")  # < 2**56: vLLM takes int64


class VLLMPolicy:
    """A vLLM server as the policy, token-in / token-out; see the module docstring.

    Example:
        >>> policy = VLLMPolicy("http://127.0.0.1:8000")  # the tokenizer comes from the served model's folder
        >>> trajectories = rollout(rows, policy, tools_url, token, RolloutSettings(seed=0))
        >>> policy.load_lora("runs/x/adapters/step-3")  # after an optimizer step; a new folder each time

    Every unfinished episode of a turn is one request, at most ``max_concurrency`` in flight; vLLM
    batches them. Budgets are those of ``LocalPolicy``, and a turn is also cut where the server's
    context (``max_model_len``) ends. Turns stop at the tokenizer's and generation config's end tokens.
    """

    def __init__(self, url: str, tokenizer: Any = None, *, model: str | None = None, max_concurrency: int = 32,
                 timeout_s: float = 600.0, stop_ids: list[int] | None = None) -> None:
        """``tokenizer``: a tokenizer, or a folder to load one from; None loads the served model's.
        ``model``: the served model to ask (default: the first that ``/v1/models`` lists)."""
        self.url = base_url(url)
        served = self._served_models()
        card = next((m for m in served if m.get("id") == model), None) if model else served[0]
        if card is None:
            raise UserError(f"{self.url}: serves no model {model!r} (it serves {[m.get('id') for m in served]})")
        self.model = str(card["id"])
        self.base_model = self.model
        self.name = self.model
        self.max_model_len: int | None = card.get("max_model_len")
        root = card.get("root")
        self.weights_path: Path | None = Path(root).resolve() if root and Path(root).is_dir() else None
        """The folder the served weights were read from last (None when it is not on this machine)."""
        if tokenizer is None or isinstance(tokenizer, (str, Path)):
            tokenizer = _load_tokenizer(tokenizer or card.get("root") or self.model)
        self.tokenizer = tokenizer
        ensure_response_parser(tokenizer)
        self.stop_ids = sorted(stop_ids) if stop_ids else _stop_ids(tokenizer)
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.adapter_path: Path | None = None
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def _served_models(self) -> list[dict[str, Any]]:
        try:
            reply = httpx.get(f"{self.url}/v1/models", timeout=10.0)
            reply.raise_for_status()
            return list(reply.json()["data"]) or [{}]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{self.url}: no vLLM server answers /v1/models ({type(exc).__name__})") from None

    def _client_for_this_loop(self) -> httpx.AsyncClient:
        # httpx pools belong to the event loop that opened them; ``rollout`` runs a fresh loop per call.
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
            self._client = httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s, limits=limits)
            self._client_loop = loop
        return self._client

    async def generate(self, episodes: list[Episode], settings: RolloutSettings,
                       on_reply: Callable[[int, Reply], None] | None = None) -> list[Reply]:
        """One assistant turn for each episode (tool results still pending are appended first).

        ``on_reply(index, reply)``, if given, is called as soon as an episode's turn is final; the
        policy does not touch that episode again in this call."""
        client = self._client_for_this_loop()
        limit = asyncio.Semaphore(self.max_concurrency)
        replies: list[Reply | None] = [None] * len(episodes)
        jobs: list[tuple[int, int, int | None]] = []  # (episode index, tokens it may generate, seed)
        for index, episode in enumerate(episodes):
            room = render.open_turn(episode, self.tokenizer, settings.max_trajectory_tokens, settings.max_new_tokens,
                                    context_limit=self.max_model_len)
            if not room:
                replies[index] = render.out_of_budget()
                continue
            seed = None if settings.seed is None else request_seed(settings.seed, episode)
            jobs.append((index, room, seed))

        async def one(index: int, max_tokens: int, seed: int | None) -> None:
            episode = episodes[index]
            async with limit:
                ids, logprobs = await self._complete(client, list(episode.token_ids or []), max_tokens, seed, settings)
            replies[index] = reply = render.close_turn(episode, self.tokenizer, ids, logprobs, self.stop_ids)
            if on_reply is not None:
                on_reply(index, reply)

        if on_reply is not None:  # those out of room, at once
            for index, reply in enumerate(replies):
                if reply is not None:
                    on_reply(index, reply)
        tasks = [asyncio.ensure_future(one(*job)) for job in jobs]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        return [reply for reply in replies if reply is not None]

    async def _complete(self, client: httpx.AsyncClient, prompt: list[int], max_tokens: int, seed: int | None,
                        settings: RolloutSettings) -> tuple[list[int], list[float]]:
        """Sample one turn after ``prompt``: the sampled ids (end token included) and their log-probs."""
        body: dict[str, Any] = {
            "model": self.model, "prompt": prompt, "max_tokens": max_tokens,
            "temperature": settings.temperature, "top_p": settings.top_p, "top_k": settings.top_k or -1,
            "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "stop_token_ids": self.stop_ids, "logprobs": 0, "return_token_ids": True,
        }
        if seed is not None:
            body["seed"] = seed
        choice = (await self._post(client.post("/v1/completions", json=body)))["choices"][0]
        ids, logprobs = list(choice["token_ids"]), [float(v) for v in choice["logprobs"]["token_logprobs"]]
        if len(ids) != len(logprobs):
            raise RuntimeError(f"{self.url}: {len(ids)} sampled tokens but {len(logprobs)} log-probs")
        return ids, logprobs

    async def _post(self, request: Any) -> dict[str, Any]:
        try:
            response = await request
        except httpx.HTTPError as exc:
            raise UserError(f"{self.url}: the vLLM server does not answer ({type(exc).__name__})") from None
        return _json_or_error(self.url, response)

    def score(self, token_ids: list[int]) -> list[float]:
        """Log-prob of each token after the first given those before it, under the served weights
        (with the loaded adapter, if any), at temperature 1: what a training forward pass computes."""
        body = {"model": self.model, "prompt": list(token_ids), "max_tokens": 1, "temperature": 0.0,
                "prompt_logprobs": 0}
        choice = self._post_sync("/v1/completions", body)["choices"][0]
        scored = choice["prompt_logprobs"][1:]
        return [float(entry[str(token)]["logprob"]) for token, entry in zip(token_ids[1:], scored, strict=True)]

    def load_lora(self, path: str | Path, name: str = "policy") -> None:
        """Serve the peft adapter saved in ``path`` (a new folder for each update) as ``name``, in place of the
        one loaded before; later turns are generated with it. Needs a server with ``lora_rank``."""
        path = Path(path).resolve()
        if path == self.adapter_path:
            raise ValueError(f"{path}: the adapter loaded last came from this folder; save each update to a new one "
                             "(vLLM's prefix cache would keep serving keys and values of the old weights)")
        self._post_sync("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path), "load_inplace": True},
                        hint="start the server with lora_rank (--enable-lora) and VLLM_ALLOW_RUNTIME_LORA_UPDATING=1")
        self.model, self.adapter_path = name, path

    def use_base_model(self) -> None:
        """Generate with the served model itself again, without the adapter."""
        self.model, self.adapter_path = self.base_model, None

    def reload_weights(self, path: str | Path | None = None) -> None:
        """Load the full weights that ``save_weights`` wrote to ``path`` into the served model, in place, and
        drop the prefix cache computed with the old ones. ``None`` reads the folder read last again (at
        first, the served model's own). Needs a server in dev mode."""
        folder = Path(path).resolve() if path is not None else self.weights_path
        if path is not None and not folder.is_dir():
            raise UserError(f"{folder}: no such folder to reload weights from")
        if folder is not None and folder.is_dir():
            check_weights_folder(folder)
        kwargs = {"weights_path": str(folder)} if path is not None else {}
        hint = "start the server with dev_mode=True (VLLM_SERVER_DEV_MODE=1)"
        self._post_sync("/collective_rpc", {"method": "reload_weights", "kwargs": kwargs}, hint=hint)
        self.weights_path = folder
        for _ in range(100):  # refused while running requests hold blocks; there are none between turns
            if self._post_sync("/reset_prefix_cache", None, hint=hint).get("success"):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.url}: the prefix cache could not be reset after reloading weights")

    def _post_sync(self, route: str, body: dict[str, Any] | None, hint: str = "") -> dict[str, Any]:
        try:
            response = httpx.post(f"{self.url}{route}", json=body, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise UserError(f"{self.url}: the vLLM server does not answer ({type(exc).__name__})") from None
        if response.status_code == 404 and hint:
            raise UserError(f"{self.url}{route}: not found; {hint}")
        return _json_or_error(self.url + route, response)


@contextmanager
def vllm_policy(model: str | Path, url: str | None = None, **server_options: Any) -> Iterator[VLLMPolicy]:
    """A ``VLLMPolicy`` for a model folder: a whole model, or a peft adapter (served on its base model with
    the adapter loaded). On the server at ``url``, or on one started from ``.venv-vllm`` for the block
    (``server_options`` go to ``VLLMServer``)."""
    model = Path(model)
    adapter = model / "adapter_config.json"
    base, rank = str(model), None
    if adapter.is_file():
        spec = json.loads(adapter.read_text(encoding="utf-8"))
        base, rank = str(spec["base_model_name_or_path"]), int(spec.get("r") or 16)
    with ExitStack() as stack:
        if url is None:
            url = stack.enter_context(VLLMServer(base, lora_rank=rank, **server_options)).url
        policy = VLLMPolicy(url)
        if rank is not None:
            policy.load_lora(model)
        policy.name = str(model)
        yield policy


def save_weights(model: Any, directory: str | Path) -> Path:
    """Write every parameter of a transformers model, tied ones included, to ``directory/model.safetensors``
    (the checkpoint's names, one file), for ``VLLMPolicy.reload_weights``; returns the folder."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.untyped_storage().data_ptr() in seen:  # a tied weight: safetensors stores no shared memory
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        state[name] = tensor
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def check_weights_folder(folder: Path) -> None:
    """A UserError unless ``folder`` has safetensors that a reload can take whole (the head of a model with
    tied embeddings included; see the module docstring)."""
    from safetensors import safe_open

    names: set[str] = set()
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as weights:
            names.update(weights.keys())
    if not names:
        raise UserError(f"{folder}: no *.safetensors to reload weights from; write them with save_weights(model, DIR)")
    if "lm_head.weight" not in names and any(name.endswith("embed_tokens.weight") for name in names):
        raise UserError(f"{folder}: has no lm_head.weight (tied embeddings saved by save_pretrained); vLLM would keep "
                        "the old output layer, so write the weights with save_weights(model, DIR)")


def _json_or_error(where: str, response: httpx.Response) -> dict[str, Any]:
    """The reply's JSON; an error status is a UserError carrying vLLM's message."""
    if response.status_code != 200:
        try:
            detail = response.json()
            message = detail.get("error", {}).get("message") if isinstance(detail.get("error"), dict) else None
            message = message or detail.get("message") or detail.get("detail") or response.text
        except ValueError:
            message = response.text
        first = str(message).strip().splitlines()[0] if str(message).strip() else response.reason_phrase
        raise UserError(f"{where}: {response.status_code} {first}")
    try:
        data = response.json() if response.content else {}
    except ValueError:  # /v1/load_lora_adapter answers in plain text
        return {"text": response.text}
    return data if isinstance(data, dict) else {"results": data}


def _load_tokenizer(source: str | Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{source}: cannot load the served model's tokenizer ({first}); pass tokenizer=") from None


def _stop_ids(tokenizer: Any) -> list[int]:
    """The tokenizer's end-of-sequence id and those of its folder's generation config, as LocalPolicy stops."""
    values: list[Any] = [tokenizer.eos_token_id]
    try:
        from transformers import GenerationConfig

        values.append(GenerationConfig.from_pretrained(tokenizer.name_or_path).eos_token_id)
    except (OSError, ValueError):
        pass  # no generation config beside the tokenizer
    return render.end_token_ids(str(tokenizer.name_or_path), *values)


__all__ = ["VLLMPolicy", "VLLMServer", "vllm_policy", "check_weights_folder", "request_seed", "save_weights"]
