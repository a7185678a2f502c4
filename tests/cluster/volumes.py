"""Pod volumes on the test node: host folders for each volume and the bind mounts of a container."""

from __future__ import annotations

import base64
import contextlib
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .podspec import ContainerConfigError, ObjectGetter, expand, field_value, resource_value

DEFAULT_FILE_MODE = 0o644


class VolumeNotReady(Exception):
    """A volume cannot be set up yet; the pod waits in ContainerCreating (kubelet: FailedMount)."""


@dataclass(frozen=True)
class VolumeSource:
    """Where a pod volume lives on the host."""

    path: Path
    read_only: bool = False


@dataclass(frozen=True)
class Mount:
    """One bind mount inside a container's mount namespace."""

    source: str
    target: str
    read_only: bool
    is_file: bool


def _write_files(directory: Path, files: Mapping[str, tuple[bytes, int]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for relative, (content, mode) in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)


def _object_files(obj: dict, kind: str, source: dict) -> dict[str, tuple[bytes, int]]:
    """Files of a configMap/secret volume (or projection), honouring `items` and modes."""
    data: dict[str, bytes] = {}
    for key, value in (obj.get("data") or {}).items():
        data[key] = base64.b64decode(value) if kind == "secret" else value.encode()
    for key, value in (obj.get("binaryData") or {}).items():
        data[key] = base64.b64decode(value)
    default_mode = source.get("defaultMode", DEFAULT_FILE_MODE)
    items = source.get("items")
    if not items:
        return {key: (value, default_mode) for key, value in data.items()}
    files = {}
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise VolumeNotReady(f"configuration key {item['key']!r} not found in {kind}")
        files[item["path"]] = (data[item["key"]], item.get("mode", default_mode))
    return files


def _referenced_files(
    namespace: str, kind: str, source: dict, get: ObjectGetter
) -> dict[str, tuple[bytes, int]]:
    name = source.get("secretName") or source.get("name", "")
    obj = get(kind, namespace, name)
    if obj is None:
        if source.get("optional"):
            return {}
        raise VolumeNotReady(f'{kind} "{name}" not found')
    return _object_files(obj, kind, source)


def _downward_files(pod: dict, source: dict) -> dict[str, tuple[bytes, int]]:
    default_mode = source.get("defaultMode", DEFAULT_FILE_MODE)
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    files = {}
    for item in source.get("items") or []:
        try:
            if "fieldRef" in item:
                value = field_value(pod, item["fieldRef"]["fieldPath"])
            else:
                ref = item["resourceFieldRef"]
                value = resource_value(containers[ref.get("containerName", "")], ref)
        except (ContainerConfigError, KeyError) as exc:
            raise VolumeNotReady(f"downwardAPI item {item.get('path')}: {exc}") from exc
        files[item["path"]] = (value.encode(), item.get("mode", default_mode))
    return files


def _projected_files(pod: dict, source: dict, get: ObjectGetter) -> dict[str, tuple[bytes, int]]:
    namespace = pod["metadata"]["namespace"]
    files: dict[str, tuple[bytes, int]] = {}
    for part in source.get("sources") or []:
        part_source = {"defaultMode": source.get("defaultMode", DEFAULT_FILE_MODE)}
        if "secret" in part:
            files.update(
                _referenced_files(namespace, "secret", {**part_source, **part["secret"]}, get)
            )
        elif "configMap" in part:
            files.update(
                _referenced_files(namespace, "configmap", {**part_source, **part["configMap"]}, get)
            )
        elif "downwardAPI" in part:
            files.update(_downward_files(pod, {**part_source, **part["downwardAPI"]}))
        else:
            raise VolumeNotReady(
                f"projected source {sorted(part)} is not supported by the test node"
            )
    return files


def prepare_volumes(
    pod: dict, pod_dir: Path, claims_root: Path, get: ObjectGetter
) -> dict[str, VolumeSource]:
    """Create a host folder for every pod volume; raise VolumeNotReady when one cannot be yet."""
    namespace = pod["metadata"]["namespace"]
    volumes: dict[str, VolumeSource] = {}
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        local = pod_dir / "volumes" / name
        if "emptyDir" in volume:
            local.mkdir(parents=True, exist_ok=True)
            volumes[name] = VolumeSource(local)
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]
            if get("pvc", namespace, claim["claimName"]) is None:
                raise VolumeNotReady(f'persistentvolumeclaim "{claim["claimName"]}" not found')
            path = claim_path(claims_root, namespace, claim["claimName"])
            path.mkdir(parents=True, exist_ok=True)
            volumes[name] = VolumeSource(path, bool(claim.get("readOnly")))
        elif "configMap" in volume:
            _write_files(local, _referenced_files(namespace, "configmap", volume["configMap"], get))
            volumes[name] = VolumeSource(local, read_only=True)
        elif "secret" in volume:
            _write_files(local, _referenced_files(namespace, "secret", volume["secret"], get))
            volumes[name] = VolumeSource(local, read_only=True)
        elif "downwardAPI" in volume:
            _write_files(local, _downward_files(pod, volume["downwardAPI"]))
            volumes[name] = VolumeSource(local, read_only=True)
        elif "projected" in volume:
            _write_files(local, _projected_files(pod, volume["projected"], get))
            volumes[name] = VolumeSource(local, read_only=True)
        elif "hostPath" in volume:
            path = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type") == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            volumes[name] = VolumeSource(path)
        else:
            kinds = sorted(set(volume) - {"name"})
            raise VolumeNotReady(f"volume {name}: type {kinds} is not supported by the test node")
    return volumes


