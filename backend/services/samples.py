"""Text from a language-model project's current version, for its page and the CLI.

Only for recipes that generate text (``byte-lm``). Samples are deterministic (a fixed seed
per prompt) and computed once per model digest: a page view costs nothing after the first
of each version, so no visitor can make the coordinator generate text on demand.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from backend.services.context import ServiceContext
from backend.store import ProjectRecord
from federated.codec import decode_model

TEXT_RECIPES = frozenset({"byte-lm"})
PAGE_PROMPTS = ("def ", "import ", "class ")
PAGE_SAMPLE_BYTES = 120
MAX_CLI_SAMPLE_BYTES = 4096
_CACHE_LIMIT = 16


@dataclass(frozen=True)
class Sample:
    prompt: str
    text: str  # the continuation, decoded as UTF-8 with replacement characters


_cache: dict[tuple[str, str, int], tuple[Sample, ...]] = {}
_lock = threading.Lock()


def generate_samples(
    ctx: ServiceContext,
    project: ProjectRecord,
    prompts: tuple[str, ...],
    max_bytes: int,
    *,
    version: int | None = None,
    temperature: float = 0.8,
) -> tuple[Sample, ...]:
    """Continuations of ``prompts`` by ``version`` (default: the current one)."""
    from federated.recipes.sampling import generate
    from federated.training import load_state_into

    if project.recipe not in TEXT_RECIPES:
        raise ValueError(f"project {project.name!r} trains {project.recipe}, which writes no text")
    if not 1 <= max_bytes <= MAX_CLI_SAMPLE_BYTES:
        raise ValueError(f"the sample length must be 1 to {MAX_CLI_SAMPLE_BYTES} bytes")
    number = project.current_version if version is None else version
    with ctx.store.read() as tx:
        record = tx.version(project.id, number)
    if record is None:
        raise ValueError(f"project {project.name!r} has no version {number}")
    rt = ctx.runtime(project)
    model = rt.recipe.build_model(rt.hparams)
    load_state_into(model, decode_model(ctx.blobs.read(record.digest), rt.spec))
    return tuple(
        Sample(
            prompt,
            generate(
                model, prompt.encode(), max_bytes, temperature=temperature, top_k=40, seed=i
            ).decode("utf-8", errors="replace"),
        )
        for i, prompt in enumerate(prompts)
    )


def page_samples(ctx: ServiceContext, project: ProjectRecord) -> tuple[Sample, ...]:
    """The page's samples of the current version (none for recipes without text)."""
    if project.recipe not in TEXT_RECIPES:
        return ()
    with ctx.store.read() as tx:
        record = tx.version(project.id, project.current_version)
    if record is None:
        return ()
    key = (project.name, record.digest, PAGE_SAMPLE_BYTES)
    with _lock:  # one generation per version, whoever asks first
        cached = _cache.get(key)
        if cached is None:
            cached = generate_samples(ctx, project, PAGE_PROMPTS, PAGE_SAMPLE_BYTES)
            _cache[key] = cached
            while len(_cache) > _CACHE_LIMIT:
                _cache.pop(next(iter(_cache)))
    return cached
