"""Offline checks of k8s/: KubeRay objects against the pinned CRDs, kustomize wiring, and secrets.

The Ray objects (RayCluster, RayJob, RayCronJob) are validated against the openAPIV3Schema of the
pinned KubeRay v1.7.0 CRDs that the repository vendors in ``k8s/crds/`` (``NEURONSCAN_KUBERAY_CRDS``
names another folder to check against instead), made strict: an unknown field anywhere is an error,
as it would be for ``kubectl apply --validate=strict``. The vendored files are checked to be
KubeRay v1.7.0's own, byte for byte, and to stay out of every kustomization. Each kustomize target
(base and overlays) is composed by a small builder that understands exactly the kustomize features
k8s/ uses (resources, JSON 6902 and ``$patch: delete`` patches, ConfigMap generators, namespace,
images); the built objects are checked for what the operator and the audit need: resolved images,
existing references, a config that fits the cluster, entrypoints that survive KubeRay's submitter
shell, and nightly runs that cannot overlap.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "k8s"
TARGETS = ["base", "overlays/nightly", "overlays/cronjob-fallback", "overlays/dev"]
RAY_KINDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayCronJob": "raycronjobs"}
# Placeholders that a kustomization's `images:` must replace before anything is applied.
PLACEHOLDER_IMAGES = {"neuronscan", "kubectl"}
NIGHTLY_KINDS = ("RayCronJob", "RayJob template")
# The CRDs the tests validate against, vendored unchanged from KubeRay v1.7.0 (k8s/crds/README.md).
# Not manifests: no kustomization reads them; on a cluster the operator's Helm chart installs the CRDs.
VENDORED_CRDS = K8S / "crds"
# Git blob ids of the upstream files at tag v1.7.0: `git ls-tree v1.7.0 LICENSE ray-operator/config/crd/bases/`
# in a KubeRay checkout. A refresh replaces the files and these ids together.
KUBERAY_VERSION = "v1.7.0"
KUBERAY_BLOBS = {
    "LICENSE": "1dcfa84a3fb6aae76a0fb0890ba330d3296c913d",
    "ray.io_rayclusters.yaml": "ff0be58ada3bd457605eff1f258c16df21e61e21",
    "ray.io_rayjobs.yaml": "c7d3f081af8cf08c256a8c33a0c3b6ea28b816a0",
    "ray.io_raycronjobs.yaml": "bc8375d655b433333d8be5848e9caf28e0576b7b",
}

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _docs(path: Path) -> list[Any]:
    """Every non-empty YAML document of a file."""
    return [d for d in yaml.load_all(path.read_text(), Loader=_Loader) if d is not None]


def _crd_dir() -> Path:
    override = os.environ.get("NEURONSCAN_KUBERAY_CRDS")
    return Path(override) if override else VENDORED_CRDS


@cache
def _crd_schemas() -> dict[str, dict]:
    """Kind -> openAPIV3Schema of the ray.io/v1 version of the pinned CRD."""
    folder = _crd_dir()
    schemas = {}
    for kind, plural in RAY_KINDS.items():
        path = folder / f"ray.io_{plural}.yaml"
        if not path.is_file():
            where = "NEURONSCAN_KUBERAY_CRDS" if os.environ.get("NEURONSCAN_KUBERAY_CRDS") else "k8s/crds/"
            pytest.fail(
                f"pinned KubeRay CRD {path} not found in {where}: the repository vendors ray.io_{{rayclusters,"
                f"rayjobs,raycronjobs}}.yaml of KubeRay {KUBERAY_VERSION} in k8s/crds/ (k8s/crds/README.md says "
                f"how to restore or refresh them)."
            )
        (crd,) = _docs(path)
        assert crd["spec"]["names"]["kind"] == kind, f"{path} defines {crd['spec']['names']['kind']}, not {kind}"
        versions = {v["name"]: v for v in crd["spec"]["versions"]}
        assert "v1" in versions, f"{path} has no v1 version (has {sorted(versions)})"
        schemas[kind] = versions["v1"]["schema"]["openAPIV3Schema"]
    return schemas


# ---------------------------------------------------------------------------------------------
# Strict structural schemas
# ---------------------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """Copy of an OpenAPI v3 CRD schema that jsonschema can check as the API server would, but strict.

    Every object schema that lists ``properties`` and neither sets ``additionalProperties`` nor
    ``x-kubernetes-preserve-unknown-fields: true`` gets ``additionalProperties: false``;
    ``x-kubernetes-int-or-string`` accepts an int or a string; ``nullable`` admits null; an
    ``x-kubernetes-embedded-resource`` object may carry apiVersion, kind and metadata.
    """
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = _strict(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = _strict(value)
        else:
            out[key] = value
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out and "type" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    preserve = out.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("int32")
def _int32(value: Any) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@_FORMATS.checks("int64")
def _int64(value: Any) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


@cache
def _validator(kind: str, *path: str) -> jsonschema.Draft7Validator:
    """Strict validator for a Ray kind's schema, or for the sub-schema at a property path."""
    schema = _crd_schemas()[kind]
    for name in path:
        schema = schema["properties"][name]
    return jsonschema.Draft7Validator(_strict(schema), format_checker=_FORMATS)


def _schema_errors(validator: jsonschema.Draft7Validator, obj: Any) -> list[str]:
    errors = sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]


# Core kinds: the parts k8s/ uses, strictly; anything else must be added here deliberately.
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": _STR_MAP,
        "annotations": _STR_MAP,
    },
}


def _obj(props: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "additionalProperties": False, "properties": props, "required": required or []}


def _core(api_version: str, kind: str, props: dict, required: list[str]) -> dict:
    base = {"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": _META}
    return _obj({**base, **props}, ["apiVersion", "kind", "metadata", *required])


