"""The files of the task in hand for one project, kept so that no work is lost or repeated.

One folder per joined project holds at most one task at a time:

- ``task.json``: the signed lease, written as soon as it arrives (a restart carries on);
- ``<task>.ckpt``: the trainer's checkpoint (a pause or a crash loses little work);
- ``<task>.update``: the encoded update, once trained;
- ``<task>.upload.json``: the manifest about to be signed and sent, written before the first
  try, so an update whose receipt was lost (a cut connection, a restart) is sent again and
  answered with the first receipt instead of being trained anew.

``drop()`` removes all of them, and any left over from an earlier task, at once.
"""

from __future__ import annotations

import json
from pathlib import Path

from app.contributor.client import LeasedTask, remove_quietly, save_json_atomic
from federated import protocol

__all__ = ["TaskFiles"]

_TASK_SUFFIXES = (".ckpt", ".update", ".upload.json")


class TaskFiles:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def task_path(self) -> Path:
        return self.folder / "task.json"

    def checkpoint(self, task_id: str) -> Path:
        return self.folder / f"{task_id}.ckpt"

    def payload(self, task_id: str) -> Path:
        return self.folder / f"{task_id}.update"

    def upload(self, task_id: str) -> Path:
        return self.folder / f"{task_id}.upload.json"

    def save_task(self, task: LeasedTask) -> None:
        save_json_atomic(self.task_path, task.to_json())

    def saved_task(self) -> LeasedTask | None:
        """The saved lease, or None; raises ValueError when the file is unreadable."""
        try:
            saved = json.loads(self.task_path.read_text())
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ValueError(f"cannot read {self.task_path}: {exc}") from None
        if not isinstance(saved, dict) or not isinstance(saved.get("manifest"), dict):
            raise ValueError(f"{self.task_path} does not hold a task")
        return LeasedTask(manifest=saved["manifest"], signature=str(saved.get("signature", "")))

    def save_upload(self, task_id: str, manifest: protocol.UpdateManifest) -> None:
        save_json_atomic(self.upload(task_id), protocol.to_wire(manifest))

    def saved_upload(self, task_id: str) -> protocol.UpdateManifest | None:
        """The manifest of a trained, not yet acknowledged update, if its payload is here."""
        try:
            raw = self.upload(task_id).read_bytes()
            manifest = protocol.decode(raw, protocol.UpdateManifest, what=str(self.upload(task_id)))
        except (OSError, ValueError):  # ProtocolError is a ValueError: a torn or old file
            return None
        if not self.payload(task_id).exists():
            return None
        return manifest

    def saved_task_id(self) -> str:
        try:
            task = self.saved_task()
        except ValueError:
            return ""
        return task.task_id if task is not None else ""

    def drop(self) -> None:
        """Forget the task in hand: its lease, checkpoint, update and upload manifest, and
        any task file an earlier version or crash left behind."""
        if self.folder.is_dir():
            for path in self.folder.iterdir():
                name = path.name
                if name.endswith(_TASK_SUFFIXES) or (name.startswith(".") and ".tmp" in name):
                    remove_quietly(path)
        remove_quietly(self.task_path)
