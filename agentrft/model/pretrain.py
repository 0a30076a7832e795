"""A short synthetic pretraining that gives the tiny model some in-context copying.

A pretrained model arrives able to copy from its context: a name from the question into a search
query, a path from a search hit into a ``read``. A randomly initialised 1M-parameter model does not,
and the warm start alone does not teach it: on the demonstrations the loss falls quickly to what
memorising the most frequent company gives and stays there. Measured on 40 val rows × 5 samples at
temperature 0.7 after the same warm start: without this step the model read the row's evidence
filing in 0.5% of rollouts (it searched for the same company whatever the question); with it, 29%.

The sequences are a random run of tokens, a separator, and the same run again, with the loss on the
repeat (~40 s on two cores; the loss falls from 7.8 to ~0.1 by step 800). The tokens are random, so
nothing about the corpus is learnt.

What it does not give: figure look-up (find the asked metric's line in a filing and copy its
figure). Runs of random length that force content-based induction did not train at all in 1,200
steps, and neither did look-up sequences in 3,000; that needs far more compute than a demo has.
"""

from __future__ import annotations

from typing import Any

RUN_LENGTH = 12
"""Tokens in each random run."""


def pretrain_copying(model: Any, tokenizer: Any, steps: int = 800, seed: int = 0, batch: int = 16,
                     learning_rate: float = 1e-3) -> list[float]:
    """Train ``model`` in place on copy sequences; returns the loss every 100 steps and at the end."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    first = len(tokenizer.all_special_ids)  # ordinary tokens follow the special ones
    sep = tokenizer.convert_tokens_to_ids("<|im_start|>")
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    model.train()
    losses: list[float] = []
    for step in range(steps):
        run = torch.randint(first, len(tokenizer), (batch, RUN_LENGTH), generator=gen)
        ids = torch.cat([run, torch.full((batch, 1), sep), run], dim=1)
        labels = ids.clone()
        labels[:, : RUN_LENGTH + 1] = -100
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            losses.append(round(loss.item(), 4))
    model.eval()
    return losses


__all__ = ["RUN_LENGTH", "pretrain_copying"]
