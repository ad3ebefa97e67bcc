// Mic2eClient over the orchestrator's HTTP port (MIC2E_HTTP_URL, its base URL): the Connect
// protocol in JSON and in binary, and gRPC-Web, over HTTP/1.1 and HTTP/2. The same calls as
// over gRPC must behave the same: streamed events, image patches and references, errors
// with their google.rpc details, interceptors and deadlines.
// tests/e2e/test_typescript_client.py starts the tiny stack and runs this.
import * as assert from "node:assert/strict";
import { after, describe, test } from "node:test";

import {
  Code,
  ConnectError,
  Mic2eClient,
  type Mic2eClientOptions,
  type RemoveObjectsInit,
  type RemoveObjectsResponse,
  errorDetails,
  imageFromBytes,
  imageFromSha256,
} from "../src/index.js";
import { encodePng, pngSize } from "./png.js";
import { Spy } from "./spy.js";

const baseUrl = process.env.MIC2E_HTTP_URL;
if (!baseUrl) throw new Error("MIC2E_HTTP_URL (base URL of the orchestrator's HTTP port) is not set");

const W = 120;
const H = 90;
const CALL = { timeoutMs: 60_000 };
const FAST = { steps: 2, shortSide: 256, seed: 0n };

/** A width x height RGB PNG, distinct per seed (so no other test has sent its bytes before). */
function picture(seed: number, width = W, height = H): Uint8Array {
  const rgb = new Uint8Array(width * height * 3).map((_, i) => (i * 29 + seed * 113) % 251);
  return encodePng(width, height, 3, rgb);
}

/** Each way of reaching the HTTP port; together they cover both formats and both HTTP versions. */
const PROTOCOLS: [string, Mic2eClientOptions][] = [
  ["Connect, JSON, HTTP/1.1", { protocol: "connect", useBinaryFormat: false, httpVersion: "1.1" }],
  ["Connect, binary, HTTP/2", { protocol: "connect", useBinaryFormat: true, httpVersion: "2" }],
  ["gRPC-Web, HTTP/1.1", { protocol: "grpc-web", httpVersion: "1.1" }],
];

/** All events of a removal, in order. */
async function drain(client: Mic2eClient, request: RemoveObjectsInit): Promise<RemoveObjectsResponse[]> {
  const events: RemoveObjectsResponse[] = [];
  for await (const event of client.removeObjects(request, CALL)) events.push(event);
  return events;
}

/** Asserts `err` is a ConnectError with `code`; returns it. */
function connectError(err: unknown, code: Code): ConnectError {
  if (!(err instanceof ConnectError)) assert.fail(`expected a ConnectError, got ${String(err)}`);
  assert.equal(err.code, code, `code ${Code[err.code]}: ${err.rawMessage}`);
  return err;
}