_STR_LIST = {"type": "array", "items": {"type": "string"}, "minItems": 1}
CORE_SCHEMAS = {
    "ConfigMap": _core("v1", "ConfigMap", {"data": _STR_MAP}, ["data"]),
    "ServiceAccount": _core("v1", "ServiceAccount", {"automountServiceAccountToken": {"type": "boolean"}}, []),
    "Role": _core(
        "rbac.authorization.k8s.io/v1",
        "Role",
        {
            "rules": {
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    {
                        "apiGroups": _STR_LIST,
                        "resources": _STR_LIST,
                        "resourceNames": _STR_LIST,
                        "verbs": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "enum": [
                                    "get",
                                    "list",
                                    "watch",
                                    "create",
                                    "update",
                                    "patch",
                                    "delete",
                                    "deletecollection",
                                ]
                            },
                        },
                    },
                    ["apiGroups", "resources", "verbs"],
                ),
            }
        },
        ["rules"],
    ),
    "RoleBinding": _core(
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        {
            "subjects": {
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    {
                        "kind": {"enum": ["ServiceAccount", "User", "Group"]},
                        "name": {"type": "string", "minLength": 1},
                        "namespace": {"type": "string"},
                        "apiGroup": {"type": "string"},
                    },
                    ["kind", "name"],
                ),
            },
            "roleRef": _obj(
                {
                    "apiGroup": {"const": "rbac.authorization.k8s.io"},
                    "kind": {"enum": ["Role", "ClusterRole"]},
                    "name": {"type": "string", "minLength": 1},
                },
                ["apiGroup", "kind", "name"],
            ),
        },
        ["subjects", "roleRef"],
    ),
    "CronJob": _core(
        "batch/v1",
        "CronJob",
        {
            "spec": _obj(
                {
                    "schedule": {"type": "string"},
                    "timeZone": {"type": "string", "minLength": 1},
                    "concurrencyPolicy": {"enum": ["Allow", "Forbid", "Replace"]},
                    "startingDeadlineSeconds": {"type": "integer", "minimum": 1},
                    "successfulJobsHistoryLimit": {"type": "integer", "minimum": 0},
                    "failedJobsHistoryLimit": {"type": "integer", "minimum": 0},
                    "suspend": {"type": "boolean"},
                    "jobTemplate": _obj(
                        {
                            "metadata": {"type": "object"},
                            "spec": _obj(
                                {
                                    "backoffLimit": {"type": "integer", "minimum": 0},
                                    "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                                    "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                                    # Checked against the PodTemplateSpec schema KubeRay's CRD embeds.
                                    "template": {"type": "object"},
                                },
                                ["template"],
                            ),
                        },
                        ["spec"],
                    ),
                },
                ["schedule", "jobTemplate"],
            )
        },
        ["spec"],
    ),
}
KUSTOMIZATION_SCHEMA = _obj(
    {
        "apiVersion": {"const": "kustomize.config.k8s.io/v1beta1"},
        "kind": {"const": "Kustomization"},
        "namespace": {"type": "string"},
        "resources": {"type": "array", "items": {"type": "string"}},
        "images": {
            "type": "array",
            "items": _obj(
                {"name": {"type": "string"}, "newName": {"type": "string"}, "newTag": {"type": "string"}},
                ["name"],
            ),
        },
        "patches": {
            "type": "array",
            "items": _obj(
                {
                    "path": {"type": "string"},
                    "patch": {"type": "string"},
                    "target": _obj(
                        {
                            "group": {"type": "string"},
                            "version": {"type": "string"},
                            "kind": {"type": "string"},
                            "name": {"type": "string"},
                        },
                        ["kind", "name"],
                    ),
                }
            ),
        },
        "configMapGenerator": {
            "type": "array",
            "items": _obj(
                {
                    "name": {"type": "string"},
                    "behavior": {"enum": ["create", "replace", "merge"]},
                    "files": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                },
                ["name", "files"],
            ),
        },
        "generatorOptions": _obj({"disableNameSuffixHash": {"const": True}}),
    },
    ["apiVersion", "kind", "resources"],
)


# ---------------------------------------------------------------------------------------------
# Metadata and KubeRay's own admission rules
# ---------------------------------------------------------------------------------------------

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"  # optional DNS prefix
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# KubeRay: a RayCluster's services append up to 10 characters ("-serve-svc") to 53; a RayJob's
# cluster appends 6 ("-xxxxx"); a RayCronJob's RayJobs append 6 again, as does generateName.
RAY_NAME_MAX = {"RayCluster": 53, "RayJob": 47, "RayCronJob": 41}
GENERATED_SUFFIX = 5


def _metadata_errors(kind: str, meta: Any, *, template: bool = False) -> list[str]:
    """Minimal ObjectMeta checks; Ray kinds also get KubeRay's name rules."""
    errors = _schema_errors(jsonschema.Draft7Validator(_META), meta)
    if errors or not isinstance(meta, dict):
        return [f"metadata.{e}" for e in errors] or ["metadata: must be a mapping"]
    name, generate = meta.get("name"), meta.get("generateName")
    if template:
        if not generate or name:
            errors.append("metadata: a template created with `kubectl create` sets generateName, not name")
            return errors
        name = generate + "x" * GENERATED_SUFFIX
    elif not name:
        return ["metadata.name is required"]
    pattern, limit = (DNS1035, RAY_NAME_MAX[kind]) if kind in RAY_NAME_MAX else (DNS1123_SUBDOMAIN, 253)
    if len(name) > limit or not pattern.match(name):
        errors.append(f"metadata: name {name!r} must be a DNS-1035 label of at most {limit} characters for a {kind}")
    for key, value in (meta.get("labels") or {}).items():
        if not LABEL_KEY.match(key) or not LABEL_VALUE.match(value) or len(value) > 63:
            errors.append(f"metadata.labels: {key}={value!r} is not a valid label")
    return errors


def _cluster_spec_rules(spec: dict, where: str) -> list[str]:
    """The subset of KubeRay's ValidateRayClusterSpec that a schema cannot express."""
    errors = []
    groups = [("head", spec["headGroupSpec"])] + [(g.get("groupName"), g) for g in spec.get("workerGroupSpecs", [])]
    names = [n for n, _ in groups[1:]]
    if len(set(names)) != len(names):
        errors.append(f"{where}: worker groupName values repeat: {names}")
    for name, group in groups:
        if not group["template"].get("spec", {}).get("containers"):
            errors.append(f"{where}: group {name} has no container")
        params = group.get("rayStartParams") or {}
        if group.get("resources") and any(k in params for k in ("num-cpus", "num-gpus", "memory", "resources")):
            errors.append(f"{where}: group {name} sets resources both in rayStartParams and resources")
        if "labels" in params:
            errors.append(f"{where}: group {name}: rayStartParams['labels'] is rejected; use the labels field")
        if name != "head":
            lo, hi = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
            if not lo <= group.get("replicas", lo) <= hi:
                errors.append(f"{where}: group {name} needs minReplicas <= replicas <= maxReplicas")
    return errors


def _rayjob_spec_rules(spec: dict, where: str) -> list[str]:
    """The subset of KubeRay's ValidateRayJobSpec that a schema cannot express."""
    errors = []
    if not spec.get("rayClusterSpec") and not spec.get("clusterSelector"):
        errors.append(f"{where}: one of rayClusterSpec or clusterSelector must be set")
    if spec.get("activeDeadlineSeconds", 1) <= 0:
        errors.append(f"{where}: activeDeadlineSeconds must be positive")
    if spec.get("backoffLimit", 0) < 0:
        errors.append(f"{where}: backoffLimit must not be negative")
    if spec.get("ttlSecondsAfterFinished", 0) > 0 and not spec.get("shutdownAfterJobFinishes"):
        errors.append(f"{where}: ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true")
    if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
        errors.append(f"{where}: a suspended RayJob needs shutdownAfterJobFinishes: true")
    if spec.get("rayClusterSpec"):
        errors += _cluster_spec_rules(spec["rayClusterSpec"], f"{where}.rayClusterSpec")
    return errors


