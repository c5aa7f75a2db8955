"""Projects: create one (its version 0 and signing key), list, look up, change status, and
the protocol's ``Project`` view of one."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch

from backend.services import finishing, privacy
from backend.services.context import ServiceContext
from backend.services.models import evaluate_state, model_manifest, save_tensors, sign_model
from backend.settings import ProjectSettings, metric_target
from backend.store import ProjectRecord, VersionRecord
from federated import protocol
from federated.codec import canonical_codec, encode_model
from federated.protocol.messages import DataColumns, Mode, Status
from federated.recipes import Recipe, get_recipe
from federated.signing import fingerprint
from federated.strategies import build_strategy

log = logging.getLogger(__name__)


class ProjectService:
    """Organiser operations on projects, and the public view of one."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    def create_project(
        self,
        name: str,
        *,
        recipe: str,
        strategy: str = "fedavg",
        strategy_params: Mapping[str, Any] | None = None,
        hparams: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
        description: str = "",
        warn: Callable[[str], None] | None = None,
    ) -> ProjectRecord:
        """Create a project with its seeded version 0 and its signing key.

        Raises ValueError (RecipeError included) naming what is wrong; ``warn`` hears of
        what would work but not pay off (privacy noise that would swamp the updates).
        """
        ctx = self._ctx
        if not protocol.is_project_name(name):
            raise ValueError(f"{name!r} is not a project name: use a-z, 0-9 and '-', at most 63")
        recipe_obj = get_recipe(recipe)
        project_settings = ProjectSettings.from_dict(dict(settings or {}))
        # A codec no contributor can encode fails every task for ever: refuse it now (here,
        # not in validate(), so a project stored before this check still loads).
        canonical_codec(project_settings.codec)  # ValueError listing the accepted codecs
        strategy_obj = build_strategy(strategy, dict(strategy_params or {}))
        smallest = (
            project_settings.min_updates
            if project_settings.mode == "sync"
            else project_settings.buffer_size
        )
        try:
            strategy_obj.check_round_size(smallest)
        except ValueError as exc:
            setting = "min_updates" if project_settings.mode == "sync" else "buffer_size"
            raise ValueError(f"{exc}; raise {setting} or choose another strategy") from None
        # The strategy's own task settings (FedProx's μ) are part of every task.
        resolved = recipe_obj.resolve_hparams({**(hparams or {}), **strategy_obj.client_hparams()})
        strategy_desc = {"name": strategy, "params": dict(strategy_params or {})}
        with ctx.store.read() as tx:
            if tx.project_by_name(name) is not None:
                raise ValueError(f"project {name!r} already exists")
        shard_sizes: list[int] | None = None
        if recipe_obj.data_mode == "builtin":
            shard_sizes = [
                len(recipe_obj.load_shard(resolved, i)) for i in range(int(resolved["num_shards"]))
            ]
        state = recipe_obj.initial_state(resolved)
        num_parameters = sum(int(t.numel()) for t in state.values())
        for warning in privacy.check_new_project(
            project_settings, recipe_obj, resolved, strategy_obj, num_parameters
        ):
            log.warning("project %s: %s", name, warning)
            if warn is not None:
                warn(warning)
        metrics = _evaluate_initial(recipe_obj, resolved, state)
        check_end(project_settings, metrics, ctx.clock())
        digest = ctx.blobs.put(encode_model(state))
        if project_settings.privacy == "dp-fedavg":  # its state carries the adapted clip
            strategy_obj = privacy.wrap(
                strategy_obj, project_settings, project_settings.dp_clip_norm
            )
        state_tensors = strategy_obj.state_tensors()
        state_digest = ctx.blobs.put(save_tensors(state_tensors)) if state_tensors else None
        key = ctx.keys.create(name)
        now = ctx.clock()
        record = ProjectRecord(
            id=0,
            name=name,
            description=description or recipe_obj.description,
            recipe=recipe,
            recipe_version=int(recipe_obj.version),
            hparams=dict(resolved),
            strategy=strategy_desc,
            settings=project_settings.to_dict(),
            status="open",
            current_version=0,
            public_key=key.public_key_b64,
            created_at=now,
            shard_sizes=shard_sizes,
        )
        manifest = model_manifest(name, 0, digest, now, strategy_state_digest=state_digest)
        with ctx.store.write() as wtx:
            project_id = wtx.insert_project(record)
            wtx.insert_version(
                VersionRecord(
                    project_id=project_id,
                    version=0,
                    digest=digest,
                    created_at=now,
                    signature=sign_model(key, manifest),
                    metrics=metrics,
                    strategy_state_digest=state_digest,
                    updates_root=manifest.updates_root,
                )
            )
        return ctx.project(name)

    def set_status(self, name: str, status: str) -> ProjectRecord:
        """Open, pause or close; a closed project stays closed, a finished one may only
        be closed (``finish`` finishes one)."""
        if status not in ("open", "paused", "closed"):
            raise ValueError(f"status must be open, paused or closed, got {status!r}")
        ctx = self._ctx
        project = ctx.project(name)
        with ctx.store.write() as tx:
            fresh = tx.project_by_id(project.id)
            current = fresh.status if fresh else project.status
            if current == "closed" and status != "closed":
                raise ValueError(f"project {name!r} is closed for good: it cannot be {status}")
            if current == finishing.FINISHED and status != "closed":
                raise ValueError(
                    f"project {name!r} has finished: its model is final; it can only be closed"
                )
            tx.set_project_status(project.id, status)
        ctx.notifier.notify(name)
        ctx.wake_worker()
        return ctx.project(name)

    def finish(self, name: str, reason: str) -> ProjectRecord:
        """The organiser's finish: ValueError if the project has ended already."""
        ctx = self._ctx
        project = ctx.project(name)
        why = reason.strip() or "finished by its organiser"
        if not finishing.finish(ctx, project, why, ctx.notifier.notify):
            raise ValueError(f"project {name!r} has ended already ({ctx.project(name).status})")
        ctx.wake_worker()
        return ctx.project(name)

    def project_view(self, project: ProjectRecord) -> protocol.Project:
        """The protocol's ``Project`` message."""
        settings = ProjectSettings.from_dict(project.settings)
        with self._ctx.store.read() as tx:
            version = tx.version(project.id, project.current_version)
            privacy_spent = privacy.spent(tx, project, settings)
        data_columns = None
        if project.recipe == "tabular-csv":
            label = project.hparams.get("label_column")
            data_columns = DataColumns(
                label=None if label is None else str(label),
                features=[
                    c for c in str(project.hparams.get("feature_columns", "")).split(",") if c
                ],
            )
        return protocol.Project(
            name=project.name,
            description=project.description,
            recipe=project.recipe,
            recipe_version=project.recipe_version,
            hparams=project.hparams,
            data_mode=get_recipe(project.recipe).data_mode,
            data_columns=data_columns,
            strategy={"name": project.strategy["name"], **project.strategy.get("params", {})},
            mode=cast(Mode, settings.mode),
            status=cast(Status, project.status),
            current_version=project.current_version,
            model_digest=version.digest if version else None,
            public_key=project.public_key,
            key_fingerprint=fingerprint(project.public_key),
            invite_required=settings.invite_required,
            codec=settings.codec,
            page_url=f"/p/{project.name}",
            privacy=privacy.terms(settings),
            privacy_spent=privacy_spent,
        )

    def project_list(self) -> protocol.ProjectList:
        """The protocol's ``ProjectList``: a summary of every project."""
        return protocol.ProjectList(
            projects=[summary(self.project_view(p)) for p in self._ctx.projects()]
        )


