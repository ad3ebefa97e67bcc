"""Offline validation of deploy/; run through deploy/validate.sh (the tools' interpreter).

1. Kubernetes: renders the base and every overlay with `kubectl kustomize`, then checks
   every rendered object of a built-in kind against the Kubernetes JSON schemas shipped
   in the kubernetes-validate package, in their strict form (an unknown field is an
   error), for the oldest and the newest Kubernetes minor this project supports; and
   every custom resource (PodMonitor, ScaledObject, Karpenter's NodePool and
   EC2NodeClass) against the operators' own CRDs (crd-validation/crds/, see SOURCES.md):
   strictly (a field the CRD's structural schema does not declare, at any depth, is an
   error, as the API server's strict field validation makes it) and by its
   openAPIV3Schema, defaults applied first as the API server does (types, enums,
   required fields, patterns, bounds, lengths, item counts; not the CEL rules of
   x-kubernetes-validations, formats, or the x-kubernetes-* list and map semantics).
   Those of prometheus-operator and KEDA also against validators generated from their
   APIs (crd-validation/validate.mjs, pinned in crd-validation/package.json; it has none
   for Karpenter, whose resources the CRD checks alone cover). A custom resource without
   a vendored CRD is an error, nothing is skipped.
2. Compose: `docker-compose config` (Compose v2, no engine needed) parses, interpolates
   and checks each compose file against the Compose specification; each service's build
   context, Dockerfile and target stage must exist.
3. Dockerfiles: hadolint.

Writes what it rendered to --out (default: deploy/.tools/out): k8s-NAME.yaml and
k8s-NAME.json (a list of objects) per kustomization, compose-NAME.json per compose file.
No network is used. Exit status 0 only if everything passed.

    deploy/validate.sh [--out DIR]
    deploy/validate.sh --manifests FILE.yaml...   # just schema-check these files
    deploy/validate.sh --compose FILE.yaml...     # just `config`-check these compose files
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jsonschema  # kubernetes-validate's, pinned in requirements-validate.txt
import yaml
from kubernetes_validate import utils as kv

DEPLOY = Path(__file__).resolve().parent
TOOLS = DEPLOY / ".tools"
KUBECTL = TOOLS / "venv" / "bin" / "kubectl"
CRD_VALIDATOR = DEPLOY / "crd-validation" / "validate.mjs"
#: The operators' CustomResourceDefinitions, as published (crd-validation/crds/SOURCES.md).
CRDS = DEPLOY / "crd-validation" / "crds"
#: API groups whose objects are custom resources: checked against their CRDs in CRDS and,
#: for the groups it has validators of, by CRD_VALIDATOR.
CUSTOM_GROUPS = ("monitoring.coreos.com", "keda.sh", "karpenter.sh", "karpenter.k8s.aws")
HADOLINT = TOOLS / "venv" / "bin" / "hadolint"
COMPOSE = TOOLS / "bin" / "docker-compose"

#: Oldest supported Kubernetes (native gRPC probes, PDB unhealthyPodEvictionPolicy and
#: autoscaling/v2 are all GA or on by default there) and the newest schemas we have.
K8S_VERSIONS = ("1.30.0", "1.37.0")
KUSTOMIZATIONS = {
    "base": DEPLOY / "k8s" / "base",
    "tiny-cpu": DEPLOY / "k8s" / "overlays" / "tiny-cpu",
    "gpu": DEPLOY / "k8s" / "overlays" / "gpu",
    "gpu-keda": DEPLOY / "k8s" / "overlays" / "gpu-keda",
    "gpu-rwo": DEPLOY / "k8s" / "overlays" / "gpu-rwo",
    "gpu-node-cache": DEPLOY / "k8s" / "overlays" / "gpu-node-cache",
    "eks-karpenter": DEPLOY / "k8s" / "nodes" / "eks-karpenter",
}
COMPOSE_FILES = {
    "compose": DEPLOY / "compose" / "compose.yaml",
    "compose-tiny": DEPLOY / "compose" / "compose.tiny.yaml",
}
DOCKERFILES = [DEPLOY / "docker" / "Dockerfile"]


def run(cmd: list[str | Path], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False,
                          **kwargs)


def where(doc: dict) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind', '?')}/{meta.get('name', '?')}"


def schema_errors(docs: list, label: str) -> list[str]:
    """Every object against the strict schemas of each version in K8S_VERSIONS, custom
    resources against their operators' (`custom_resource_errors`)."""
    errors = custom_resource_errors(docs, label)
    seen: set[tuple[str, str, str]] = set()
    for doc in docs:
        if not isinstance(doc, dict) or not {"apiVersion", "kind", "metadata"} <= doc.keys():
            errors.append(f"{label}: not a Kubernetes object: {str(doc)[:80]}")
            continue
        key = (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"].get("name"))
        if key in seen:
            errors.append(f"{label}: {where(doc)} appears twice")
        seen.add(key)
        if _is_custom(doc):
            continue
        for version in K8S_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as exc:
                path = ".".join(str(p) for p in exc.absolute_path) or "(top)"
                errors.append(f"{label}: {where(doc)} (Kubernetes {version[:-2]}): "
                              f"{path}: {exc.message}")
            except kv.SchemaNotFoundError as exc:
                errors.append(f"{label}: {where(doc)}: {exc.message}")
    return errors


def _is_custom(doc: dict) -> bool:
    return str(doc.get("apiVersion", "")).split("/")[0] in CUSTOM_GROUPS


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> openAPIV3Schema of every version of the CRDs in CRDS (read
    once)."""
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def unknown_fields(value: object, schema: dict, path: str) -> list[str]:
    """The paths in `value` that `schema` (a structural schema) does not declare, at any
    depth: what the API server's strict field validation refuses. An object with
    `properties` takes only those (unless x-kubernetes-preserve-unknown-fields); a map
    (`additionalProperties`) any key, each value checked; a list, each item."""
    found: list[str] = []
    if isinstance(value, dict):
        properties = schema.get("properties")
        values = schema.get("additionalProperties")
        open_ = schema.get("x-kubernetes-preserve-unknown-fields", False)
        for key, item in value.items():
            at = f"{path}.{key}" if path else key
            if properties is not None and key in properties:
                found += unknown_fields(item, properties[key], at)
            elif isinstance(values, dict):
                found += unknown_fields(item, values, at)
            elif properties is not None and not open_ and values is not True:
                found.append(at)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def json_schema(schema: dict) -> dict:
    """A CRD's OpenAPI v3 schema as a JSON Schema (draft 4, whose boolean
    exclusiveMinimum/exclusiveMaximum OpenAPI 3.0 keeps): `nullable: true` admits null.
    The x-kubernetes-* extensions are dropped: the CEL rules of x-kubernetes-validations
    are not evaluated, and neither are list-type/map-type (uniqueness of set items and map
    keys) nor embedded-resource; x-kubernetes-int-or-string is left to the anyOf of
    integer and string that comes with it (without one, any value passes). `format` is
    not checked (no format checker is passed); `default` is applied beforehand
    (`with_defaults`)."""
    out: dict = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [json_schema(sub) for sub in value]
        else:
            out[key] = value
    if schema.get("nullable"):
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        if isinstance(out.get("enum"), list) and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


def with_defaults(value: object, schema: dict) -> object:
    """A copy of `value` with the schema's defaults filled in, as the API server does
    before validating: in every object present, a missing property (or a null one, unless
    nullable) that has a `default` gets it, then each property is defaulted in turn (a
    default's own properties included); a map's values and a list's items likewise."""
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        out = dict(value)
        for key, sub in properties.items():
            missing = key not in out or (out[key] is None and not sub.get("nullable"))
            if missing and sub.get("default") is not None:
                out[key] = json.loads(json.dumps(sub["default"]))
        values = schema.get("additionalProperties")
        for key, item in out.items():
            if key in properties:
                out[key] = with_defaults(item, properties[key])
            elif isinstance(values, dict):
                out[key] = with_defaults(item, values)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [with_defaults(item, schema["items"]) for item in value]
    return value


def schema_violations(value: object, schema: dict) -> list[str]:
    """`value` against the CRD's openAPIV3Schema `schema` (see `json_schema` for what is
    and is not checked), defaults applied first: "PATH: message" per problem."""
    validator = jsonschema.Draft4Validator(json_schema(schema))
    found = []
    for error in validator.iter_errors(with_defaults(value, schema)):
        path = ""
        for step in error.absolute_path:
            path += f"[{step}]" if isinstance(step, int) else f".{step}" if path else step
        found.append(f"{path or '(top)'}: {error.message}")
    return sorted(found)


def strict_custom_resource_errors(docs: list, label: str) -> list[str]:
    """Every field of the custom resources among `docs` that their CRD does not declare,
    and every violation of its openAPIV3Schema (`schema_violations`)."""
    schemas = crd_schemas()
    errors = []
    for doc in docs:
        if not (isinstance(doc, dict) and _is_custom(doc)):
            continue
        schema = schemas.get((doc.get("apiVersion"), doc.get("kind")))
        if schema is None:
            errors.append(f"{label}: {where(doc)}: no CRD for {doc.get('apiVersion')} "
                          f"{doc.get('kind')} in {CRDS}")
            continue
        errors += [f"{label}: {where(doc)}: unknown field {field}"
                   for field in unknown_fields(doc, schema, "")]
        errors += [f"{label}: {where(doc)}: {problem}"
                   for problem in schema_violations(doc, schema)]
    return errors


def custom_resource_errors(docs: list, label: str) -> list[str]:
    """The custom resources among `docs` against their CRDs
    (`strict_custom_resource_errors`), and those of the groups CRD_VALIDATOR has
    validators of (prometheus-operator, KEDA) against them too (Node.js)."""
    custom = [d for d in docs if isinstance(d, dict) and _is_custom(d)]
    if not custom:
        return []
    strict = strict_custom_resource_errors(custom, label)
    if not (CRD_VALIDATOR.parent / "node_modules").is_dir():
        return [f"{label}: CRD validators missing; run deploy/setup-validate.sh"]
    with tempfile.NamedTemporaryFile("w", suffix=".json") as listing:
        json.dump(custom, listing)
        listing.flush()
        proc = run(["node", CRD_VALIDATOR, listing.name])
    if proc.returncode == 0:
        return strict
    problems = proc.stdout.strip().splitlines() or [proc.stderr.strip()]
    return [f"{label}: {line}" for line in problems] + strict


def render(name: str, path: Path, out: Path) -> tuple[list, list[str]]:
    proc = run([KUBECTL, "kustomize", path])
    if proc.returncode != 0:
        return [], [f"k8s {name}: kustomize failed: {proc.stderr.strip()}"]
    (out / f"k8s-{name}.yaml").write_text(proc.stdout)
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d is not None]
    (out / f"k8s-{name}.json").write_text(json.dumps(docs, indent=1))
    return docs, schema_errors(docs, f"k8s {name}")