PROTOCOLS.forEach(([name, options], index) => {
  describe(name, () => {
    // Interceptors run on these transports as on gRPC: this one sees how each call sent
    // its image.
    const spy = new Spy();
    const client = new Mic2eClient(baseUrl, { ...options, interceptors: [spy.interceptor] });
    after(() => client.close());

    test("RemoveObjects by a click streams progress, the masks, then the whole picture; the bytes go once", { timeout: 90_000 }, async () => {
      const request: RemoveObjectsInit = {
        image: imageFromBytes(picture(index)),
        target: { case: "prompt", value: { points: [{ x: 60, y: 45 }] } },
        clearOptions: FAST,
      };
      for (const attempt of [1, 2]) {
        const events = await drain(client, request);
        const kinds = events.map((e) => e.event.case);
        assert.deepEqual(kinds, ["progress", "progress", "segmentation", "progress", "progress", "result"], `call ${attempt}`);
        const steps = events.flatMap((e) => (e.event.case === "progress" ? [[e.event.value.stage, e.event.value.step, e.event.value.totalSteps]] : []));
        assert.deepEqual(steps.slice(2), [["object_clear", 1, 2], ["object_clear", 2, 2]]);
        const segmentation = events[2]?.event;
        if (segmentation?.case !== "segmentation") assert.fail("no segmentation event");
        assert.equal(segmentation.value.instances.length, 1, "one object for a click");
        const mask = segmentation.value.instances[0]?.mask;
        assert.deepEqual([mask?.width, mask?.height], [W, H]);
        const encoding = mask?.encoding;
        if (encoding?.case === "rle") assert.equal(encoding.value.counts.reduce((a, b) => a + b, 0), W * H, "RLE covers the image");
        else if (encoding?.case === "png") assert.deepEqual(pngSize(encoding.value), { width: W, height: H });
        else assert.fail("a mask without pixels");
        const result = events.at(-1)?.event;
        if (result?.case !== "result") assert.fail("the last event is not the result");
        // Asked as a patch and rebuilt here, as over gRPC.
        assert.ok(result.value.patch, "the result came as a patch");
        assert.deepEqual(pngSize(result.value.image?.data ?? new Uint8Array()), { width: W, height: H });
        assert.deepEqual([result.value.image?.width, result.value.image?.height], [W, H]);
      }
      assert.deepEqual(spy.seen, ["data", "sha256"], "the bytes once, then their SHA-256");
    });

    test("errors carry their google.rpc details: BadRequest's field, ErrorInfo's reason", { timeout: 30_000 }, async () => {
      const seen: RemoveObjectsResponse[] = [];
      await assert.rejects(
        async () => {
          for await (const event of client.removeObjects({ image: imageFromBytes(picture(index)), clearOptions: FAST }, CALL)) {
            seen.push(event);
          }
        },
        (err: unknown) => {
          const error = connectError(err, Code.InvalidArgument);
          assert.match(error.rawMessage, /target/);
          assert.deepEqual(errorDetails(error).fieldViolations.map((v) => v.field), ["target"]);
          return true;
        },
      );
      assert.deepEqual(seen, [], "no event before the error");

      const unknown = "f".repeat(64);
      await assert.rejects(client.segmentByText({ image: imageFromSha256(unknown), text: "dog" }, CALL), (err: unknown) => {
        const details = errorDetails(connectError(err, Code.NotFound));
        assert.deepEqual([details.reason, details.domain, details.metadata.sha256], ["IMAGE_NOT_FOUND", "mic2e.v1", unknown]);
        return true;
      });
    });

    test("a deadline too short for the work ends the call (DEADLINE_EXCEEDED or DEADLINE_TOO_SHORT)", { timeout: 30_000 }, async () => {
      // 100 steps at 480x360 (not scaled: its short side is below the working 512) take the
      // tiny model about ten times the deadline on this repository's 2-core machines.
      const [width, height] = [480, 360];
      const band = new Uint8Array(width * height).map((_, i) => (Math.abs((i % width) - width / 2) < 40 ? 255 : 0));
      const mask = { width, height, encoding: { case: "png" as const, value: encodePng(width, height, 1, band) } };
      const request: RemoveObjectsInit = {
        image: imageFromBytes(picture(index, width, height)),
        target: { case: "masks", value: { masks: [mask] } },
        clearOptions: { steps: 100 },
      };
      const seen: RemoveObjectsResponse[] = [];
      await assert.rejects(
        async () => {
          for await (const event of client.removeObjects(request, { timeoutMs: 1_000 })) seen.push(event);
        },
        (err: unknown) => {
          if (err instanceof ConnectError && err.code === Code.ResourceExhausted) {
            // The server read the deadline from the HTTP call and refused the work up front
            // (the object-clear stage's DEADLINE_TOO_SHORT, with when to retry).
            assert.match(err.rawMessage, /before its deadline/);
            assert.notEqual(errorDetails(err).retryAfterMs, undefined, "RetryInfo");
          } else {
            connectError(err, Code.DeadlineExceeded);
          }
          return true;
        },
      );
      assert.ok(!seen.some((e) => e.event.case === "result"), "no result");
    });
  });
});

test("the gRPC protocol refuses HTTP/1.1", () => {
  assert.throws(() => new Mic2eClient(baseUrl, { protocol: "grpc", httpVersion: "1.1" }), /needs HTTP\/2/);
});
