// Checks the custom resources among Kubernetes objects against their operators' API
// schemas (validators generated from prometheus-operator v0.91.0 and KEDA v2.19.0 by
// kubernetes-models; pinned in package.json). Run by deploy/validate.py:
//   node deploy/crd-validation/validate.mjs OBJECTS.json
// OBJECTS.json: a JSON list of objects. Prints one line per problem; exit 1 if any.
// Only the API groups of GENERATED_GROUPS are checked here, and in them a kind without a
// validator is a problem. Every other object is left to validate.py: the built-in kinds,
// and the custom resources of groups there are no generated validators for here
// (karpenter.sh NodePool, karpenter.k8s.aws EC2NodeClass), which validate.py checks
// against the operators' own CRDs alone (crd-validation/crds/), as it checks every custom
// resource; one without a vendored CRD is an error there (nothing is skipped).
import { readFileSync } from "node:fs";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";

const KINDS = {
  "monitoring.coreos.com/v1 PodMonitor": PodMonitor,
  "monitoring.coreos.com/v1 ServiceMonitor": ServiceMonitor,
  "keda.sh/v1alpha1 ScaledObject": ScaledObject,
};
/** API groups whose custom resources have generated validators here (KINDS). */
const GENERATED_GROUPS = ["monitoring.coreos.com", "keda.sh"];

const objects = JSON.parse(readFileSync(process.argv[2], "utf8"));
let problems = 0;
let checked = 0;
for (const object of objects) {
  const group = String(object.apiVersion ?? "").split("/")[0];
  if (!GENERATED_GROUPS.includes(group)) continue;
  const where = `${object.kind}/${object.metadata?.name}`;
  const Model = KINDS[`${object.apiVersion} ${object.kind}`];
  if (Model === undefined) {
    console.log(`${where}: no schema for ${object.apiVersion} ${object.kind}`);
    problems += 1;
    continue;
  }
  // The top level, which the generated validators leave open, must hold nothing else.
  for (const key of Object.keys(object)) {
    if (!["apiVersion", "kind", "metadata", "spec"].includes(key)) {
      console.log(`${where}: unknown top-level field ${key}`);
      problems += 1;
    }
  }
  try {
    new Model(object).validate();
    checked += 1;
  } catch (err) {
    console.log(`${where}: ${err.message}`);
    problems += 1;
  }
}
console.error(`custom resources: ${checked} valid, ${problems} problem(s)`);
process.exit(problems ? 1 : 0);
