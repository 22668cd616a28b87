"""A task's workspace as a filesystem of its own: a sparse ext4 image of `limits.disk` bytes,
loop-mounted nosuid,nodev at the sandbox's folder. A runaway write then fills that image (the
agent gets ENOSPC, the sandbox reports the quota) instead of the host's disk, and nothing the
agent makes there can act as a setuid/setgid file or a device on the host while it runs.

Why a loop mount: on this engine's storage (overlay2 on ext4) Docker's `--storage-opt size=`
is refused (it needs xfs with project quotas) and would not cover a bind mount anyway; a tmpfs
would count against the sandbox's memory. A loop mount needs root (CAP_SYS_ADMIN) and loop
devices: where the executor has neither (a rootless install, an executor in a container), the
folder is a plain one and the quota is not enforced; `available()` says so for `doctor`.

The image keeps blocks in reserve for the group QUOTA_RESERVE_GID, which the agent never has:
once the agent filled its share, the host's hand-back (commit the leftovers, write the bundle)
runs in that group and still has room, so the committed work is saved."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

QUOTA_RESERVE_GID = 65532  # a group no image gives its users; see the module's docstring
BLOCK = 4096
MIN_RESERVE = 8 * 1024**2
MAX_RESERVE = 1024**3
_warned = False


def image_of(folder: Path) -> Path:
    return folder.with_name(folder.name + ".img")


def available() -> str | None:
    """None when quotas can be enforced here, else why not."""
    if os.geteuid() != 0:
        return "the executor is not root, so it cannot loop-mount a workspace filesystem"
    for tool in ("mkfs.ext4", "tune2fs", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path("/dev/loop-control").exists():
        return "this host has no loop devices (/dev/loop-control)"
    return None


def make_folder(folder: Path, size: int) -> bool:
    """Make `folder` (which must not exist), mode 0700 and the host's like a plain mkdir (the
    sandbox gets it with prepare_workspace, once the host has filled it): a mounted
    filesystem of `size` bytes when this host can (True), else a plain folder (False, logged
    once)."""
    global _warned
    folder.mkdir(mode=0o700)
    why = available()
    if why is not None:
        if not _warned:
            _warned = True
            log.warning("workspace disk quotas are not enforced: %s", why)
        return False
    image = image_of(folder)
    reserve = min(max(size // 20, MIN_RESERVE), MAX_RESERVE, size // 4)
    try:
        with image.open("xb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            os.ftruncate(handle.fileno(), size)  # sparse: only what is written takes space
        _run(
            "mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-m", "0", "-O", "^has_journal",
            "-E", f"root_owner={os.geteuid()}:{os.getegid()},lazy_itable_init=1", str(image),
        )  # fmt: skip
        _run("tune2fs", "-r", str(reserve // BLOCK), "-g", str(QUOTA_RESERVE_GID), str(image))
        _run("mount", "-o", "loop,nosuid,nodev,noatime", str(image), str(folder))
        (folder / "lost+found").rmdir()  # the clone wants an empty folder
        folder.chmod(0o700)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("workspace disk quota not set up for %s: %s", folder, exc)
        release(folder)
        folder.mkdir(mode=0o700, exist_ok=True)
        return False
    return True


def release(folder: Path) -> None:
    """Unmount the folder's filesystem (if any) and delete its image; the folder stays, empty.
    Only once no container uses it (a lazy unmount covers one still going away)."""
    if os.path.ismount(folder):
        try:
            _run("umount", str(folder))
        except subprocess.SubprocessError:
            _run("umount", "-l", str(folder))
    image_of(folder).unlink(missing_ok=True)


def is_mounted(folder: Path) -> bool:
    return os.path.ismount(folder)


def full(folder: Path) -> bool:
    """Is the agent's share of the folder's filesystem used up (blocks or inodes)?"""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize < 1024**2 or st.f_favail < 16


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise subprocess.SubprocessError(f"{' '.join(argv)}: {done.stderr.strip()[-300:]}")
