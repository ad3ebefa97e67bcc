// google.rpc error details encoded as a gRPC server sends them (protobuf wire format), for
// tests that need a server's error without that server.
import { BinaryWriter } from "@bufbuild/protobuf/wire";

/** A message of two string fields, 1 and 2 (a map entry, a field violation). */
export const pair = (a: string, b: string) => new BinaryWriter().tag(1, 2).string(a).tag(2, 2).string(b).finish();

/** google.rpc.BadRequest with these (field, description) violations. */
export function badRequest(...violations: [string, string][]): Uint8Array {
  const w = new BinaryWriter();
  for (const [field, description] of violations) w.tag(1, 2).bytes(pair(field, description));
  return w.finish();
}

/** google.rpc.RetryInfo with a retry_delay of `seconds` + `nanos`. */
export function retryInfo(seconds: number, nanos: number): Uint8Array {
  const duration = new BinaryWriter().tag(1, 0).int64(seconds).tag(2, 0).int32(nanos).finish();
  return new BinaryWriter().tag(1, 2).bytes(duration).finish();
}

/** google.rpc.ErrorInfo, plus a field from a newer version of the message (to be skipped). */
export function errorInfo(reason: string, domain: string, metadata: Record<string, string>): Uint8Array {
  const w = new BinaryWriter().tag(1, 2).string(reason).tag(2, 2).string(domain);
  for (const [k, v] of Object.entries(metadata)) w.tag(3, 2).bytes(pair(k, v));
  w.tag(9, 0).int32(7);
  return w.finish();
}
