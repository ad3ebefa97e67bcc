"""Offline validation of deploy/; run through deploy/validate.sh (the tools' interpreter).

1. Kubernetes: renders the base and every overlay with `kubectl kustomize`, then checks
   every rendered object of a built-in kind against the Kubernetes JSON schemas shipped
   in the kubernetes-validate package, in their strict form (an unknown field is an
   error), for the oldest and the newest Kubernetes minor this project supports; and
   every custom resource (PodMonitor, ScaledObject) against its operator's API schema
   (crd-validation/validate.mjs: validators generated from prometheus-operator and KEDA,
   pinned in crd-validation/package.json), and strictly against the operators' own CRDs
   (crd-validation/crds/, see SOURCES.md): a field the CRD's structural schema does not
   declare, at any depth, is an error, as the API server's strict field validation makes
   it. A missing schema is an error, nothing is skipped.
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
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from kubernetes_validate import utils as kv

DEPLOY = Path(__file__).resolve().parent
TOOLS = DEPLOY / ".tools"
KUBECTL = TOOLS / "venv" / "bin" / "kubectl"
CRD_VALIDATOR = DEPLOY / "crd-validation" / "validate.mjs"
#: The operators' CustomResourceDefinitions, as published (crd-validation/crds/SOURCES.md).
CRDS = DEPLOY / "crd-validation" / "crds"
#: API groups whose objects are custom resources (checked by CRD_VALIDATOR).
CUSTOM_GROUPS = ("monitoring.coreos.com", "keda.sh")
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


def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> openAPIV3Schema of every version of the CRDs in CRDS."""
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


def strict_custom_resource_errors(docs: list, label: str) -> list[str]:
    """Every field of the custom resources among `docs` that their CRD does not declare."""
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
    return errors


def custom_resource_errors(docs: list, label: str) -> list[str]:
    """The custom resources among `docs` against their operators' schemas (Node.js), and
    strictly against their CRDs (`strict_custom_resource_errors`)."""
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
                   f"prometheus-operator and KEDA; {len(COMPOSE_FILES)} compose "
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