def ray_object_errors(obj: dict, *, template: bool = False) -> list[str]:
    """Everything wrong with a RayCluster/RayJob/RayCronJob: strict CRD schema, metadata, KubeRay rules."""
    kind = obj.get("kind")
    if kind not in RAY_KINDS or obj.get("apiVersion") != "ray.io/v1":
        return [f"apiVersion/kind {obj.get('apiVersion')}/{kind} is not a ray.io/v1 kind this test knows"]
    errors = _schema_errors(_validator(kind), obj)
    errors += _metadata_errors(kind, obj.get("metadata"), template=template)
    if "status" in obj:
        errors.append("status: a manifest does not set status")
    if errors:
        return errors
    spec = obj["spec"]
    if kind == "RayCluster":
        errors += _cluster_spec_rules(spec, "spec")
    elif kind == "RayJob":
        errors += _rayjob_spec_rules(spec, "spec")
    else:
        if "TZ" in spec["schedule"] or len(spec["schedule"].split()) != 5:
            errors.append("spec.schedule: five cron fields, no TZ= (use spec.timeZone)")
        # The CRD spells out jobTemplate today; should a release leave it open, this keeps it checked.
        errors += [f"spec.jobTemplate.{e}" for e in _schema_errors(_validator("RayJob", "spec"), spec["jobTemplate"])]
        errors += _rayjob_spec_rules(spec["jobTemplate"], "spec.jobTemplate")
    return errors


# ---------------------------------------------------------------------------------------------
# A minimal kustomize
# ---------------------------------------------------------------------------------------------


def _kustomization(folder: Path) -> dict:
    path = folder / "kustomization.yaml"
    assert path.is_file(), f"{folder.relative_to(REPO_ROOT)} has no kustomization.yaml"
    (doc,) = _docs(path)
    errors = _schema_errors(jsonschema.Draft7Validator(KUSTOMIZATION_SCHEMA), doc)
    assert not errors, f"{path.relative_to(REPO_ROOT)} uses kustomize features this test cannot build:\n" + "\n".join(
        errors
    )
    return doc


def _key(obj: dict) -> tuple[str, str]:
    return obj["kind"], obj["metadata"].get("name") or obj["metadata"].get("generateName")


def _matches(obj: dict, target: dict) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    return (
        obj["kind"] == target["kind"]
        and obj["metadata"].get("name") == target["name"]
        and target.get("group", group) == group
        and target.get("version", version) == version
    )


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), f"JSON pointer {path!r} must start with '/'"
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json6902(doc: dict, ops: list[dict], where: str) -> None:
    """Apply test/add/remove/replace operations in place (what k8s/ uses of RFC 6902)."""
    for op in ops:
        *parents, last = _pointer(op["path"])
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if op["op"] == "test":
                assert node[index] == op["value"], (
                    f"{where}: test {op['path']} == {op['value']!r} failed (found {node[index]!r})"
                )
            elif op["op"] == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            elif op["op"] == "remove":
                del node[index]
            elif op["op"] == "replace":
                assert index < len(node), f"{where}: replace {op['path']}: no such element"
                node[index] = copy.deepcopy(op["value"])
            else:
                raise AssertionError(f"{where}: unsupported op {op['op']!r}")
        else:
            if op["op"] in ("test", "remove", "replace"):
                assert last in node, f"{where}: {op['op']} {op['path']}: no such field"
            if op["op"] == "test":
                assert node[last] == op["value"], (
                    f"{where}: test {op['path']} == {op['value']!r} failed (found {node[last]!r})"
                )
            elif op["op"] in ("add", "replace"):
                node[last] = copy.deepcopy(op["value"])
            elif op["op"] == "remove":
                del node[last]
            else:
                raise AssertionError(f"{where}: unsupported op {op['op']!r}")


