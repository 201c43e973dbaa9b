"""Render deploy/kubernetes the way `kubectl kustomize` does, for the few features its
kustomizations use (resources, components, namespace, images, configMapGenerator with fixed
names, strategic-merge patches), so the manifests are checked where kubectl is missing. Where
kubectl is there, tests/system/test_deploy.py checks that both render the same objects; a feature
this does not know is refused, never skipped."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]
KNOWN = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "namespace",
    "images",
    "configMapGenerator",
    "patches",
}
# Strategic merge: lists merged item by item on these keys (Kubernetes' patchMergeKey); every
# other list is replaced, as for custom resources, whose patches are JSON merge patches.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
}
BUILT_IN_GROUPS = {"v1", "apps/v1", "batch/v1", "policy/v1", "networking.k8s.io/v1"}


class Unsupported(Exception):
    pass


def render(directory: Path, accumulated: list[Doc] | None = None) -> list[Doc]:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN
    if unknown:
        raise Unsupported(f"{directory}: {sorted(unknown)}")
    docs = list(accumulated or [])
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            docs = render(path, docs)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for entry in spec.get("components", []):
        docs = render(directory / entry, docs)
    for generator in spec.get("configMapGenerator", []):
        docs = _generate(directory, generator, docs)
    for patch in spec.get("patches", []):
        docs = _patch(directory, patch, docs)
    for image in spec.get("images", []):
        for doc in docs:
            _set_image(doc, image)
    if "namespace" in spec:
        for doc in docs:
            doc.setdefault("metadata", {})["namespace"] = spec["namespace"]
    return docs


def _generate(directory: Path, generator: Doc, docs: list[Doc]) -> list[Doc]:
    options = generator.get("options", {})
    if not options.get("disableNameSuffixHash") or set(generator) - {
        "name",
        "files",
        "behavior",
        "options",
    }:
        raise Unsupported(f"configMapGenerator {generator['name']}: fixed names and files only")
    data = {Path(f).name: (directory / f).read_text() for f in generator.get("files", [])}
    made: Doc = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": generator["name"]},
        "data": data,
    }
    if options.get("labels"):
        made["metadata"]["labels"] = dict(options["labels"])
    behavior = generator.get("behavior", "create")
    rest = [
        d for d in docs if (d["kind"], d["metadata"]["name"]) != ("ConfigMap", generator["name"])
    ]
    if behavior == "create" and len(rest) != len(docs):
        raise Unsupported(f"ConfigMap {generator['name']} generated twice")
    if behavior == "replace" and len(rest) == len(docs):
        raise Unsupported(f"ConfigMap {generator['name']}: nothing to replace")
    if behavior not in ("create", "replace"):
        raise Unsupported(f"behavior {behavior}")
    return [*rest, made]


def _patch(directory: Path, entry: Doc, docs: list[Doc]) -> list[Doc]:
    if set(entry) - {"path", "target"}:
        raise Unsupported(f"patch {entry}")
    patch = yaml.safe_load((directory / entry["path"]).read_text())
    target = entry.get("target") or {
        "kind": patch["kind"],
        "name": patch["metadata"]["name"],
    }
    if set(target) - {"kind", "name"}:
        raise Unsupported(f"patch target {target}")
    body = copy.deepcopy(patch)
    for key in ("apiVersion", "kind"):
        body.pop(key, None)
    body.get("metadata", {}).pop("name", None)
    matched = 0
    out = []
    for doc in docs:
        if doc["kind"] == target["kind"] and target.get("name") in (None, doc["metadata"]["name"]):
            matched += 1
            doc = _merge(doc, body, doc["apiVersion"] in BUILT_IN_GROUPS)
        out.append(doc)
    if not matched:
        raise Unsupported(f"patch {entry['path']} matches nothing")
    return out


def _merge(base: Any, patch: Any, strategic: bool, key: str | None = None) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for name, value in patch.items():
            if value is None:
                merged.pop(name, None)
            elif name in merged:
                merged[name] = _merge(merged[name], value, strategic, name)
            else:
                merged[name] = copy.deepcopy(value)
        return merged
    merge_key = MERGE_KEYS.get(key or "") if strategic else None
    if isinstance(base, list) and isinstance(patch, list) and merge_key:
        merged_list = list(base)
        for item in patch:
            at = [i for i, b in enumerate(merged_list) if b.get(merge_key) == item[merge_key]]
            if at:
                merged_list[at[0]] = _merge(merged_list[at[0]], item, strategic)
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


def _set_image(doc: Doc, image: Doc) -> None:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
        name, _, tag = container["image"].partition(":")
        if name == image["name"]:
            new_tag = image.get("newTag", tag)
            container["image"] = image.get("newName", name) + (f":{new_tag}" if new_tag else "")
