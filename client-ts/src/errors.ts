/**
 * The `google.rpc` error details the mic2e servers attach to a failed call, decoded.
 *
 * Every error of these servers carries machine-readable details next to its status code
 * (see the README's error table): `BadRequest` field violations on INVALID_ARGUMENT,
 * `RetryInfo` on RESOURCE_EXHAUSTED, and an `ErrorInfo` (reason, domain "mic2e.v1",
 * metadata) on the others. Connect-ES hands them over undecoded (`ConnectError.details`:
 * type name and bytes); {@link errorDetails} reads the three types from their protobuf
 * wire format, whose field numbers are part of the published `google.rpc` API.
 *
 * @module
 */
import { BinaryReader } from "@bufbuild/protobuf/wire";
import { ConnectError } from "@connectrpc/connect";

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

const BAD_REQUEST = "google.rpc.BadRequest";
const RETRY_INFO = "google.rpc.RetryInfo";
const ERROR_INFO = "google.rpc.ErrorInfo";

/** Calls `read(fieldNo, reader)` for each field of `bytes`; skips those it returns false for. */
function eachField(bytes: Uint8Array, read: (no: number, r: BinaryReader) => boolean): void {
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [no, wireType] = reader.tag();
    if (!read(no, reader)) reader.skip(wireType, no);
  }
}

/** Both string fields of a message made of field 1 and field 2 (key/value, field/description). */
function twoStrings(bytes: Uint8Array): [string, string] {
  const out: [string, string] = ["", ""];
  eachField(bytes, (no, r) => {
    if (no !== 1 && no !== 2) return false;
    out[no - 1] = r.string();
    return true;
  });
  return out;
}

function decodeBadRequest(bytes: Uint8Array, into: ErrorDetails): void {
  eachField(bytes, (no, r) => {
    if (no !== 1) return false; // field_violations
    const [field, description] = twoStrings(r.bytes());
    into.fieldViolations.push({ field, description });
    return true;
  });
}

function decodeRetryInfo(bytes: Uint8Array, into: ErrorDetails): void {
  eachField(bytes, (no, r) => {
    if (no !== 1) return false; // retry_delay: google.protobuf.Duration
    let seconds = 0;
    let nanos = 0;
    eachField(r.bytes(), (dno, d) => {
      if (dno === 1) seconds = Number(d.int64());
      else if (dno === 2) nanos = d.int32();
      else return false;
      return true;
    });
    into.retryAfterMs = seconds * 1000 + nanos / 1e6;
    return true;
  });
}

function decodeErrorInfo(bytes: Uint8Array, into: ErrorDetails): void {
  eachField(bytes, (no, r) => {
    if (no === 1) into.reason = r.string();
    else if (no === 2) into.domain = r.string();
    else if (no === 3) {
      const [key, value] = twoStrings(r.bytes()); // map<string, string> entry
      into.metadata[key] = value;
    } else return false;
    return true;
  });
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
  for (const detail of err.details) {
    if (!("type" in detail)) continue; // an outgoing detail (server side): nothing to decode
    try {
      if (detail.type === BAD_REQUEST) decodeBadRequest(detail.value, out);
      else if (detail.type === RETRY_INFO) decodeRetryInfo(detail.value, out);
      else if (detail.type === ERROR_INFO) decodeErrorInfo(detail.value, out);
    } catch {
      // A malformed detail is dropped, as ConnectError.findDetails does; the code and
      // message of the error still stand.
    }
  }
  return out;
}

