"""After a restart: pick up what the last run left in each project's task files.

A trained update the coordinator never acknowledged is sent again (the coordinator answers
an update it already has with its first receipt); a task whose lease is still live is
carried on from its checkpoint; anything else is forgotten.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from app.contributor.client import LeaseLostError, UntrustedError
from app.contributor.projects import Project

__all__ = ["restore_saved_tasks"]

log = logging.getLogger(__name__)


def restore_saved_tasks(projects: Iterable[Project]) -> None:
    """Set each project's ``pending_upload`` or ``resume_task`` from its saved files."""
    for project in projects:
        files = project.files
        try:
            task = files.saved_task()
            if task is not None:
                project.client.verify_signed("task", task.manifest, task.signature)
        except (ValueError, UntrustedError) as exc:
            log.info("forgetting the saved task of %s: %s", project.ref.project, exc)
            files.drop()
            continue
        if task is None:
            files.drop()  # leftovers of a crash between two tasks
            continue
        manifest = files.saved_upload(task.task_id)
        if manifest is not None:
            # Answered with the first receipt if it did arrive before the restart.
            log.info("sending the trained update of task %s again", task.task_id)
            project.pending_upload = (task, manifest)
            continue
        try:
            project.client.heartbeat(task.task_id)
        except LeaseLostError as exc:
            log.info("the saved task of %s is gone (%s)", project.ref.project, exc.code)
            files.drop()
            continue
        except Exception as exc:  # unreachable now: keep the work; heartbeats will tell
            log.info("could not check the saved task of %s: %s", project.ref.project, exc)
        log.info("carrying on with task %s of %s", task.task_id, project.ref.project)
        project.resume_task = task
