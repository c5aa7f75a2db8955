"""Text from a byte-level language model: what the coordinator shows of a model version.

Sampling is deterministic under a seed (its own generator, never the global one) and
bounded: the continuation is at most MAX_NEW_BYTES long and the model only ever sees its
last ``context`` bytes.
"""

from __future__ import annotations

import torch
from torch import nn

from federated.recipes.transformer import BYTE_VOCAB, MAX_CONTEXT

MAX_NEW_BYTES = 4096
"""The longest continuation one call produces (one forward pass per byte)."""
START_BYTE = b"\n"
"""What an empty prompt is read as: the model has seen many lines start after a newline."""


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: bytes,
    max_new: int,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    *,
    context: int = 256,
) -> bytes:
    """The ``max_new`` bytes ``model`` continues ``prompt`` with (the prompt not included).

    ``temperature`` 0 picks the most likely byte every time; above 0 it scales the logits
    before sampling. ``top_k`` > 0 samples among the k most likely bytes only. ``context``
    is how many of the latest bytes the model sees (at most MAX_CONTEXT). The same model,
    arguments and seed give the same bytes on the same machine.
    """
    if not 0 <= max_new <= MAX_NEW_BYTES:
        raise ValueError(f"max_new must be in [0, {MAX_NEW_BYTES}], got {max_new}")
    if not 0.0 <= temperature <= 100.0 or temperature != temperature:
        raise ValueError(f"temperature must be in [0, 100], got {temperature}")
    if not 0 <= top_k <= BYTE_VOCAB:
        raise ValueError(f"top_k must be in [0, {BYTE_VOCAB}], got {top_k}")
    if not 1 <= context <= MAX_CONTEXT:
        raise ValueError(f"context must be in [1, {MAX_CONTEXT}], got {context}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(int(seed))
    tokens = list(prompt[-context:] or START_BYTE)
    out = bytearray()
    for _ in range(max_new):
        window = torch.tensor([tokens[-context:]], dtype=torch.int64, device=device)
        logits = model(window)[0, -1].float()
        if temperature == 0.0:
            chosen = int(logits.argmax())
        else:
            logits = logits / temperature
            if 0 < top_k < logits.numel():
                cutoff = torch.topk(logits, top_k).values[-1]
                logits = logits.masked_fill(logits < cutoff, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            chosen = int(torch.multinomial(probs, 1, generator=generator))
        tokens.append(chosen)
        out.append(chosen)
    model.train(was_training)
    return bytes(out)


__all__ = ["MAX_NEW_BYTES", "generate"]