def _walk_images(node: Any, fn) -> None:
    """Call fn(container) for every container of every pod template anywhere in node."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    fn(container)
            else:
                _walk_images(value, fn)
    elif isinstance(node, list):
        for item in node:
            _walk_images(item, fn)


def _image_name(image: str) -> str:
    name = image.split("@", 1)[0]
    return name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name


@cache
def _build_cached(rel: str) -> tuple:
    return tuple(_build(K8S / rel))


def build(rel: str) -> list[dict]:
    """The objects `kubectl kustomize k8s/<rel>` emits, as fresh copies."""
    return copy.deepcopy(list(_build_cached(rel)))


def _build(folder: Path) -> list[dict]:
    kust = _kustomization(folder)
    where = folder.relative_to(REPO_ROOT)
    objects: list[dict] = []
    for entry in kust["resources"]:
        path = (folder / entry).resolve()
        assert path.exists(), f"{where}/kustomization.yaml: resource {entry} does not exist"
        if path.is_dir():
            objects += _build(path)
        else:
            objects += [copy.deepcopy(d) for d in _docs(path)]
    for gen in kust.get("configMapGenerator", []):
        data = {}
        for item in gen["files"]:
            key, _, rel = item.rpartition("=") if "=" in item else (Path(item).name, "", item)
            path = folder / rel
            assert path.is_file(), f"{where}/kustomization.yaml: configMapGenerator {gen['name']}: {rel} does not exist"
            data[key] = path.read_text()
        existing = [o for o in objects if _key(o) == ("ConfigMap", gen["name"])]
        behavior = gen.get("behavior", "create")
        if behavior == "create":
            assert not existing, f"{where}: configMapGenerator {gen['name']} collides with an existing ConfigMap"
            objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
        else:
            assert existing, f"{where}: configMapGenerator {gen['name']} ({behavior}) has no ConfigMap to {behavior}"
            existing[0]["data"] = data if behavior == "replace" else {**existing[0]["data"], **data}
        assert kust.get("generatorOptions", {}).get("disableNameSuffixHash"), (
            f"{where}: generated ConfigMaps keep their names (disableNameSuffixHash): kustomize does not "
            f"rewrite references inside Ray custom resources"
        )
    for number, patch in enumerate(kust.get("patches", [])):
        if "path" in patch:
            path = folder / patch["path"]
            assert path.is_file(), f"{where}/kustomization.yaml: patch {patch['path']} does not exist"
            body, label = yaml.load(path.read_text(), Loader=_Loader), patch["path"]
        else:
            body, label = yaml.load(patch["patch"], Loader=_Loader), f"patches[{number}]"
        if isinstance(body, list):
            assert "target" in patch, f"{where}: JSON 6902 patch {label} needs a target"
            hits = [o for o in objects if _matches(o, patch["target"])]
            assert hits, f"{where}: patch {label} targets {patch['target']}, which the build does not have"
            for obj in hits:
                _json6902(obj, body, f"{where}: patch {label}")
        else:
            target = {"kind": body["kind"], "name": body["metadata"]["name"]}
            hits = [o for o in objects if _matches(o, target)]
            assert hits, f"{where}: patch {label} targets {target}, which the build does not have"
            if body.get("$patch") == "delete":
                objects = [o for o in objects if not _matches(o, target)]
            else:
                raise AssertionError(f"{where}: patch {label}: only JSON 6902 and `$patch: delete` are built here")
    for obj in objects:
        if "namespace" in kust:
            obj["metadata"]["namespace"] = kust["namespace"]
        for image in kust.get("images", []):

            def rewrite(container: dict, image: dict = image) -> None:
                old = container["image"]
                if _image_name(old) == image["name"]:
                    tag = image.get("newTag") or old[len(image["name"]) + 1 :]
                    container["image"] = image.get("newName", image["name"]) + (f":{tag}" if tag else "")

            _walk_images(obj, rewrite)
    return objects


def _kustomize_inputs() -> dict[Path, str]:
    """Every file a kustomization under k8s/ reads, with its role."""
    roles: dict[Path, str] = {}
    for kfile in K8S.rglob("kustomization.yaml"):
        kust = _kustomization(kfile.parent)
        roles[kfile] = "kustomization"
        for entry in kust["resources"]:
            path = (kfile.parent / entry).resolve()
            if path.is_file():
                roles[path] = "resource"
        for patch in kust.get("patches", []):
            if "path" in patch:
                roles[(kfile.parent / patch["path"]).resolve()] = "patch"
        for gen in kust.get("configMapGenerator", []):
            for item in gen["files"]:
                roles[(kfile.parent / item.rpartition("=")[2]).resolve()] = "generator-input"
    return roles


def _embedded_manifests(config_map: dict) -> list[dict]:
    """Kubernetes objects held as data in a ConfigMap (templates created later by a pod)."""
    found = []
    for value in config_map.get("data", {}).values():
        try:
            docs = list(yaml.load_all(value, Loader=_Loader))
        except yaml.YAMLError:
            continue
        found += [d for d in docs if isinstance(d, dict) and "apiVersion" in d and "kind" in d]
    return found


def _all_ray_objects() -> list[tuple[str, dict, bool]]:
    """(label, object, is_template) for every Ray object in a file under k8s/ or a ConfigMap of it."""
    found = []
    for path, role in sorted(_kustomize_inputs().items()):
        if role not in ("resource", "generator-input"):
            continue
        for doc in _docs(path):
            label = f"{path.relative_to(K8S)}:{doc.get('kind')}" if isinstance(doc, dict) else str(path)
            if isinstance(doc, dict) and doc.get("kind") in RAY_KINDS:
                found.append((label, doc, role == "generator-input"))
            if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
                found += [(f"{label} embedded", d, True) for d in _embedded_manifests(doc) if d["kind"] in RAY_KINDS]
    return found


# ---------------------------------------------------------------------------------------------
# Views of a build
# ---------------------------------------------------------------------------------------------


def _job_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    """(kind label, RayJob spec) for RayJobs, RayCronJob templates and RayJob templates in ConfigMaps."""
    specs = []
    for obj in objects:
        if obj["kind"] == "RayJob":
            specs.append(("RayJob", obj["spec"]))
        elif obj["kind"] == "RayCronJob":
            specs.append(("RayCronJob", obj["spec"]["jobTemplate"]))
        elif obj["kind"] == "ConfigMap":
            specs += [("RayJob template", d["spec"]) for d in _embedded_manifests(obj) if d["kind"] == "RayJob"]
    return specs


def _cluster_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    specs = [("RayCluster", o["spec"]) for o in objects if o["kind"] == "RayCluster"]
    return specs + [(label, s["rayClusterSpec"]) for label, s in _job_specs(objects) if "rayClusterSpec" in s]


def _pod_specs(objects: list[dict]) -> list[tuple[str, dict, bool]]:
    """(label, pod spec, is a Ray pod) for every pod the build can start, templates included."""
    pods = []
    for label, spec in _cluster_specs(objects):
        pods.append((f"{label} head", spec["headGroupSpec"]["template"]["spec"], True))
        pods += [(f"{label} {g['groupName']}", g["template"]["spec"], True) for g in spec.get("workerGroupSpecs", [])]
    for obj in objects:
        if obj["kind"] == "CronJob":
            pod = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            pods.append((f"CronJob {obj['metadata']['name']}", pod, False))
    return pods


def _cpu(quantity: str | int) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _audit_config(objects: list[dict], spec: dict) -> tuple[str, dict]:
    """(path in the head pod, parsed YAML) of the config the entrypoint runs."""
    commands = _entrypoint_commands(spec["entrypoint"])
    run = commands[0]
    assert run[:4] == ["python", "-m", "neuronscan", "run"], (
        f"entrypoint must start with `python -m neuronscan run`: {run}"
    )
    config_path = run[4]
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head.get("volumes", [])}
    for mount in head["containers"][0].get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if config_path.startswith(prefix) and "configMap" in volumes.get(mount["name"], {}):
            cm_name = volumes[mount["name"]]["configMap"]["name"]
            (cm,) = [o for o in objects if _key(o) == ("ConfigMap", cm_name)] or [None]
            assert cm is not None, f"the head mounts ConfigMap {cm_name}, which the build does not have"
            key = config_path[len(prefix) :]
            assert key in cm["data"], f"ConfigMap {cm_name} has no key {key!r} for {config_path}"
            return config_path, yaml.safe_load(cm["data"][key])
    raise AssertionError(f"{config_path} is not on a ConfigMap volume mounted in the head container")


SHELL_OPERATORS = {"&&", "||", ";", "|", "&", ">", ">>", "<", "<<", "(", ")", ";;", "|&"}


def _entrypoint_commands(entrypoint: str) -> list[list[str]]:
    """The neuronscan commands of an entrypoint: `CMD` or `bash -c 'CMD && CMD ...'`."""
    tokens = shlex.split(entrypoint)
    if tokens[:2] == ["bash", "-c"] and len(tokens) == 3:
        lexer = shlex.shlex(tokens[2], posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        commands, current = [], []
        for token in lexer:
            if token == "&&":
                commands.append(current)
                current = []
            else:
                current.append(token)
        return [*commands, current]
    return [tokens]


def _submitter_shell_problems(entrypoint: str) -> list[str]:
    """What KubeRay's submitter `bash -c "... ray job submit -- ENTRYPOINT ; fi"` would misread."""
    problems = []
    lexer = shlex.shlex(entrypoint, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    problems += [f"shell operator {t!r} outside quotes" for t in lexer if t in SHELL_OPERATORS]
    quoted = False
    for char in entrypoint:
        if char == "'":
            quoted = not quoted
        elif not quoted and char in '$`\\"':
            problems.append(f"{char!r} outside single quotes")
    return problems


def _cron_min_gap_seconds(schedule: str) -> int:
    """Shortest time between two firings of a daily-or-faster schedule (`M H * * *` forms)."""
    macros = {"@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
    fields = macros.get(schedule, schedule).split()
    assert len(fields) == 5 and fields[2:] == ["*", "*", "*"], (
        f"schedule {schedule!r}: only minute/hour schedules are understood here; teach _cron_min_gap_seconds"
    )

    def expand(field: str, top: int) -> set[int]:
        values = set()
        for part in field.split(","):
            rng, _, step = part.partition("/")
            lo, hi = (0, top - 1) if rng == "*" else (int(rng.split("-")[0]), int(rng.split("-")[-1]))
            values.update(range(lo, hi + 1, int(step or 1)))
        return values

    minutes = sorted(h * 60 + m for h in expand(fields[1], 24) for m in expand(fields[0], 60))
    gaps = [b - a for a, b in zip(minutes, minutes[1:], strict=False)] + [minutes[0] + 24 * 60 - minutes[-1]]
    return min(gaps) * 60


# ---------------------------------------------------------------------------------------------
# Tests: files and schemas
# ---------------------------------------------------------------------------------------------


def test_pinned_crds_are_found_and_strictness_applies_throughout():
    schemas = _crd_schemas()
    strict = _strict(schemas["RayJob"])
    container = strict["properties"]["spec"]["properties"]["rayClusterSpec"]["properties"]["headGroupSpec"][
        "properties"
    ]["template"]["properties"]["spec"]["properties"]["containers"]["items"]
    assert container["additionalProperties"] is False
    # Maps stay maps: rayStartParams is str -> str, not closed.
    params = strict["properties"]["spec"]["properties"]["rayClusterSpec"]["properties"]["headGroupSpec"]["properties"][
        "rayStartParams"
    ]
    assert params["additionalProperties"] == {"type": "string"}


def _git_blob_id(path: Path) -> str:
    """What `git hash-object` prints for a file: sha1 over "blob <size>\\0" and the bytes."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_vendored_crds_are_kuberays_own_files_unchanged():
    """k8s/crds/ holds KubeRay v1.7.0's CRDs and LICENSE, byte for byte (whatever NEURONSCAN_KUBERAY_CRDS says)."""
    for name, blob in KUBERAY_BLOBS.items():
        path = VENDORED_CRDS / name
        assert path.is_file(), f"k8s/crds/{name} is missing: the manifest tests need the vendored CRDs"
        found = _git_blob_id(path)
        assert found == blob, (
            f"k8s/crds/{name} is not KubeRay {KUBERAY_VERSION}'s file (git blob {found}, upstream {blob}); "
            f"copy it again as k8s/crds/README.md says, or update KUBERAY_BLOBS with a refresh"
        )
    extra = {p.name for p in VENDORED_CRDS.iterdir()} - set(KUBERAY_BLOBS) - {"README.md"}
    assert not extra, f"k8s/crds/ holds files this test does not know: {sorted(extra)}"
    readme = (VENDORED_CRDS / "README.md").read_text()
    assert KUBERAY_VERSION in readme and "ray-operator/config/crd/bases/" in readme, "k8s/crds/README.md: source"


def test_vendored_crds_are_never_applied_by_kustomize():
    crds = VENDORED_CRDS.resolve()
    assert not list(crds.rglob("kustomization.y*ml")), "k8s/crds/ must not be a kustomize target"
    used = [str(p.relative_to(K8S)) for p in _kustomize_inputs() if p.is_relative_to(crds)]
    assert not used, f"a kustomization reads the vendored CRDs (the operator's Helm chart installs them): {used}"


def test_every_yaml_file_under_k8s_parses_and_is_used_by_a_kustomization():
    roles = _kustomize_inputs()
    # k8s/crds/ holds the vendored CRDs (data for these tests, never applied), not manifests.
    crds = VENDORED_CRDS.resolve()
    files = sorted(
        p.resolve() for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml") and not p.resolve().is_relative_to(crds)
    )
    assert files, "k8s/ has no YAML"
    for path in files:
        _docs(path)  # raises on a syntax error, naming the file
    orphans = [str(p.relative_to(K8S)) for p in files if p not in roles]
    assert not orphans, f"YAML under k8s/ that no kustomization uses (dead or forgotten): {orphans}"
    missing = [str(p) for p in roles if not p.is_file()]
    assert not missing, f"kustomizations refer to files that do not exist: {missing}"


def test_each_kind_of_ray_object_is_present():
    kinds = {obj["kind"] for _, obj, _ in _all_ray_objects()}
    assert kinds == set(RAY_KINDS), f"expected RayCluster, RayJob and RayCronJob under k8s/, found {sorted(kinds)}"


@pytest.mark.parametrize("obj, template", [pytest.param(o, t, id=label) for label, o, t in _all_ray_objects()])
def test_ray_object_matches_the_pinned_crd_strictly(obj, template):
    errors = ray_object_errors(obj, template=template)
    assert not errors, "\n".join(errors)


def _base_rayjob() -> dict:
    (job,) = [d for d in _docs(K8S / "base" / "rayjob.yaml") if d["kind"] == "RayJob"]
    return copy.deepcopy(job)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"].update(bogus=1), "'bogus' was unexpected"),
        (lambda j: j["spec"].update(entryPoint="python x.py"), "'entryPoint' was unexpected"),
        (
            lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(
                imagePullPolicyy="Always"
            ),
            "'imagePullPolicyy' was unexpected",
        ),
        (lambda j: j["spec"].update(activeDeadlineSeconds="6h"), "is not of type 'integer'"),
        (lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(maxReplicas=2**40), "is not a 'int32'"),
        (lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"), "'groupName' is a required"),
        (
            lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
            "is not of type 'string'",
        ),
        (
            lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
                "resources"
            ]["limits"].update({"nvidia.com/gpu": [1]}),
            "is not valid under any of the given schemas",
        ),
        (lambda j: j["metadata"].update(name="Neuronscan_Audit"), "DNS-1035"),
        (lambda j: j["spec"].update(shutdownAfterJobFinishes=False), "needs shutdownAfterJobFinishes"),
        (lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(minReplicas=5), "minReplicas <= replicas"),
    ],
    ids=[
        "unknown-field-head-group",
        "unknown-field-spec",
        "unknown-field-container",
        "wrong-type-deadline",
        "int32-overflow",
        "missing-required",
        "int-in-string-map",
        "int-or-string-list",
        "bad-name",
        "ttl-without-shutdown",
        "replicas-out-of-range",
    ],
)
def test_validation_rejects_a_broken_rayjob(mutate, expected):
    job = _base_rayjob()
    assert not ray_object_errors(job), "the unmutated base RayJob must pass for this test to mean anything"
    mutate(job)
    errors = ray_object_errors(job)
    assert any(expected in e for e in errors), f"expected an error containing {expected!r}, got {errors}"