def claim_path(claims_root: Path, namespace: str, claim: str) -> Path:
    """Host folder that stands for a PersistentVolumeClaim's volume."""
    return claims_root / namespace / claim


def container_mounts(
    container: dict,
    volumes: Mapping[str, VolumeSource],
    env: Mapping[str, str],
    termination_file: Path,
) -> list[Mount]:
    """Bind mounts for a container: its volumeMounts plus its termination-message file."""
    mounts = []
    for spec in container.get("volumeMounts") or []:
        volume = volumes[spec["name"]]
        sub_path = spec.get("subPath") or expand(spec.get("subPathExpr", ""), env)
        source = volume.path / sub_path if sub_path else volume.path
        if not source.exists():
            # The kubelet creates a missing subPath as a folder inside the volume.
            source.mkdir(parents=True, exist_ok=True)
        read_only = bool(spec.get("readOnly")) or volume.read_only
        mounts.append(Mount(str(source), spec["mountPath"], read_only, source.is_file()))
    message_path = container.get("terminationMessagePath") or "/dev/termination-log"
    termination_file.touch()
    mounts.append(Mount(str(termination_file), message_path, False, True))
    # Parents before children, so a mount inside another volume lands in that volume.
    return sorted(mounts, key=lambda m: len(PurePosixPath(m.target).parts))


class MountPoints:
    """Missing mount points created on the host, shared by all pods, removed once unused.

    A mount point removed on the host while another pod's namespace still mounts on it
    would detach that mount, so creations are reference-counted across pods.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[Path, int] = {}

    def acquire(self, targets: Iterable[tuple[str, bool]]) -> list[Path]:
        """Create what is missing of each (path, is_file); return the paths held for release."""
        held: list[Path] = []
        with self._lock:
            try:
                for target, is_file in targets:
                    self._acquire_one(Path(target), is_file, held)
            except OSError:
                self._release_locked(held)
                raise
        return held

    def _acquire_one(self, target: Path, is_file: bool, held: list[Path]) -> None:
        chain = [*reversed(target.parents), target]
        for path in chain[1:]:
            if path in self._refs:
                self._refs[path] += 1
                held.append(path)
            elif not path.exists() and not path.is_symlink():
                if path == target and is_file:
                    path.touch()
                else:
                    path.mkdir()
                self._refs[path] = 1
                held.append(path)

    def release(self, held: list[Path]) -> None:
        with self._lock:
            self._release_locked(held)

    def _release_locked(self, held: list[Path]) -> None:
        for path in reversed(held):
            self._refs[path] -= 1
            if self._refs[path] > 0:
                continue
            del self._refs[path]
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                elif os.path.getsize(path) == 0:
                    path.unlink()
