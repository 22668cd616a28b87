"""Storage errors. All carry a message fit to show a person.

    StorageError
    ├── TaskNotFound   no task with that id
    ├── Conflict       the task changed under us (another worker or person got there first)
    └── SchemaTooNew   the database was migrated by a newer nightcrew than this one

`storage.lifecycle.IllegalTransition` is raised for moves the lifecycle forbids.
"""

from __future__ import annotations


class StorageError(Exception):
    pass


class TaskNotFound(StorageError):
    def __init__(self, task_id: int) -> None:
        super().__init__(f"no task {task_id}")
        self.task_id = task_id


class Conflict(StorageError):
    pass


class SchemaTooNew(StorageError):
    def __init__(self, revision: str, head: str) -> None:
        super().__init__(
            f"the database schema is at revision {revision}, which this nightcrew does not "
            f"know (it knows up to {head}): a newer nightcrew migrated it; upgrade this one"
        )
        self.revision = revision