def summary(view: protocol.Project) -> protocol.ProjectSummary:
    """The ``ProjectSummary`` of a project's view (its fields, no more)."""
    return protocol.ProjectSummary(
        name=view.name,
        description=view.description,
        recipe=view.recipe,
        mode=view.mode,
        status=view.status,
        current_version=view.current_version,
        invite_required=view.invite_required,
        page_url=view.page_url,
        data_mode=view.data_mode,
        privacy=view.privacy.mechanism if view.privacy else None,
    )


def _evaluate_initial(
    recipe: Recipe, hparams: Mapping[str, Any], state: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    test = recipe.load_test(hparams)
    if test is None:
        return {}
    return evaluate_state(recipe, hparams, state, test)


def check_end(settings: ProjectSettings, metrics: Mapping[str, Any], now: float) -> None:
    """A declared end that can never be reached, or is reached already, is a typo."""
    target = metric_target(settings.finish_at_metric)
    if target is not None and target[0] not in metrics:
        known = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, int | float)))
        raise ValueError(
            f"finish_at_metric names {target[0]!r}, which this recipe does not measure on "
            f"held-out data; it measures: {known or 'nothing'}"
        )
    end = settings.finish_at_s
    if end is not None and end <= now:
        raise ValueError(f"finish_at {settings.finish_at} is not in the future")
