"""The API calls the test node makes, on plain JSON dicts (the shape the API server serves)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import kubernetes
from kubernetes.client.exceptions import ApiException

MERGE_PATCH = "application/merge-patch+json"


def _json(response) -> dict:
    return json.loads(response.data)


class NodeApi:
    """Raw-JSON wrappers over the official client's CoreV1Api."""

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self.client = api_client
        self.core = kubernetes.client.CoreV1Api(api_client)

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        """A configmap, secret or pvc as served, or None when it does not exist."""
        read = {
            "configmap": self.core.read_namespaced_config_map,
            "secret": self.core.read_namespaced_secret,
            "pvc": self.core.read_namespaced_persistent_volume_claim,
        }[kind]
        try:
            return _json(read(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_pods(self) -> tuple[list[dict], str]:
        body = _json(self.core.list_pod_for_all_namespaces(_preload_content=False))
        return body["items"], body["metadata"]["resourceVersion"]

    def watch_pods(self, resource_version: str, timeout: int) -> Iterator[dict]:
        """Pod events ({"type", "object"}) from `resource_version` for up to `timeout` s."""
        watch = kubernetes.watch.Watch()
        self._watch = watch
        yield from watch.stream(
            self.core.list_pod_for_all_namespaces,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _request_timeout=timeout + 10,
            deserialize=False,
        )

    def stop_watch(self) -> None:
        """End a running watch_pods stream now (from another thread)."""
        watch = getattr(self, "_watch", None)
        if watch is None:
            return
        watch.stop()
        response = getattr(watch, "_resp", None)  # the stream blocks reading it
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()

    def patch_pod_status(self, namespace: str, name: str, status: dict) -> None:
        self.core.patch_namespaced_pod_status(
            name,
            namespace,
            body={"status": status},
            _content_type=MERGE_PATCH,
            _preload_content=False,
        )

    def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        self.core.create_namespaced_pod_binding(name, namespace, body, _preload_content=False)

    def delete_pod_now(self, namespace: str, name: str, uid: str) -> None:
        """Delete with grace 0, as a kubelet does once the containers are gone."""
        try:
            self.core.delete_namespaced_pod(
                name,
                namespace,
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def delete_pods(self, namespace: str) -> None:
        self.core.delete_collection_namespaced_pod(namespace, _preload_content=False)

    def register_node(self, node: dict) -> None:
        name = node["metadata"]["name"]
        try:
            self.core.create_node(node, _preload_content=False)
        except ApiException as exc:
            if exc.status != 409:
                raise
            self.core.patch_node(name, {"metadata": node["metadata"]}, _content_type=MERGE_PATCH)
        # Admission adds a not-ready taint to new nodes; a kubelet's node controller would
        # lift it once Ready. This cluster runs no such controller.
        self.core.patch_node(
            name, {"spec": {"taints": None}}, _content_type=MERGE_PATCH, _preload_content=False
        )
        self.patch_node_status(name, node["status"])

    def patch_node_status(self, name: str, status: dict) -> None:
        self.core.patch_node_status(
            name, {"status": status}, _content_type=MERGE_PATCH, _preload_content=False
        )

    def delete_node(self, name: str) -> None:
        try:
            self.core.delete_node(name, _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise
