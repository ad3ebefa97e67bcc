// errorDetails() on details encoded the way a gRPC server encodes them (protobuf wire
// format of google.rpc.BadRequest / RetryInfo / ErrorInfo); no server needed.
import * as assert from "node:assert/strict";
import { test } from "node:test";

import { BadRequestSchema, Code, ConnectError, ErrorInfoSchema, RetryInfoSchema, errorDetails } from "../src/index.js";
import { badRequest, errorInfo, retryInfo } from "./wire.js";

const failed = (details: { type: string; value: Uint8Array }[]) => {
  const err = new ConnectError("refused", Code.ResourceExhausted);
  err.details = details;
  return err;
};

test("decodes field violations, the retry delay and the ErrorInfo", () => {
  const details = errorDetails(
    failed([
      { type: "google.rpc.BadRequest", value: badRequest(["target", "set one"], ["clear_options.steps", "1..100"]) },
      { type: "google.rpc.RetryInfo", value: retryInfo(2, 500_000_000) },
      { type: "google.rpc.ErrorInfo", value: errorInfo("QUEUE_FULL", "mic2e.v1", { stage: "object_clear" }) },
      { type: "example.Unknown", value: new Uint8Array([8, 1]) },
    ]),
  );
  assert.deepEqual(details, {
    fieldViolations: [
      { field: "target", description: "set one" },
      { field: "clear_options.steps", description: "1..100" },
    ],
    retryAfterMs: 2500,
    reason: "QUEUE_FULL",
    domain: "mic2e.v1",
    metadata: { stage: "object_clear" },
  });
});

test("the google.rpc schemas decode with ConnectError.findDetails", () => {
  const err = failed([
    { type: "google.rpc.BadRequest", value: badRequest(["image.data", "not an image"]) },
    { type: "google.rpc.RetryInfo", value: retryInfo(1, 0) },
    { type: "google.rpc.ErrorInfo", value: errorInfo("QUEUE_FULL", "mic2e.v1", { stage: "flux" }) },
  ]);
  const [bad] = err.findDetails(BadRequestSchema);
  assert.deepEqual(bad?.fieldViolations.map(({ field, description }) => [field, description]), [["image.data", "not an image"]]);
  assert.equal(err.findDetails(RetryInfoSchema)[0]?.retryDelay?.seconds, 1n);
  const [info] = err.findDetails(ErrorInfoSchema);
  assert.deepEqual([info?.reason, info?.domain, info?.metadata], ["QUEUE_FULL", "mic2e.v1", { stage: "flux" }]);
});

test("nothing to decode: empty details, never a throw", () => {
  const empty = { fieldViolations: [], metadata: {} };
  assert.deepEqual(errorDetails(new Error("not a ConnectError")), empty);
  assert.deepEqual(errorDetails(undefined), empty);
  assert.deepEqual(errorDetails(failed([])), empty);
  // A truncated detail is dropped; the others still count.
  const truncated = failed([
    { type: "google.rpc.BadRequest", value: new Uint8Array([10, 40, 10]) },
    { type: "google.rpc.ErrorInfo", value: errorInfo("NO_INSTANCES", "mic2e.v1", {}) },
  ]);
  assert.equal(errorDetails(truncated).reason, "NO_INSTANCES");
});