def test_int_or_string_quantities_accept_both_forms():
    job = _base_rayjob()
    limits = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"][
        "limits"
    ]
    for value in (1, "1", "500m"):
        limits["cpu"] = value
        assert not ray_object_errors(job), f"cpu: {value!r} should be accepted"
    limits["cpu"] = "one"
    assert any("does not match" in e for e in ray_object_errors(job))


def test_raycronjob_template_is_checked_as_a_rayjob_spec():
    (cron,) = [d for d in _docs(K8S / "overlays" / "nightly" / "raycronjob.yaml")]
    assert not ray_object_errors(cron)
    cron["spec"]["jobTemplate"]["rayClusterSpec"]["headGroupSpec"]["bogus"] = True
    assert any("bogus" in e for e in ray_object_errors(cron))
    cron = _docs(K8S / "overlays" / "nightly" / "raycronjob.yaml")[0]
    cron["spec"]["concurrencyPolicy"] = "Forbid"  # a batch/v1 field RayCronJob does not have
    assert any("concurrencyPolicy" in e for e in ray_object_errors(cron))
    # The template and a RayJob's spec must be the same schema for that check to be right.
    schemas = _crd_schemas()
    template = schemas["RayCronJob"]["properties"]["spec"]["properties"]["jobTemplate"]
    rayjob_spec = schemas["RayJob"]["properties"]["spec"]
    if "properties" in template:
        assert set(template["properties"]) == set(rayjob_spec["properties"])


