"""deploy/validate.py's checks of custom resources against the operators' own CRDs
(deploy/crd-validation/crds/), here Karpenter's NodePool (karpenter.sh/v1) and
EC2NodeClass (karpenter.k8s.aws/v1), which only these checks cover: every field the CRD
does not declare, at any depth, is an error naming its path, and so is a value its
openAPIV3Schema refuses (a type, an enum, a required field, a pattern, a bound).

validate.py runs in the validators' interpreter (deploy/.tools/venv: kubernetes-validate,
jsonschema), not in the project's, so its functions are called there: every case below in
one run of that interpreter, the results read back as JSON.
"""

from __future__ import annotations

import copy
import json
import subprocess

import pytest
import yaml

from tests.deploy import DEPLOY

TOOLS_PYTHON = DEPLOY / ".tools" / "venv" / "bin" / "python"
LABEL = "test"
#: Calls validate.strict_custom_resource_errors on each case of {name: [objects]} (stdin).
DRIVER = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("validate", sys.argv[1])
validate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(validate)
cases = json.load(sys.stdin)
print(json.dumps({name: validate.strict_custom_resource_errors(docs, sys.argv[2])
                  for name, docs in cases.items()}))
"""

MINIMAL = {
    "NodePool": yaml.safe_load("""
apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {name: gpu}
spec:
  template:
    spec:
      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: gpu}
      requirements:
        - {key: karpenter.k8s.aws/instance-family, operator: In, values: [g6e]}
"""),
    "EC2NodeClass": yaml.safe_load("""
apiVersion: karpenter.k8s.aws/v1
kind: EC2NodeClass
metadata: {name: gpu}
spec:
  role: KarpenterNodeRole-mic2e
  amiSelectorTerms: [{alias: bottlerocket@latest}]
  subnetSelectorTerms: [{tags: {karpenter.sh/discovery: mic2e}}]
  securityGroupSelectorTerms: [{tags: {karpenter.sh/discovery: mic2e}}]
"""),
}
#: Valid objects with the nested sections the typos below go into.
FULL = {
    "NodePool": yaml.safe_load("""
apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {name: gpu}
spec:
  template:
    metadata:
      labels: {mic2e.io/pool: gpu}
    spec:
      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: gpu}
      requirements:
        - {key: karpenter.k8s.aws/instance-family, operator: In, values: [g6e, p5]}
        - {key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}
        - {key: karpenter.k8s.aws/instance-gpu-count, operator: Gt, values: ["0"]}
      taints: [{key: nvidia.com/gpu, effect: NoSchedule}]
      expireAfter: 720h
  disruption:
    consolidationPolicy: WhenEmpty
    consolidateAfter: 10m
    budgets: [{nodes: "1"}]
  limits: {nvidia.com/gpu: 8, cpu: "256"}
  weight: 10
"""),
    # The minimal one, and:
    "EC2NodeClass": {**MINIMAL["EC2NodeClass"], "spec": {
        **MINIMAL["EC2NodeClass"]["spec"], **yaml.safe_load("""
blockDeviceMappings:
  - deviceName: /dev/xvdb
    ebs: {volumeSize: 200Gi, volumeType: gp3, encrypted: true}
