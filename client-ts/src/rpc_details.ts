/**
 * Schemas of the `google.rpc` error details the mic2e servers attach to a failed call
 * (`BadRequest`, `RetryInfo`, `ErrorInfo`), for `ConnectError.findDetails`:
 *
 * ```ts
 * for (const bad of err.findDetails(BadRequestSchema)) console.log(bad.fieldViolations);
 * ```
 *
 * `src/gen/` is generated from this repository's protos only, and the googleapis protos
 * are not a dependency, so the three messages are described here: a descriptor of the
 * fields these servers send, under their published names and field numbers (fields a
 * newer version adds are kept as unknown fields, as for any message). Plain
 * `@bufbuild/protobuf`, no Node API: the playground page uses it in the browser too.
 *
 * @module
 */
import { type Message, create, createFileRegistry } from "@bufbuild/protobuf";
import type { GenMessage } from "@bufbuild/protobuf/codegenv2";
import {
  type Duration,
  FieldDescriptorProto_Label as Label,
  FieldDescriptorProto_Type as Type,
  FileDescriptorProtoSchema,
  file_google_protobuf_duration,
} from "@bufbuild/protobuf/wkt";

/** `google.rpc.BadRequest.FieldViolation`: one refused field of a request. */
export type BadRequest_FieldViolation = Message<"google.rpc.BadRequest.FieldViolation"> & {
  /** Path of the field, e.g. `"target"` or `"clear_options.steps"`. */
  field: string;
  /** Why its value was refused. */
  description: string;
};

/** `google.rpc.BadRequest`: the refused fields of an INVALID_ARGUMENT request. */
export type BadRequest = Message<"google.rpc.BadRequest"> & {
  /** Every refused field. */
  fieldViolations: BadRequest_FieldViolation[];
};

/** `google.rpc.RetryInfo`: when to retry a RESOURCE_EXHAUSTED call. */
export type RetryInfo = Message<"google.rpc.RetryInfo"> & {
  /** How long to wait before retrying. */
  retryDelay?: Duration;
};

/** `google.rpc.ErrorInfo`: why a call failed, as a machine-readable reason. */
export type ErrorInfo = Message<"google.rpc.ErrorInfo"> & {
  /** e.g. `QUEUE_FULL`, `IMAGE_NOT_FOUND`, `STAGE_FAILED`. */
  reason: string;
  /** `"mic2e.v1"` for errors raised by these servers. */
  domain: string;
  /** e.g. `{ stage: "object_clear" }`. */
  metadata: { [key: string]: string };
};

const stringField = (name: string, number: number, jsonName: string) =>
  ({ name, number, jsonName, type: Type.STRING, label: Label.OPTIONAL }) as const;

/** A message field of type `typeName` (fully qualified, with the leading dot). */
const messageField = (name: string, number: number, jsonName: string, typeName: string, label = Label.OPTIONAL) =>
  ({ name, number, jsonName, type: Type.MESSAGE, typeName, label }) as const;

const registry = createFileRegistry(
  create(FileDescriptorProtoSchema, {
    name: "google/rpc/error_details.proto",
    package: "google.rpc",
    syntax: "proto3",
    dependency: ["google/protobuf/duration.proto"],
    messageType: [
      {
        name: "BadRequest",
        field: [messageField("field_violations", 1, "fieldViolations", ".google.rpc.BadRequest.FieldViolation", Label.REPEATED)],
        nestedType: [{ name: "FieldViolation", field: [stringField("field", 1, "field"), stringField("description", 2, "description")] }],
      },
      { name: "RetryInfo", field: [messageField("retry_delay", 1, "retryDelay", ".google.protobuf.Duration")] },
      {
        name: "ErrorInfo",
        field: [
          stringField("reason", 1, "reason"),
          stringField("domain", 2, "domain"),
          messageField("metadata", 3, "metadata", ".google.rpc.ErrorInfo.MetadataEntry", Label.REPEATED),
        ],
        // A map<string, string> is a repeated entry message, as protoc describes it.
        nestedType: [{ name: "MetadataEntry", field: [stringField("key", 1, "key"), stringField("value", 2, "value")], options: { mapEntry: true } }],
      },
    ],
  }),
  (file) => (file === "google/protobuf/duration.proto" ? file_google_protobuf_duration : undefined),
);

/** The message described as `name` in the registry above, typed as `T`. */
function schema<T extends Message>(name: T["$typeName"]): GenMessage<T> {
  const desc = registry.getMessage(name);
  if (desc === undefined) throw new Error(`${name} is missing from the error-details descriptor`);
  return desc as GenMessage<T>;
}

/** Schema of `google.rpc.BadRequest` (INVALID_ARGUMENT: the refused fields). */
export const BadRequestSchema = schema<BadRequest>("google.rpc.BadRequest");
/** Schema of `google.rpc.RetryInfo` (RESOURCE_EXHAUSTED: when to retry). */
export const RetryInfoSchema = schema<RetryInfo>("google.rpc.RetryInfo");
/** Schema of `google.rpc.ErrorInfo` (the reason, domain and metadata). */
export const ErrorInfoSchema = schema<ErrorInfo>("google.rpc.ErrorInfo");