def compose_config(path: Path, out_json: Path | None) -> list[str]:
    """`docker-compose config`, isolated from this shell's variables and Docker config."""
    with tempfile.TemporaryDirectory() as home:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home,
               "DOCKER_CONFIG": home}
        proc = run([COMPOSE, "-f", path, "config", "--format", "json"], env=env)
    if proc.returncode != 0:
        return [f"compose {path.name}: {proc.stderr.strip()}"]
    model = json.loads(proc.stdout)
    if out_json is not None:
        out_json.write_text(json.dumps(model, indent=1))
    errors = []
    for name, service in model.get("services", {}).items():
        build = service.get("build")
        if not build:
            continue
        dockerfile = Path(build["context"]) / build.get("dockerfile", "Dockerfile")
        if not dockerfile.is_file():
            errors.append(f"compose {path.name}: {name}: no {dockerfile}")
            continue
        stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile.read_text(),
                            flags=re.MULTILINE | re.IGNORECASE)
        if build.get("target") and build["target"] not in stages:
            errors.append(f"compose {path.name}: {name}: no stage {build['target']!r} in "
                          f"{dockerfile} (stages: {', '.join(stages)})")
    return errors


def hadolint(path: Path) -> list[str]:
    proc = run([HADOLINT, "--no-color", path])
    if proc.returncode != 0:
        return [f"hadolint {path.name}: {(proc.stdout + proc.stderr).strip()}"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=TOOLS / "out",
                        help="where rendered manifests and compose models are written")
    parser.add_argument("--manifests", type=Path, nargs="+",
                        help="only schema-check these Kubernetes YAML files")
    parser.add_argument("--compose", type=Path, nargs="+",
                        help="only check these compose files")
    args = parser.parse_args(argv)
    started = time.monotonic()
    errors: list[str] = []
    if args.manifests or args.compose:
        for path in args.manifests or ():
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
            errors += schema_errors(docs, str(path))
        for path in args.compose or ():
            errors += compose_config(path.resolve(), None)
        summary = "checked the given files"
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        count = 0
        for name, path in KUSTOMIZATIONS.items():
            docs, errs = render(name, path, args.out)
            count += len(docs)
            errors += errs
        for name, path in COMPOSE_FILES.items():
            errors += compose_config(path, args.out / f"{name}.json")
        for path in DOCKERFILES:
            errors += hadolint(path)
        versions = " and ".join(v[:-2] for v in K8S_VERSIONS)
        summary = (f"{count} Kubernetes objects ({', '.join(KUSTOMIZATIONS)}) against the "
                   f"strict schemas of Kubernetes {versions} and, custom resources, of "
                   f"prometheus-operator, KEDA and Karpenter; {len(COMPOSE_FILES)} compose "
                   f"files; {len(DOCKERFILES)} Dockerfile; output in {args.out}")
    for error in errors:
        print(f"FAIL {error}", file=sys.stderr)
    took = time.monotonic() - started
    if errors:
        print(f"deploy validation: {len(errors)} problem(s) ({took:.1f} s)", file=sys.stderr)
        return 1
    print(f"deploy validation passed: {summary} ({took:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
