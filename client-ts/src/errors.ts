/**
 * The `google.rpc` error details the mic2e servers attach to a failed call, decoded.
 *
 * Every error of these servers carries machine-readable details next to its status code
 * (see the README's error table): `BadRequest` field violations on INVALID_ARGUMENT,
 * `RetryInfo` on RESOURCE_EXHAUSTED, and an `ErrorInfo` (reason, domain "mic2e.v1",
 * metadata) on the others. {@link errorDetails} decodes the three with
 * `ConnectError.findDetails` and the schemas of `./rpc_details.js` into one plain object.
 *
 * @module
 */
import { ConnectError } from "@connectrpc/connect";

import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "./rpc_details.js";

/** One bad field of a request (`google.rpc.BadRequest.FieldViolation`). */
export interface FieldViolation {
  /** Path of the field in the request, e.g. `"target"` or `"clear_options.steps"`. */
  field: string;
  /** Why the value was refused. */
  description: string;
}

/** The details of a failed call, with empty values where a server sent none. */
export interface ErrorDetails {
  /** INVALID_ARGUMENT: every refused field (`BadRequest`); empty otherwise. */
  fieldViolations: FieldViolation[];
  /**
   * RESOURCE_EXHAUSTED: how long to wait before retrying, in milliseconds (`RetryInfo`);
   * undefined when the server gave no delay.
   */
  retryAfterMs?: number;
  /**
   * `ErrorInfo.reason`, e.g. `QUEUE_FULL`, `DEADLINE_TOO_SHORT`, `IMAGE_NOT_FOUND`,
   * `NO_INSTANCES`, `STAGE_FAILED`, `DEVICE_LOST`; undefined without an ErrorInfo.
   */
  reason?: string;
  /** `ErrorInfo.domain`: `"mic2e.v1"` for errors raised by these servers. */
  domain?: string;
  /** `ErrorInfo.metadata`, e.g. `{ stage: "object_clear" }` or `{ sha256: "..." }`. */
  metadata: Record<string, string>;
}

/**
 * The decoded error details of `err` (a {@link ConnectError} from any call of this
 * client); empty details for anything else, and for detail types it does not know.
 *
 * ```ts
 * } catch (err) {
 *   const { fieldViolations, retryAfterMs, reason } = errorDetails(err);
 * }
 * ```
 */
export function errorDetails(err: unknown): ErrorDetails {
  const out: ErrorDetails = { fieldViolations: [], metadata: {} };
  if (!(err instanceof ConnectError)) return out;
  // findDetails drops a malformed detail; the code and message of the error still stand.
  for (const { fieldViolations } of err.findDetails(BadRequestSchema)) {
    for (const { field, description } of fieldViolations) out.fieldViolations.push({ field, description });
  }
  for (const { retryDelay } of err.findDetails(RetryInfoSchema)) {
    if (retryDelay !== undefined) out.retryAfterMs = Number(retryDelay.seconds) * 1000 + retryDelay.nanos / 1e6;
  }
  // The orchestrator passes a model server's ErrorInfo on before its own (STAGE_FAILED):
  // the last reason wins, the metadata of all of them is kept.
  for (const info of err.findDetails(ErrorInfoSchema)) {
    out.reason = info.reason;
    out.domain = info.domain;
    Object.assign(out.metadata, info.metadata);
  }
  return out;
}
