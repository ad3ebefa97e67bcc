// EditService.RemoveObjects through Mic2eClient against a live server whose address is in
// MIC2E_ADDRESS (tests/e2e/test_typescript_client.py starts the tiny stack and runs this).
import * as assert from "node:assert/strict";
import { after, test } from "node:test";

import type { MessageInitShape } from "@bufbuild/protobuf";

import {
  Code,
  ConnectError,
  type MaskSchema,
  errorDetails,
  Mic2eClient,
  type RemoveObjectsInit,
  type RemoveObjectsResponse,
  imageFromBytes,
  imageFromSha256,
} from "../src/index.js";
import { encodePng, pngSize } from "./png.js";

const address = process.env.MIC2E_ADDRESS;
if (!address) throw new Error("MIC2E_ADDRESS (host:port of the orchestrator) is not set");

const W = 200;
const H = 150;
const CALL = { timeoutMs: 60_000 };
const FAST = { steps: 2, shortSide: 256, seed: 0n };
type Rect = readonly [x0: number, y0: number, x1: number, y1: number];
type MaskInit = MessageInitShape<typeof MaskSchema>;

/** A W x H RGB PNG of deterministic noise. */
function picture(): Uint8Array {
  const rgb = new Uint8Array(W * H * 3);
  let state = 12345;
  for (let i = 0; i < rgb.length; i++) {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    rgb[i] = state >>> 24;
  }
  return encodePng(W, H, 3, rgb);
}

const inside = ([x0, y0, x1, y1]: Rect, x: number, y: number) => x >= x0 && x < x1 && y >= y0 && y < y1;

/** A grey PNG mask at the image's size, on inside `rect`. */
function pngMask(rect: Rect): MaskInit {
  const grey = new Uint8Array(W * H);
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) if (inside(rect, x, y)) grey[y * W + x] = 255;
  return { width: W, height: H, encoding: { case: "png", value: encodePng(W, H, 1, grey) } };
}

/** A COCO RLE mask (column-major runs, zeros first) at the image's size, on inside `rect`. */
function rleMask(rect: Rect): MaskInit {
  const counts: number[] = [];
  let on = false;
  let run = 0;
  for (let x = 0; x < W; x++) {
    for (let y = 0; y < H; y++) {
      if (inside(rect, x, y) !== on) {
        counts.push(run);
        on = !on;
        run = 0;
      }
      run++;
    }
  }
  counts.push(run);
  return { width: W, height: H, encoding: { case: "rle", value: { counts } } };
}

const client = new Mic2eClient(address);
after(() => client.close());

async function drain(request: RemoveObjectsInit): Promise<RemoveObjectsResponse[]> {
  const events: RemoveObjectsResponse[] = [];
  for await (const event of client.removeObjects(request, CALL)) events.push(event);
  return events;
}

const kinds = (events: RemoveObjectsResponse[]) => events.map((e) => e.event.case);

/** Exactly one result, last, with the input's size; returns it. */
function checkResult(events: RemoveObjectsResponse[]) {
  assert.equal(kinds(events).filter((k) => k === "result").length, 1, "exactly one result");
  const last = events.at(-1)?.event;
  if (last?.case !== "result") assert.fail(`the last event is ${last?.case}, not the result`);
  const result = last.value;
  assert.ok(result.image, "the result carries an image");
  assert.deepEqual([result.image.width, result.image.height], [W, H], "reported image size");
  assert.deepEqual(pngSize(result.image.data), { width: W, height: H }, "encoded image size");
  assert.deepEqual([result.mask?.width, result.mask?.height], [W, H], "mask size");
  assert.equal(result.timings.at(-1)?.stage, "total");
  return result;
}

/** The (stage, step) of every progress event. */
function progress(events: RemoveObjectsResponse[]): [string, number][] {
  return events.flatMap((e) => (e.event.case === "progress" ? [[e.event.value.stage, e.event.value.step]] : []));
}

test("mask target: progress per step, then one result at the input's size", { timeout: 90_000 }, async () => {
  const events = await drain({
    image: imageFromBytes(picture()),
    target: { case: "masks", value: { masks: [pngMask([50, 40, 120, 100]), rleMask([5, 5, 20, 20])] } },
    clearOptions: FAST,
  });
  assert.deepEqual(kinds(events), ["progress", "progress", "result"]);
  assert.deepEqual(progress(events), [["object_clear", 1], ["object_clear", 2]]);
  const result = checkResult(events);
  assert.deepEqual(result.stages.map((p) => p.server), ["object-clear"]);
  assert.equal(result.stages[0]?.steps, 2);
  assert.equal(result.instances.length, 0);
});

test("text target: segmentation events, instances, removal progress, one result", { timeout: 90_000 }, async () => {
  const events = await drain({
    image: imageFromBytes(picture()),
    target: { case: "text", value: { text: "dog", minScore: 0, maxInstances: 3 } },
    clearOptions: FAST,
  });
  assert.deepEqual(kinds(events), ["progress", "progress", "segmentation", "progress", "progress", "result"]);
  assert.deepEqual(progress(events), [["segmentation", 0], ["segmentation", 1], ["object_clear", 1], ["object_clear", 2]]);
  const segmentation = events[2]?.event;
  if (segmentation?.case !== "segmentation") assert.fail("the third event is not the segmentation");
  assert.ok(segmentation.value.instances.length >= 1, "at least one instance");
  for (const instance of segmentation.value.instances) {
    assert.deepEqual([instance.mask?.width, instance.mask?.height], [W, H]);
  }
  const result = checkResult(events);
  assert.deepEqual(result.stages.map((p) => p.server), ["segmentation", "object-clear"]);
  assert.equal(result.instances.length, segmentation.value.instances.length);
});

test("a request without a target fails with INVALID_ARGUMENT", { timeout: 30_000 }, async () => {
  const seen: RemoveObjectsResponse[] = [];
  await assert.rejects(
    async () => {
      for await (const event of client.removeObjects({ image: imageFromBytes(picture()), clearOptions: FAST }, CALL)) {
        seen.push(event);
      }
    },
    (err: unknown) => {
      if (!(err instanceof ConnectError)) assert.fail(`expected a ConnectError, got ${String(err)}`);
      assert.equal(err.code, Code.InvalidArgument);
      assert.equal(err.code, 3);
      const details = errorDetails(err);
      assert.deepEqual(details.fieldViolations.map((v) => v.field), ["target"], "the bad field is named");
      assert.equal(details.domain, undefined, "INVALID_ARGUMENT carries field violations only");
      return true;
    },
  );
  assert.deepEqual(seen, [], "no event before the error");
});

test("an unknown image reference fails with NOT_FOUND, reason IMAGE_NOT_FOUND", { timeout: 30_000 }, async () => {
  const sha = "0".repeat(64);
  await assert.rejects(
    async () => {
      for await (const _ of client.removeObjects(
        { image: imageFromSha256(sha), target: { case: "text", value: { text: "dog" } }, clearOptions: FAST },
        CALL,
      )) {
        // no event is expected
      }
    },
    (err: unknown) => {
      if (!(err instanceof ConnectError)) assert.fail(`expected a ConnectError, got ${String(err)}`);
      assert.equal(err.code, Code.NotFound);
      const details = errorDetails(err);
      assert.equal(details.reason, "IMAGE_NOT_FOUND");
      assert.equal(details.domain, "mic2e.v1");
      assert.equal(details.metadata.sha256, sha);
      return true;
    },
  );
});