metadataOptions: {httpTokens: required, httpPutResponseHopLimit: 2}
tags: {project: mic2e}
""")}},
}
#: Typos at several depths of each kind, and the field path each one must be named by.
TYPOS = {
    "NodePool": [(("spec", "template", "spec"), "requirement", "spec.template.spec.requirement"),
                 (("spec", "disruption"), "consolidateAfterr",
                  "spec.disruption.consolidateAfterr"),
                 (("spec", "template", "metadata"), "label", "spec.template.metadata.label"),
                 (("spec", "template", "spec", "requirements", 1), "minValue",
                  "spec.template.spec.requirements[1].minValue"),
                 (("spec", "disruption", "budgets", 0), "node",
                  "spec.disruption.budgets[0].node"),
                 ((), "specs", "specs")],
    "EC2NodeClass": [(("spec",), "amiSelectorTerm", "spec.amiSelectorTerm"),
                     (("spec", "blockDeviceMappings", 0, "ebs"), "volumeSise",
                      "spec.blockDeviceMappings[0].ebs.volumeSise"),
                     (("spec", "subnetSelectorTerms", 0), "tag",
                      "spec.subnetSelectorTerms[0].tag"),
                     (("spec", "metadataOptions"), "httpToken", "spec.metadataOptions.httpToken")],
}
#: Values the CRD's schema refuses: (kind, where, the field, its value, the path that must
#: be named, the start of jsonschema's message).
VIOLATIONS = [
    ("NodePool", ("spec", "template", "spec", "requirements", 0), "operator", "Equals",
     "spec.template.spec.requirements[0].operator", "'Equals' is not one of"),
    ("NodePool", ("spec",), "weight", "10", "spec.weight", "'10' is not of type 'integer'"),
    ("NodePool", ("spec",), "weight", 101, "spec.weight", "101 is greater than the maximum"),
    ("NodePool", ("spec", "disruption"), "consolidateAfter", "10 minutes",
     "spec.disruption.consolidateAfter", "'10 minutes' does not match"),
    ("NodePool", ("spec", "disruption"), "consolidationPolicy", "WhenIdle",
     "spec.disruption.consolidationPolicy", "'WhenIdle' is not one of"),
    ("NodePool", ("spec", "template", "spec", "taints", 0), "effect", "NoScheduling",
     "spec.template.spec.taints[0].effect", "'NoScheduling' is not one of"),
    ("NodePool", ("spec", "template", "metadata", "labels"), "mic2e.io/pool", 1,
     "spec.template.metadata.labels.mic2e.io/pool", "1 is not of type 'string'"),
    ("EC2NodeClass", ("spec", "metadataOptions"), "httpTokens", "maybe",
     "spec.metadataOptions.httpTokens", "'maybe' is not one of"),
    ("EC2NodeClass", ("spec", "metadataOptions"), "httpPutResponseHopLimit", 0,
     "spec.metadataOptions.httpPutResponseHopLimit", "0 is less than the minimum"),
    ("EC2NodeClass", ("spec", "blockDeviceMappings", 0, "ebs"), "volumeSize", 200,
     "spec.blockDeviceMappings[0].ebs.volumeSize", "200 is not of type 'string'"),
    ("EC2NodeClass", ("spec", "blockDeviceMappings", 0, "ebs"), "volumeType", "gp4",
     "spec.blockDeviceMappings[0].ebs.volumeType", "'gp4' is not one of"),
    ("EC2NodeClass", ("spec",), "amiSelectorTerms", [], "spec.amiSelectorTerms",
     "[] should be non-empty"),
    ("EC2NodeClass", ("spec",), "associatePublicIPAddress", "false",
     "spec.associatePublicIPAddress", "'false' is not of type 'boolean'"),
]
#: Required fields left out: (kind, where, the field, the path of the object missing it).
MISSING = [
    ("NodePool", ("spec", "template", "spec"), "nodeClassRef", "spec.template.spec"),
    ("NodePool", ("spec", "template", "spec", "requirements", 0), "operator",
     "spec.template.spec.requirements[0]"),
    ("NodePool", ("spec", "template", "spec", "nodeClassRef"), "group",
     "spec.template.spec.nodeClassRef"),
    ("EC2NodeClass", ("spec",), "subnetSelectorTerms", "spec"),
    ("EC2NodeClass", ("spec",), "securityGroupSelectorTerms", "spec"),
]


def at(obj: dict, where: tuple) -> dict:
    for step in where:
        obj = obj[step]
    return obj


def name(case: tuple) -> str:
    return "-".join(str(part) for part in case[:3])


def cases() -> dict[str, list[dict]]:
    found = {f"minimal-{kind}": [doc] for kind, doc in MINIMAL.items()}
    found |= {f"full-{kind}": [doc] for kind, doc in FULL.items()}
    for kind, typos in TYPOS.items():
        for where, field, path in typos:
            doc = copy.deepcopy(FULL[kind])
            at(doc, where)[field] = "1"
            found[f"typo-{path}"] = [doc]
    for case in VIOLATIONS:
        kind, where, field, value = case[:4]
        doc = copy.deepcopy(FULL[kind])
        at(doc, where)[field] = value
        found[f"violation-{name(case)}-{value!r}"] = [doc]
    for kind, where, field, _ in MISSING:
        doc = copy.deepcopy(FULL[kind])
        del at(doc, where)[field]
        found[f"missing-{kind}-{field}"] = [doc]
    # The API server fills a budget's `nodes` in (default 10%) before it checks `required`.
    doc = copy.deepcopy(FULL["NodePool"])
    doc["spec"]["disruption"]["budgets"] = [{"schedule": "0 9 * * mon-fri", "duration": "8h"}]
    found["defaulted-budget"] = [doc]
    # No vendored CRD for this version: an error, not a skip.
    doc = copy.deepcopy(MINIMAL["NodePool"])
    doc["apiVersion"] = "karpenter.sh/v1beta1"
    found["no-crd"] = [doc]
    return found


@pytest.fixture(scope="module")
def tools_python() -> str:
    setup = subprocess.run(["bash", str(DEPLOY / "setup-validate.sh")], capture_output=True,
                           text=True, timeout=900)
    assert setup.returncode == 0, f"setup-validate.sh failed:\n{setup.stdout}{setup.stderr}"
    return str(TOOLS_PYTHON)


@pytest.fixture(scope="module")
def errors(tools_python) -> dict[str, list[str]]:
    """Case name -> what validate.strict_custom_resource_errors said of it."""
    proc = subprocess.run([tools_python, "-c", DRIVER, str(DEPLOY / "validate.py"), LABEL],
                          input=json.dumps(cases()), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("kind", sorted(MINIMAL))
@pytest.mark.parametrize("variant", ["minimal", "full"])
def test_a_valid_karpenter_resource_passes(errors, kind, variant):
    assert errors[f"{variant}-{kind}"] == []


@pytest.mark.parametrize("typo", [(kind, path) for kind, typos in sorted(TYPOS.items())
                                  for _, _, path in typos], ids=lambda t: t[1])
def test_an_unknown_field_at_any_depth_fails_naming_its_path(errors, typo):
    kind, path = typo
    assert errors[f"typo-{path}"] == [f"{LABEL}: {kind}/gpu: unknown field {path}"]


@pytest.mark.parametrize("case", VIOLATIONS, ids=lambda c: f"{c[4]}={c[3]!r}")
def test_a_value_the_schema_refuses_fails_naming_its_path(errors, case):
    kind, _, _, value, path, message = case
    found = errors[f"violation-{name(case)}-{value!r}"]
    assert len(found) == 1, found
    assert found[0].startswith(f"{LABEL}: {kind}/gpu: {path}: {message}"), found


@pytest.mark.parametrize("case", MISSING, ids=lambda c: f"{c[3]}.{c[2]}")
def test_a_missing_required_field_fails(errors, case):
    kind, _, field, path = case
    assert errors[f"missing-{kind}-{field}"] == [
        f"{LABEL}: {kind}/gpu: {path}: '{field}' is a required property"]


def test_defaults_are_applied_before_required_fields_are_checked(errors):
    assert errors["defaulted-budget"] == []


def test_a_custom_resource_without_a_vendored_crd_fails(errors):
    (error,) = errors["no-crd"]
    assert "no CRD for karpenter.sh/v1beta1 NodePool" in error


def test_validate_sh_checks_karpenter_resources_by_their_crds_alone(tools_python, tmp_path):
    """End to end: the Node.js validator has no Karpenter validators and leaves them be;
    the CRD checks pass the valid objects and name a nested typo."""
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump_all([FULL["NodePool"], FULL["EC2NodeClass"]]))
    bad_pool = copy.deepcopy(FULL["NodePool"])
    bad_pool["spec"]["template"]["spec"]["requirement"] = []
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all([bad_pool, FULL["EC2NodeClass"]]))
    proc = subprocess.run(["bash", str(DEPLOY / "validate.sh"), "--manifests", str(good)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(["bash", str(DEPLOY / "validate.sh"), "--manifests", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "NodePool/gpu: unknown field spec.template.spec.requirement" in proc.stderr
    assert "no schema" not in proc.stderr