def test_core_objects_and_kustomizations_are_well_formed():
    for path, role in sorted(_kustomize_inputs().items()):
        if role == "kustomization":
            continue  # checked by _kustomization()
        if role == "patch":
            body = yaml.safe_load(path.read_text())
            assert isinstance(body, list) and all({"op", "path"} <= set(op) for op in body), (
                f"{path}: not a JSON 6902 patch"
            )
            continue
        for doc in _docs(path):
            if role == "generator-input" and not (isinstance(doc, dict) and "kind" in doc):
                continue  # data such as audit.yaml, checked with the builds
            kind = doc.get("kind")
            if kind in RAY_KINDS:
                continue
            assert kind in CORE_SCHEMAS, f"{path}: kind {kind} is neither a Ray kind nor one this test checks"
            errors = _schema_errors(jsonschema.Draft7Validator(CORE_SCHEMAS[kind]), doc)
            errors += _metadata_errors(kind, doc["metadata"]) if not errors else []
            assert not errors, f"{path} {kind}:\n" + "\n".join(errors)


# ---------------------------------------------------------------------------------------------
# Tests: secrets
# ---------------------------------------------------------------------------------------------

AWS_KEY_PATTERNS = [
    re.compile(r"\b(AKIA|ASIA|AIDA|AROA)[0-9A-Z]{16}\b"),
    re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+=]{30,}"),
    re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"),
]


def test_no_credentials_are_committed():
    for path in sorted(p for p in K8S.rglob("*") if p.is_file()):
        text = path.read_text()
        for pattern in AWS_KEY_PATTERNS:
            hit = pattern.search(text)
            assert not hit, (
                f"{path.relative_to(REPO_ROOT)} holds what looks like an AWS credential: {hit.group(0)[:12]}…"
            )
        if path.suffix in (".yaml", ".yml"):
            for doc in _docs(path):
                embedded = _embedded_manifests(doc) if isinstance(doc, dict) and doc.get("kind") == "ConfigMap" else []
                for obj in [doc, *embedded]:
                    assert not (isinstance(obj, dict) and obj.get("kind") == "Secret"), (
                        f"{path.relative_to(REPO_ROOT)}: Secrets are created by hand (k8s/README.md), never committed"
                    )


def test_credentials_come_only_from_the_documented_secret():
    readme = (K8S / "README.md").read_text()
    for target in TARGETS:
        for label, pod, is_ray in _pod_specs(build(target)):
            for container in pod["containers"]:
                for env in container.get("env", []):
                    assert not (env["name"].startswith("AWS_") and "value" in env), (
                        f"{target} {label}: {env['name']} is set inline; take it from the Secret"
                    )
                refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
                refs += [
                    e["valueFrom"]["secretKeyRef"]["name"]
                    for e in container.get("env", [])
                    if "secretKeyRef" in e.get("valueFrom", {})
                ]
                for name in refs:
                    assert re.search(rf"kubectl [^\n]*create secret generic {re.escape(name)}\b", readme), (
                        f"{target} {label} reads Secret {name}; k8s/README.md must say how to create it"
                    )
                if is_ray:
                    assert refs == ["neuronscan-s3"], (
                        f"{target} {label}: Ray pods read S3 keys from Secret neuronscan-s3"
                    )


