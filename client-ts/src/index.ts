/**
 * TypeScript client of the mic2e.v1 API.
 *
 * {@link Mic2eClient} calls the orchestrator's `mic2e.v1.EditService` over the gRPC
 * protocol (HTTP/2, via `@connectrpc/connect-node`), or over the Connect protocol or
 * gRPC-Web against a server's HTTP port ({@link Mic2eClientOptions.protocol}). Requests are plain objects shaped like
 * the protobuf messages (every field optional, `oneof`s as `{ case, value }`); responses are
 * the generated message types, re-exported from this module together with every other
 * message and enum of `protos/mic2e/v1`.
 *
 * Failures reject (unary calls) or throw from the iteration (streams) with a
 * {@link ConnectError}; its `code` is the gRPC status code ({@link Code}), e.g.
 * `Code.InvalidArgument` (3) for a bad field, `Code.NotFound` (5) for an unknown image
 * reference or a text target that found nothing. {@link errorDetails} decodes what the
 * servers attach: the refused fields, the retry delay, the reason and its metadata.
 *
 * @module
 */
import { type MessageInitShape, create } from "@bufbuild/protobuf";
import {
  type CallOptions,
  type Client,
  Code,
  ConnectError,
  type Interceptor,
  type Transport,
  createClient,
} from "@connectrpc/connect";
import {
  Http2SessionManager,
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import { createHash } from "node:crypto";
import * as http from "node:http";
import type { SecureClientSessionOptions } from "node:http2";
import * as https from "node:https";

import { errorDetails } from "./errors.js";
import { applyPatch, canDecodeLikeServers } from "./patches.js";

import type { EncodedImage, ImageFormat, ImagePatch, ImageSchema } from "./gen/mic2e/v1/common_pb.js";
import {
  type GenerateRequestSchema,
  type GenerateResponse,
  InpaintOptionsSchema,
  type InpaintRequestSchema,
  type InpaintResponse,
} from "./gen/mic2e/v1/flux_pb.js";
import { ClearOptionsSchema } from "./gen/mic2e/v1/object_clear_pb.js";
import {
  EditService,
  type RemoveObjectsRequestSchema,
  type RemoveObjectsResponse,
  type ReplaceObjectsRequestSchema,
  type ReplaceObjectsResponse,
} from "./gen/mic2e/v1/orchestrator_pb.js";
import type {
  SegmentByPromptRequestSchema,
  SegmentByPromptResponse,
  SegmentByTextRequestSchema,
  SegmentByTextResponse,
} from "./gen/mic2e/v1/segmentation_pb.js";

export * from "./gen/mic2e/v1/common_pb.js";
export * from "./gen/mic2e/v1/flux_pb.js";
export * from "./gen/mic2e/v1/object_clear_pb.js";
export * from "./gen/mic2e/v1/orchestrator_pb.js";
export * from "./gen/mic2e/v1/segmentation_pb.js";
export { Code, ConnectError } from "@connectrpc/connect";
export { type ErrorDetails, type FieldViolation, errorDetails } from "./errors.js";
export {
  type BadRequest,
  type BadRequest_FieldViolation,
  BadRequestSchema,
  type ErrorInfo,
  ErrorInfoSchema,
  type RetryInfo,
  RetryInfoSchema,
} from "./rpc_details.js";
export type { CallOptions, Interceptor } from "@connectrpc/connect";
export { type DecodedImage, applyPatch, decodeImage, encodeImage, pastePatch, patchesSupported } from "./patches.js";

/** A `RemoveObjects` request as a plain object (see `RemoveObjectsRequest` in the protos). */
export type RemoveObjectsInit = MessageInitShape<typeof RemoveObjectsRequestSchema>;
/** A `ReplaceObjects` request as a plain object (see `ReplaceObjectsRequest` in the protos). */
export type ReplaceObjectsInit = MessageInitShape<typeof ReplaceObjectsRequestSchema>;
/** An `Inpaint` request as a plain object (see `InpaintRequest` in the protos). */
export type InpaintInit = MessageInitShape<typeof InpaintRequestSchema>;
/** A `SegmentByText` request as a plain object. */
export type SegmentByTextInit = MessageInitShape<typeof SegmentByTextRequestSchema>;
/** A `SegmentByPrompt` request as a plain object. */
export type SegmentByPromptInit = MessageInitShape<typeof SegmentByPromptRequestSchema>;
/** A `Generate` request as a plain object. */
export type GenerateInit = MessageInitShape<typeof GenerateRequestSchema>;
/** An input image as a plain object: `{ source: { case: "data" | "sha256", value } }`. */
export type ImageInit = MessageInitShape<typeof ImageSchema>;

/**
 * The RPC protocol a {@link Mic2eClient} speaks (see {@link Mic2eClientOptions.protocol}):
 * `"grpc"` to a server's gRPC port, `"connect"` or `"grpc-web"` to its HTTP port.
 */
export type Protocol = "grpc" | "connect" | "grpc-web";

/** Settings of a {@link Mic2eClient}. Every field is optional. */
export interface Mic2eClientOptions {
  /**
   * The RPC protocol. `"grpc"` (the default) calls a server's gRPC port (default 50051 for
   * the orchestrator) over HTTP/2. `"connect"` (the Connect protocol) and `"grpc-web"` call
   * its HTTP port instead (`--http-port`, `MIC2E_HTTP_PORT`; `mic2e-server up` gives the
   * orchestrator 8080), where the same handlers answer: the same events, errors with the
   * same details, deadlines, cancellation. They pass where gRPC does not (HTTP/1.1 proxies,
   * load balancers without HTTP/2 to the back end); `"connect"` with
   * `useBinaryFormat: false` is plain JSON over POST, readable with curl.
   */
  protocol?: Protocol;
  /**
   * HTTP version of `"connect"` and `"grpc-web"`: `"2"` (the default; cleartext HTTP/2
   * with prior knowledge without `tls`) or `"1.1"`. `"grpc"` needs `"2"`: the constructor
   * throws for `"1.1"`.
   */
  httpVersion?: "1.1" | "2";
  /**
   * Messages in the protobuf binary format (true, the default) or in JSON (false; bytes
   * fields travel in base64, a third larger). For `"connect"` and `"grpc-web"` (the
   * servers accept both; gRPC is always binary).
   */
  useBinaryFormat?: boolean;
  /** Connect with TLS (`https`) instead of plaintext. Default false. */
  tls?: boolean;
  /**
   * TLS and socket settings, e.g. `{ ca }` to trust a private CA, or `{ cert, key }` for
   * mutual TLS: options of Node's `http2.connect()` over HTTP/2, of `https.request()` (or
   * `http.request()`) with `httpVersion: "1.1"`.
   */
  nodeOptions?: SecureClientSessionOptions | https.RequestOptions;
  /** Deadline of every call in milliseconds, unless a call passes its own. Default none. */
  timeoutMs?: number;
  /** Largest message sent or received, in bytes. Default 64 MiB, the servers' own limit. */
  maxMessageBytes?: number;
  /** Interceptors run on every call, e.g. to add authentication metadata. */
  interceptors?: Interceptor[];
  /**
   * Send an image's bytes once, then only its SHA-256 (the orchestrator keeps recent
   * images); when the server has dropped it (NOT_FOUND, reason IMAGE_NOT_FOUND) the call
   * is made again once with the bytes. Default true, as the Python client. (Whatever
   * this says, a call that fails UNAVAILABLE before its first event is made once more.)
   */
  imageReferences?: boolean;
  /**
   * Ask the servers for only the part of the picture an edit changed (`outputPatch`), and
   * rebuild the whole picture here: `removeObjects`, `replaceObjects` and `inpaint` results
   * then still carry the whole picture in `image` (encoded as the request's
   * `outputFormat` asks, with the input's ICC profile), and `patch` as the server sent it
   * (so `patch` set on a result you did not ask a patch for says it came as one). A
   * 12-megapixel photo's result then costs the wire a few hundred KB instead of tens of
   * MB, and this process a decode and an encode of the photo (sharp, libvips).
   *
   * Asked only when the request's image is given as bytes (`imageFromBytes`) this client
   * can decode exactly as the servers do (a JPEG, PNG or WebP of one frame, not CMYK), sharp
   * loads on this platform, and the request does not set `outputPatch` itself: `true`
   * gets the patch handed through untouched (no `image`), `false` in a plain object gets
   * the whole picture from the server. Default true, as the Python client.
   */
  imagePatches?: boolean;
}

/** A request that may carry an input image. */
type WithImage = { image?: ImageInit };

/** The options field of each request that can ask for a patch, and its schema. */
const PATCH_OPTIONS = {
  clearOptions: ClearOptionsSchema,
  inpaintOptions: InpaintOptionsSchema,
  options: InpaintOptionsSchema,
} as const;
type PatchOptionsKey = keyof typeof PATCH_OPTIONS;

/** Options as a caller may give them: a plain object, a message, or nothing. */
type PatchOptionsInit = { outputPatch?: boolean; outputFormat?: ImageFormat; $typeName?: string } | undefined;

/** A result that may carry a patch (RemoveObjects, ReplaceObjects, Inpaint). */
type PatchableResult = { image?: EncodedImage; patch?: ImagePatch };

/** A stream event whose `result` case may carry a patch. */
type PatchableEvent = { event: { case: string | undefined; value?: unknown } };

const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/** An input image carrying its encoded bytes (PNG, JPEG or WebP). */
export function imageFromBytes(data: Uint8Array): ImageInit {
  return { source: { case: "data", value: data } };
}

/**
 * An input image by reference: the lowercase hex SHA-256 of bytes the server received
 * before (e.g. a response's `imageSha256`). An unknown reference fails with NOT_FOUND.
 */
export function imageFromSha256(sha256: string): ImageInit {
  return { source: { case: "sha256", value: sha256 } };
}

/** `"host:port"` (or a full `http(s)://` URL) to the base URL of the transport. */
function baseUrlOf(address: string, tls: boolean): string {
  if (/^https?:\/\//.test(address)) return address;
  return `${tls ? "https" : "http"}://${address}`;
}

/**
 * A client of the orchestrator (`mic2e.v1.EditService`, default port 50051; with
 * {@link Mic2eClientOptions.protocol} `"connect"` or `"grpc-web"`, its HTTP port, 8080
 * under `mic2e-server up`).
 *
 * Over HTTP/2, one connection is opened on the first call, shared by all calls, kept alive
 * with PING frames while calls run, and does not keep the process alive when idle; over
 * HTTP/1.1, a pool of keep-alive connections does the same. Call
 * {@link Mic2eClient.close} to drop them at once. An image's bytes are sent once; later
 * calls with the same bytes send its SHA-256 (see {@link Mic2eClientOptions.imageReferences}).
 * Edits of an image given as bytes come back from the servers as patches, applied here to
 * those bytes: results still carry the whole picture (see
 * {@link Mic2eClientOptions.imagePatches}).
 *
 * @example
 * ```ts
 * const client = new Mic2eClient("localhost:50051");
 * for await (const event of client.removeObjects({
 *   image: imageFromBytes(png),
 *   target: { case: "text", value: { text: "dog" } },
 * })) {
 *   if (event.event.case === "result") writeFileSync("out.png", event.event.value.image!.data);
 * }
 * client.close();
 * ```
 */
export class Mic2eClient {
  /** The address this client calls, as given. */
  readonly address: string;
  /** What holds the connections: closed by {@link Mic2eClient.close}. */
  readonly #connections: { abort(): void } | { destroy(): void };
  readonly #edit: Client<typeof EditService>;
  readonly #imageReferences: boolean;
  readonly #imagePatches: boolean;
  /** SHA-256 of every image this client has sent in full. */
  readonly #sent = new Set<string>();

  /**
   * @param address `host:port` of the orchestrator (e.g. `localhost:50051`, `[::1]:50051`),
   *   or a full `http://` / `https://` URL.
   * @param options Connection settings; see {@link Mic2eClientOptions}.
   */
  constructor(address: string, options: Mic2eClientOptions = {}) {
    this.address = address;
    const tls = options.tls ?? false;
    const baseUrl = baseUrlOf(address, tls);
    const protocol = options.protocol ?? "grpc";
    const httpVersion = options.httpVersion ?? "2";
    if (protocol === "grpc" && httpVersion !== "2") {
      throw new Error('the gRPC protocol needs HTTP/2 (httpVersion "2"); use protocol "connect" or "grpc-web" for HTTP/1.1');
    }
    const maxBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    const common = {
      baseUrl,
      interceptors: options.interceptors ?? [],
      readMaxBytes: maxBytes,
      writeMaxBytes: maxBytes,
      ...(options.timeoutMs !== undefined ? { defaultTimeoutMs: options.timeoutMs } : {}),
    };
    // What carries the calls: one HTTP/2 session, or a pool of HTTP/1.1 connections.
    let carrier: { httpVersion: "2"; sessionManager: Http2SessionManager } | { httpVersion: "1.1"; nodeOptions: https.RequestOptions };
    if (httpVersion === "2") {
      // Same keepalive as the Python client (30 s interval, 10 s timeout); the servers allow it.
      const sessions = new Http2SessionManager(
        baseUrl,
        { pingIntervalMs: 30_000, pingTimeoutMs: 10_000 },
        options.nodeOptions as SecureClientSessionOptions | undefined,
      );
      this.#connections = sessions;
      carrier = { httpVersion: "2", sessionManager: sessions };
    } else {
      // An agent of our own, so close() can drop its connections; a keep-alive agent unrefs
      // its idle sockets, so they do not keep the process alive.
      const agent = tls ? new https.Agent({ keepAlive: true }) : new http.Agent({ keepAlive: true });
      this.#connections = agent;
      carrier = { httpVersion: "1.1", nodeOptions: { ...(options.nodeOptions as https.RequestOptions), agent } };
    }
    const useBinaryFormat = options.useBinaryFormat ?? true;
    let transport: Transport;
    if (carrier.httpVersion === "2" && protocol === "grpc") transport = createGrpcTransport({ ...common, ...carrier });
    else if (protocol === "connect") transport = createConnectTransport({ ...common, ...carrier, useBinaryFormat });
    else transport = createGrpcWebTransport({ ...common, ...carrier, useBinaryFormat });
    this.#edit = createClient(EditService, transport);
    this.#imageReferences = options.imageReferences ?? true;
    this.#imagePatches = options.imagePatches ?? true;
  }

  /**
   * The request to send with `outputPatch` set in its `key` options, and the input bytes
   * the patch will apply to; undefined when this call does not ask for a patch (see
   * {@link Mic2eClientOptions.imagePatches}).
   */
  async #patchPlan<R extends object>(
    request: R,
    key: PatchOptionsKey,
  ): Promise<{ request: R; input: Uint8Array; format: ImageFormat | undefined } | undefined> {
    if (!this.#imagePatches) return undefined;
    const source = (request as WithImage).image?.source;
    if (source?.case !== "data" || !(source.value instanceof Uint8Array)) return undefined;
    const given = (request as Record<string, unknown>)[key] as PatchOptionsInit;
    // A message's `false` is its default, not a choice; a plain object's is the caller's.
    if (given?.outputPatch === true || (given?.outputPatch === false && given.$typeName === undefined)) return undefined;
    // Only when the bytes decode here exactly as on the servers (a header read, no pixels).
    if (!(await canDecodeLikeServers(source.value))) return undefined;
    // A copy (the caller's object is left as it was), built afresh from the fields.
    const { $typeName: _, ...fields } = given ?? {};
    const options = create(PATCH_OPTIONS[key], { ...fields, outputPatch: true });
    return { request: { ...request, [key]: options }, input: source.value, format: given?.outputFormat };
  }

  /**
   * `call` with a patch asked for when {@link Mic2eClientOptions.imagePatches} allows;
   * the result's patch applied to the input, into the result's `image`.
   */
  async *#patched<R extends object, T extends PatchableEvent>(
    request: R,
    key: PatchOptionsKey,
    call: (r: R) => AsyncIterable<T>,
  ): AsyncIterable<T> {
    const plan = await this.#patchPlan(request, key);
    if (plan === undefined) {
      yield* call(request);
      return;
    }
    for await (const event of call(plan.request)) {
      if (event.event.case === "result") {
        const result = event.event.value as PatchableResult;
        // Decoded and encoded only now: a call that fails or is cancelled earlier costs nothing.
        if (result.patch !== undefined && result.image === undefined) {
          result.image = await applyPatch(plan.input, result.patch, plan.format);
        }
      }
      yield event;
    }
  }

  /**
   * The request to send first: its image by reference when these bytes were sent before.
   * `retry` is the request with the bytes, when the reference may be unknown to the server.
   */
  #byReference<R extends object>(request: R): { first: R; retry?: R; digest?: string } {
    const source = (request as WithImage).image?.source;
    if (!this.#imageReferences || source?.case !== "data" || !(source.value instanceof Uint8Array)) {
      return { first: request };
    }
    const digest = createHash("sha256").update(source.value).digest("hex");
    if (!this.#sent.has(digest)) {
      this.#sent.add(digest);
      return { first: request };
    }
    return { first: { ...request, image: imageFromSha256(digest) } as R, retry: request, digest };
  }

  /** Whether `err` says the server no longer holds the referenced image. */
  #lostImage(err: unknown, digest: string | undefined): boolean {
    if (digest === undefined || !(err instanceof ConnectError) || err.code !== Code.NotFound) return false;
    const { reason, metadata } = errorDetails(err);
    if (reason !== "IMAGE_NOT_FOUND") return false;
    if (metadata.sha256 !== undefined && metadata.sha256 !== digest) return false; // another image
    this.#sent.delete(digest); // the next call sends the bytes again
    return true;
  }

  /**
   * Why a call that failed before its first event may be made again, each cause once (the
   * Python client's policy): `"bytes"` when the server lost the referenced image (again
   * with the bytes), `"unavailable"` when the call never got to run (a connection closing
   * as it aged, a replica going away; again as it was). Undefined: it may not.
   */
  #retryCause(err: unknown, digest: string | undefined, tried: Set<string>): string | undefined {
    let cause: string | undefined;
    if (this.#lostImage(err, digest)) cause = "bytes";
    else if (err instanceof ConnectError && err.code === Code.Unavailable) cause = "unavailable";
    if (cause === undefined || tried.has(cause)) return undefined;
    tried.add(cause);
    if (cause === "bytes") this.#sent.add(digest!); // the retry sends them
    return cause;
  }

  async #unary<R extends object, T>(request: R, call: (r: R) => Promise<T>): Promise<T> {
    const { first, retry, digest } = this.#byReference(request);
    const tried = new Set<string>();
    for (;;) {
      try {
        return await call(tried.has("bytes") ? retry! : first);
      } catch (err) {
        if (this.#retryCause(err, digest, tried) === undefined) throw err;
      }
    }
  }

  async *#stream<R extends object, T>(request: R, call: (r: R) => AsyncIterable<T>): AsyncIterable<T> {
    const { first, retry, digest } = this.#byReference(request);
    const tried = new Set<string>();
    for (;;) {
      let delivered = false;
      try {
        for await (const event of call(tried.has("bytes") ? retry! : first)) {
          delivered = true;
          yield event;
        }
        return;
      } catch (err) {
        // Only before the first event: nothing has run yet.
        if (delivered || this.#retryCause(err, digest, tried) === undefined) throw err;
      }
    }
  }

  /**
   * Removes the target (text, clicks/box, or ready masks) from the image.
   *
   * Streams, in order: `progress` events of the segmentation stage and then the
   * `segmentation` event with the instances (not for a mask target), one `progress` per
   * removal step, then exactly one `result`, always last. A failing stage throws from the
   * iteration after the earlier events were delivered. The result's `image` is the whole
   * picture at the input's size, rebuilt here from a patch when it came as one
   * ({@link Mic2eClientOptions.imagePatches}; `patch` is then set too); `repaintedBox`
   * bounds every pixel that is not the input's own.
   *
   * @param request The image, exactly one `target`, and optional `clearOptions`,
   *   `maskDilation`, `label`.
   * @param options Per-call `timeoutMs`, `signal` (abort to cancel; the server stops at
   *   the next step), `headers`.
   */
  removeObjects(request: RemoveObjectsInit, options?: CallOptions): AsyncIterable<RemoveObjectsResponse> {
    return this.#patched(request, "clearOptions", (p) => this.#stream(p, (r) => this.#edit.removeObjects(r, options)));
  }

  /**
   * Repaints the target (text, clicks/box, ready masks, or everything in a `box`) as the
   * `replacement` prompt says ("a cat"), with FLUX on the flux server.
   *
   * Streams as {@link Mic2eClient.removeObjects}: the segmentation stage's `progress`
   * and `segmentation` events (not for a masks or box target), one `progress` per
   * denoising step, then exactly one `result`: the image at the input's size (the
   * input's own pixels outside the dilated, feathered mask; rebuilt here from a patch
   * when it came as one, see {@link Mic2eClientOptions.imagePatches}), the mask
   * repainted, the `repaintedBox`, every stage's provenance.
   *
   * @param request The image, exactly one `target`, the `replacement` and optional
   *   `inpaintOptions` (strength, steps, seed, guidanceScale, maskDilation, feather).
   * @param options Per-call `timeoutMs`, `signal`, `headers`.
   */
  replaceObjects(request: ReplaceObjectsInit, options?: CallOptions): AsyncIterable<ReplaceObjectsResponse> {
    return this.#patched(request, "inpaintOptions", (p) => this.#stream(p, (r) => this.#edit.replaceObjects(r, options)));
  }

  /**
   * Repaints the masked region of an image from a prompt: one `progress` per denoising
   * step, then exactly one `result`. Passed through to the flux server. As for the other
   * edits, the result's `image` is the whole picture, rebuilt here from a patch when it
   * came as one ({@link Mic2eClientOptions.imagePatches}).
   */
  inpaint(request: InpaintInit, options?: CallOptions): AsyncIterable<InpaintResponse> {
    return this.#patched(request, "options", (p) => this.#stream(p, (r) => this.#edit.inpaint(r, options)));
  }

  /**
   * Every instance matching a short text prompt ("dog", "red car"), best score first.
   * Passed through to the segmentation server.
   */
  segmentByText(request: SegmentByTextInit, options?: CallOptions): Promise<SegmentByTextResponse> {
    return this.#unary(request, (r) => this.#edit.segmentByText(r, options));
  }

  /**
   * The one object marked by clicked points and/or a box: the best mask, plus the
   * alternatives when `returnAlternatives` is set. Passed through to the segmentation
   * server.
   */
  segmentByPrompt(request: SegmentByPromptInit, options?: CallOptions): Promise<SegmentByPromptResponse> {
    return this.#unary(request, (r) => this.#edit.segmentByPrompt(r, options));
  }

  /**
   * Generates an image from a prompt with FLUX.1-schnell: one `progress` per denoising
   * step, then exactly one `result`. Passed through to the flux server.
   */
  generate(request: GenerateInit, options?: CallOptions): AsyncIterable<GenerateResponse> {
    return this.#stream(request, (r) => this.#edit.generate(r, options));
  }

  /** Closes the connections; calls still running fail. A later call reconnects. */
  close(): void {
    if ("abort" in this.#connections) this.#connections.abort();
    else this.#connections.destroy();
  }
}
