"""Pod volumes on disk: emptyDir directories, hostPath checks, cleanup by node."""

from __future__ import annotations

import asyncio
import os

import pytest

from kybernetes.v1 import pod_pb2
from services.kubelet.volumes import VolumeError, VolumeManager


def _pod(uid: str, *volumes: pod_pb2.Volume, sub_path: str = "") -> pod_pb2.Pod:
    pod = pod_pb2.Pod()
    pod.metadata.uid = uid
    pod.spec.volumes.extend(volumes)
    container = pod.spec.containers.add(name="c", image="busybox")
    for volume in volumes:
        container.volume_mounts.add(name=volume.name, mount_path=f"/{volume.name}", sub_path=sub_path)
    return pod


async def test_empty_dirs_are_made_and_removed_per_node(tmp_path) -> None:
    mine = VolumeManager(str(tmp_path), "node-a")
    theirs = VolumeManager(str(tmp_path), "node-b")
    scratch = pod_pb2.Volume(name="scratch", empty_dir=pod_pb2.EmptyDirVolumeSource())
    paths = await mine.prepare(_pod("uid-1", scratch, sub_path="sub"))
    assert paths == {"scratch": str(tmp_path / "pods" / "uid-1" / "volumes" / "scratch")}
    # subPath made for the bind mount
    assert await asyncio.to_thread(os.path.isdir, os.path.join(paths["scratch"], "sub"))
    await theirs.prepare(_pod("uid-2", scratch))
    os.makedirs(tmp_path / "pods" / "no-marker")
    assert mine.orphaned_pod_dirs(keep=set()) == ["uid-1"]
    assert theirs.orphaned_pod_dirs(keep=set()) == ["uid-2"]
    assert mine.orphaned_pod_dirs(keep={"uid-1"}) == []
    await mine.cleanup("uid-1")
    assert not await asyncio.to_thread(os.path.exists, tmp_path / "pods" / "uid-1")
    assert await asyncio.to_thread(os.path.exists, tmp_path / "pods" / "uid-2")


async def test_host_path_types(tmp_path) -> None:
    volumes = VolumeManager(str(tmp_path / "root"), "n")
    made = tmp_path / "made"

    def host(path: str, kind: str) -> pod_pb2.Volume:
        return pod_pb2.Volume(name="h", host_path=pod_pb2.HostPathVolumeSource(path=path, type=kind))

    assert (await volumes.prepare(_pod("u", host(str(made), "DirectoryOrCreate"))))["h"] == str(made)
    assert made.is_dir()
    with pytest.raises(VolumeError, match="is not a file"):
        await volumes.prepare(_pod("u", host(str(made), "File")))
    with pytest.raises(VolumeError, match="does not exist"):
        await volumes.prepare(_pod("u", host(str(tmp_path / "absent"), "Directory")))
    with pytest.raises(VolumeError, match="unknown type"):
        await volumes.prepare(_pod("u", host(str(made), "Weird")))
    await volumes.prepare(_pod("u", host(str(tmp_path / "file"), "FileOrCreate")))
    assert (tmp_path / "file").is_file()