# ---------------------------------------------------------------------------------------------
# Tests: builds
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_build_is_valid_and_self_consistent(target):
    objects = build(target)
    assert objects, f"{target} builds nothing"
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(set(keys)) == len(keys), f"{target}: duplicate objects {keys}"
    namespaces = {o["metadata"].get("namespace") for o in objects}
    assert len(namespaces) == 1 and None not in namespaces, (
        f"{target}: every object gets the one namespace, got {namespaces}"
    )
    (namespace,) = namespaces
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}

    for obj in objects:
        if obj["kind"] in RAY_KINDS:
            errors = ray_object_errors(obj)
        else:
            errors = _schema_errors(jsonschema.Draft7Validator(CORE_SCHEMAS[obj["kind"]]), obj)
        assert not errors, f"{target} {obj['kind']} {obj['metadata']['name']} after kustomize:\n" + "\n".join(errors)
        if obj["kind"] == "ConfigMap":
            for embedded in _embedded_manifests(obj):
                errors = ray_object_errors(embedded, template=True)
                assert not errors, f"{target}: template in ConfigMap {obj['metadata']['name']}:\n" + "\n".join(errors)
        if obj["kind"] == "CronJob":
            pod_template = obj["spec"]["jobTemplate"]["spec"]["template"]
            errors = _schema_errors(_validator("RayJob", "spec", "submitterPodTemplate"), pod_template)
            assert not errors, f"{target} CronJob pod template:\n" + "\n".join(errors)
        if obj["kind"] == "RoleBinding":
            assert ("Role", obj["roleRef"]["name"]) in names, f"{target}: RoleBinding refers to a missing Role"
            for subject in obj["subjects"]:
                assert ("ServiceAccount", subject["name"]) in names, (
                    f"{target}: RoleBinding subject {subject['name']} is missing"
                )
                assert subject.get("namespace") == namespace, f"{target}: RoleBinding subject must be in {namespace}"

    images, ray_images = [], set()
    for label, pod, is_ray in _pod_specs(objects):
        account = pod.get("serviceAccountName")
        assert account is None or ("ServiceAccount", account) in names, f"{target} {label}: no ServiceAccount {account}"
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names, (
                    f"{target} {label}: volume {volume['name']} needs ConfigMap {volume['configMap']['name']}"
                )
        for container in pod["containers"]:
            images.append(container["image"])
            if is_ray:
                ray_images.add(container["image"])
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{target} {label}: mount {mount['name']} has no volume"
            resources = container.get("resources", {})
            for side in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(resources.get(side, {}))
                assert not missing, f"{target} {label} {container['name']}: set {side} for {sorted(missing)}"
    unresolved = [i for i in images if _image_name(i) in PLACEHOLDER_IMAGES or ":" not in i.rsplit("/", 1)[-1]]
    assert not unresolved, f"{target}: images left as placeholders or untagged: {unresolved}"
    assert len(ray_images) == 1, f"{target}: every Ray pod (templates too) runs one neuronscan image, got {ray_images}"


def test_base_kustomization_images_and_template_agree():
    base = _kustomization(K8S / "base")["images"]
    mapping = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in base}
    for target in TARGETS:
        for label, pod, is_ray in _pod_specs(build(target)):
            for container in pod["containers"] if is_ray else []:
                assert container["image"] == mapping["neuronscan"], (
                    f"{target} {label} runs {container['image']}, the base pins {mapping['neuronscan']}"
                )


def test_cluster_specs_are_one_spec():
    """The standing cluster, the one-off audit and both nightly variants run the same cluster."""
    base = build("base")
    (reference,) = [spec for label, spec in _cluster_specs(base) if label == "RayCluster"]
    for target in TARGETS[:3]:
        for label, spec in _cluster_specs(build(target)):
            assert spec == reference, (
                f"{target}: the {label} cluster differs from base/raycluster.yaml; change them together "
                f"(the dev overlay is the one place that shrinks it)"
            )


@pytest.mark.parametrize("target", TARGETS)
def test_ray_clusters_follow_the_house_layout(target):
    pins = [d for d in _pyproject_dependencies() if d.startswith("ray[") or d.startswith("ray==")]
    assert pins, "pyproject.toml pins no ray version"
    ray_version = pins[0].split("==")[1]
    for label, spec in _cluster_specs(build(target)):
        assert spec["rayVersion"] == ray_version, (
            f"{target} {label}: rayVersion {spec['rayVersion']} != pinned ray {ray_version}"
        )
        assert spec.get("enableInTreeAutoscaling") is True, f"{target} {label}: autoscaling is off"
        assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", (
            f"{target} {label}: head must take no tasks"
        )
        head_limits = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert not any("gpu" in k for k in head_limits), f"{target} {label}: the head is CPU-only"
        gpu_groups = [
            g for g in spec["workerGroupSpecs"] if "nvidia.com/gpu" in _ray_container(g)["resources"]["limits"]
        ]
        cpu_groups = [g for g in spec["workerGroupSpecs"] if g not in gpu_groups]
        assert cpu_groups, f"{target} {label}: no CPU worker group for scoring"
        for group in gpu_groups:
            resources = _ray_container(group)["resources"]
            assert resources["requests"].get("nvidia.com/gpu") == resources["limits"]["nvidia.com/gpu"], (
                f"{target} {label} {group['groupName']}: GPU requests must equal limits"
            )
        if target != "overlays/dev":
            assert gpu_groups, f"{target} {label}: no GPU worker group for the probe"


def _ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]


@cache
def _pyproject_dependencies() -> tuple[str, ...]:
    import tomllib

    data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    return tuple(d.replace(" ", "") for d in data["project"]["dependencies"])


@pytest.mark.parametrize("target", TARGETS)
def test_entrypoints_run_the_mounted_config_and_fit_the_cluster(target):
    from neuronscan.config import config_from_dict

    objects = build(target)
    specs = _job_specs(objects)
    assert specs or target == "base", f"{target} runs no audit"
    for label, spec in specs:
        problems = _submitter_shell_problems(spec["entrypoint"])
        assert not problems, (
            f"{target} {label}: KubeRay pastes the entrypoint unquoted into the submitter's bash -c; "
            f"wrap compound commands in bash -c '...': {problems}"
        )
        config_path, raw = _audit_config(objects, spec)
        config = config_from_dict(raw, f"{target} {config_path}")
        commands = _entrypoint_commands(spec["entrypoint"])
        run = commands[0]
        assert "--out" in run, f"{target} {label}: pass --out so the output root is visible in the manifest"
        out = run[run.index("--out") + 1]
        assert out == config.run.out, (
            f"{target} {label}: --out {out} differs from run.out {config.run.out} in the config"
        )
        if label in NIGHTLY_KINDS:
            assert len(commands) == 2 and commands[1][:4] == ["python", "-m", "neuronscan", "diff"], (
                f"{target} {label}: a nightly audit runs `neuronscan diff` after `run`"
            )
            assert any(arg.startswith(out.rstrip("/") + "/") for arg in commands[1]), (
                f"{target} {label}: the diff must read the runs that --out {out} writes"
            )
        else:
            assert len(commands) == 1, f"{target} {label}: a one-off audit is a single `neuronscan run`"

        workers = spec["rayClusterSpec"]["workerGroupSpecs"]
        cpus = [_cpu(_ray_container(g)["resources"]["limits"]["cpu"]) for g in workers]
        gpu_workers = [g for g in workers if "nvidia.com/gpu" in _ray_container(g)["resources"]["limits"]]
        probe = config.probe
        if probe.num_gpus > 0:
            capacity = sum(
                g["maxReplicas"] * int(_ray_container(g)["resources"]["limits"]["nvidia.com/gpu"]) for g in gpu_workers
            )
            assert probe.num_gpus * probe.num_actors <= capacity, (
                f"{target} {label}: {probe.num_actors} probe actors x {probe.num_gpus} GPU need more than the "
                f"{capacity} GPUs the worker groups can reach; the probe would wait forever"
            )
            gpu_cpus = max(_cpu(_ray_container(g)["resources"]["limits"]["cpu"]) for g in gpu_workers)
            assert probe.cpus_per_actor <= gpu_cpus, (
                f"{target} {label}: a probe actor needs more CPUs than a GPU worker has"
            )
        else:
            assert probe.cpus_per_actor <= max(cpus), f"{target} {label}: a probe actor needs more CPUs than any worker"
        assert config.score.cpus_per_task <= max(cpus), (
            f"{target} {label}: a scoring task needs more CPUs than any worker"
        )


