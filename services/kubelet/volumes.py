"""Pod volumes on the node: emptyDir directories under the kubelet's root dir
(tmpfs for medium Memory), removed with the pod, and hostPath checks.

Layout: <root-dir>/pods/<pod uid>/volumes/<volume name>, and
<root-dir>/pods/<pod uid>/node naming the node that made it: a kubelet removes
only the pod directories of its own node, even if a root dir is shared.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import shutil
import stat
import subprocess

from kybernetes.v1 import pod_pb2
from services.common.log import get_logger
from services.common.quantity import parse_memory_bytes

log = get_logger(module="kubelet.volumes")


class VolumeError(Exception):
    """A volume cannot be set up (a hostPath of the wrong type, a failed mount)."""


NODE_MARKER = "node"


class VolumeManager:
    def __init__(self, root_dir: str, node: str) -> None:
        self.root_dir = root_dir
        self.node = node
        self.pods_dir = os.path.join(root_dir, "pods")

    def pod_dir(self, uid: str) -> str:
        return os.path.join(self.pods_dir, uid)

    def volume_dir(self, uid: str, name: str) -> str:
        return os.path.join(self.pod_dir(uid), "volumes", name)

    async def prepare(self, pod: pod_pb2.Pod) -> dict[str, str]:
        """Creates the pod's volumes; the host path of each volume by name."""
        return await asyncio.to_thread(self._prepare, pod)

    def _prepare(self, pod: pod_pb2.Pod) -> dict[str, str]:
        pod_dir = self.pod_dir(pod.metadata.uid)
        marker = os.path.join(pod_dir, NODE_MARKER)
        if not os.path.exists(marker):
            os.makedirs(pod_dir, exist_ok=True)
            with open(marker, "w", encoding="utf-8") as handle:
                handle.write(self.node)
        paths: dict[str, str] = {}
        for volume in pod.spec.volumes:
            if volume.HasField("host_path"):
                paths[volume.name] = self._host_path(volume)
            else:  # emptyDir, also when no source is given (as Kubernetes defaults it)
                paths[volume.name] = self._empty_dir(pod.metadata.uid, volume)
        # Docker bind-mounts only what exists: make the subPath directories.
        for container in pod.spec.containers:
            for mount in container.volume_mounts:
                if mount.sub_path and mount.name in paths:
                    sub_path = posixpath.normpath(mount.sub_path)
                    if sub_path.startswith(("/", "..")):
                        continue  # refused with a clear error when the container is made
                    target = os.path.join(paths[mount.name], sub_path)
                    if not os.path.exists(target):
                        os.makedirs(target, exist_ok=True)
        return paths

    def _empty_dir(self, uid: str, volume: pod_pb2.Volume) -> str:
        path = self.volume_dir(uid, volume.name)
        os.makedirs(path, exist_ok=True)
        # World-writable like Kubernetes' emptyDir, so a non-root container can use it.
        os.chmod(path, 0o777)
        if volume.empty_dir.medium == "Memory" and not os.path.ismount(path):
            options = "mode=0777"
            if volume.empty_dir.size_limit:
                try:
                    options += f",size={parse_memory_bytes(volume.empty_dir.size_limit)}"
                except ValueError as error:
                    raise VolumeError(f"volume {volume.name!r}: emptyDir.sizeLimit: {error}") from None
            result = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], capture_output=True, text=True
            )
            if result.returncode != 0:
                raise VolumeError(f"volume {volume.name!r}: mounting tmpfs: {result.stderr.strip()}")
        return path

    def _host_path(self, volume: pod_pb2.Volume) -> str:
        path = volume.host_path.path
        kind = volume.host_path.type
        where = f"volume {volume.name!r}: hostPath {path!r}"
        if not path.startswith("/"):
            raise VolumeError(f"{where}: must be an absolute path")
        if kind == "DirectoryOrCreate":
            os.makedirs(path, mode=0o755, exist_ok=True)
        elif kind == "FileOrCreate":
            if not os.path.exists(path):
                if not os.path.isdir(os.path.dirname(path)):
                    raise VolumeError(f"{where}: the parent directory does not exist")
                open(path, "a").close()
        checks = {
            "Directory": (stat.S_ISDIR, "a directory"),
            "DirectoryOrCreate": (stat.S_ISDIR, "a directory"),
            "File": (stat.S_ISREG, "a file"),
            "FileOrCreate": (stat.S_ISREG, "a file"),
            "Socket": (stat.S_ISSOCK, "a socket"),
            "CharDevice": (stat.S_ISCHR, "a character device"),
            "BlockDevice": (stat.S_ISBLK, "a block device"),
        }
        if kind in checks:
            test, what = checks[kind]
            try:
                mode = os.stat(path).st_mode
            except FileNotFoundError:
                raise VolumeError(f"{where}: does not exist (type {kind})") from None
            if not test(mode):
                raise VolumeError(f"{where}: is not {what} (type {kind})")
        elif kind:
            raise VolumeError(f"{where}: unknown type {kind!r}")
        return path

    async def cleanup(self, uid: str) -> None:
        """Removes the pod's directory, unmounting its tmpfs volumes first."""
        await asyncio.to_thread(self._cleanup, uid)

    def _cleanup(self, uid: str) -> None:
        pod_dir = self.pod_dir(uid)
        volumes = os.path.join(pod_dir, "volumes")
        if os.path.isdir(volumes):
            for name in os.listdir(volumes):
                path = os.path.join(volumes, name)
                if os.path.ismount(path):
                    result = subprocess.run(["umount", path], capture_output=True, text=True)
                    if result.returncode != 0:
                        log.warning("volume_unmount_failed", path=path, error=result.stderr.strip())
                        return  # never delete through a mount
        shutil.rmtree(pod_dir, ignore_errors=True)

    def orphaned_pod_dirs(self, keep: set[str]) -> list[str]:
        """The pod directories this node made, but for those of the pods in `keep`. Only the
        others' markers are read: at every resync each node lists its pods, and reading a file
        per running pod there cost a kubelet with many pods more than the rest of the resync."""
        try:
            names = os.listdir(self.pods_dir)
        except FileNotFoundError:
            return []
        uids = []
        for name in names:
            if name in keep:
                continue
            try:
                with open(os.path.join(self.pods_dir, name, NODE_MARKER), encoding="utf-8") as handle:
                    if handle.read() == self.node:
                        uids.append(name)
            except OSError:
                continue  # not provably ours: left alone
        return uids