def test_schedule_and_shell_helpers_on_hand_worked_cases():
    assert _cron_min_gap_seconds("0 2 * * *") == 24 * 3600
    assert _cron_min_gap_seconds("0 0,12 * * *") == 12 * 3600
    assert _cron_min_gap_seconds("*/30 1-2 * * *") == 30 * 60
    assert _cron_min_gap_seconds("50 23 * * *") == 24 * 3600
    assert _submitter_shell_problems("python -m neuronscan run a.yaml --out s3://b/runs") == []
    assert _submitter_shell_problems("bash -c 'python -m neuronscan run a && python -m neuronscan diff b'") == []
    assert _submitter_shell_problems("python -m neuronscan run a && python -m neuronscan diff b")
    assert _submitter_shell_problems("python -m neuronscan run a --out $OUT")
    assert _entrypoint_commands("bash -c 'python -m neuronscan run a && python -m neuronscan diff b'") == [
        ["python", "-m", "neuronscan", "run", "a"],
        ["python", "-m", "neuronscan", "diff", "b"],
    ]


def test_nightly_runs_cannot_overlap():
    (cron,) = [o for o in build("overlays/nightly") if o["kind"] == "RayCronJob"]
    period = _cron_min_gap_seconds(cron["spec"]["schedule"])
    deadline = cron["spec"]["jobTemplate"].get("activeDeadlineSeconds")
    assert deadline and deadline < period, (
        f"RayCronJob has no concurrencyPolicy: its jobTemplate.activeDeadlineSeconds ({deadline}) must be below "
        f"the schedule's period ({period} s) so a slow night is stopped before the next starts"
    )
    assert cron["spec"].get("timeZone"), "set spec.timeZone: the operator's local zone is not a schedule"

    objects = build("overlays/cronjob-fallback")
    (job,) = [o for o in objects if o["kind"] == "CronJob"]
    spec = job["spec"]
    assert spec.get("concurrencyPolicy") == "Forbid", "the fallback CronJob must not start a night while one runs"
    period = _cron_min_gap_seconds(spec["schedule"])
    job_deadline = spec["jobTemplate"]["spec"].get("activeDeadlineSeconds")
    (template,) = [s for label, s in _job_specs(objects) if label == "RayJob template"]
    assert template.get("activeDeadlineSeconds"), "the RayJob template needs activeDeadlineSeconds"
    assert job_deadline and template["activeDeadlineSeconds"] < job_deadline < period, (
        f"need RayJob deadline ({template['activeDeadlineSeconds']}) < launcher Job deadline ({job_deadline}) "
        f"< period ({period}): the launcher outlives its RayJob and both end before the next night"
    )
    assert spec["jobTemplate"]["spec"].get("backoffLimit") == 0, "a failed night is not retried into the next"


def test_fallback_launcher_creates_a_fresh_rayjob_from_its_template():
    objects = build("overlays/cronjob-fallback")
    (job,) = [o for o in objects if o["kind"] == "CronJob"]
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    script = " ".join(container.get("command", []) + container.get("args", []))
    match = re.search(r"kubectl create -f (\S+)", script)
    assert match, "the launcher must use `kubectl create -f` (apply cannot use generateName)"
    template_path = match.group(1)
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if template_path.startswith(m["mountPath"].rstrip("/") + "/")]
    cm_name = volumes[mount["name"]]["configMap"]["name"]
    (cm,) = [o for o in objects if _key(o) == ("ConfigMap", cm_name)]
    (template,) = yaml.safe_load_all(cm["data"][template_path[len(mount["mountPath"].rstrip("/")) + 1 :]])
    assert template["kind"] == "RayJob" and template["metadata"].get("generateName"), "the template needs generateName"
    assert not template["metadata"].get("namespace"), "the template takes the launcher's namespace; set none"

    (role,) = [o for o in objects if o["kind"] == "Role"]
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert {s["name"] for s in binding["subjects"]} == {pod["serviceAccountName"]}
    granted = {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }
    for verb in ("create", "get", "list", "watch", "delete"):
        assert ("ray.io", "rayjobs", verb) in granted, f"the launcher's Role lacks {verb} on ray.io rayjobs"
    assert {g for g, _, _ in granted} == {"ray.io"} and {r for _, r, _ in granted} == {"rayjobs"}, (
        "the launcher gets rights on RayJobs only"
    )


def test_dev_overlay_has_no_gpu_anywhere():
    objects = build("overlays/dev")
    for label, pod, _ in _pod_specs(objects):
        for container in pod["containers"]:
            assert "nvidia.com/gpu" not in container["resources"].get("limits", {}), f"dev {label} asks for a GPU"
    for label, spec in _cluster_specs(objects):
        assert [g["maxReplicas"] for g in spec["workerGroupSpecs"]] == [1], f"dev {label}: one CPU worker"


def test_readme_names_only_paths_that_exist():
    readme = (K8S / "README.md").read_text()
    for path in set(re.findall(r"\bk8s/[\w./-]+\w", readme)):
        assert (REPO_ROOT / path).exists(), f"k8s/README.md mentions {path}, which does not exist"
    for target in TARGETS:
        assert f"k8s/{target}" in readme, f"k8s/README.md does not say how to use k8s/{target}"
    assert "featureGates[0].name=RayCronJob" in readme, "document the helm flag that turns RayCronJob on"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
@pytest.mark.parametrize("target", TARGETS)
def test_builder_agrees_with_kubectl_kustomize(target):
    """Keeps the minimal builder honest where the real kustomize is at hand."""
    result = subprocess.run(["kubectl", "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize k8s/{target} failed:\n{result.stderr}"
    real = sorted(yaml.safe_load_all(result.stdout), key=lambda o: (o["kind"], o["metadata"]["name"]))
    ours = sorted(build(target), key=lambda o: (o["kind"], o["metadata"]["name"]))
    assert [_key(o) for o in ours] == [_key(o) for o in real]
    for mine, theirs in zip(ours, real, strict=True):
        assert mine == theirs, f"{target} {_key(mine)}: the test's builder and kustomize disagree"
