// EditService.ReplaceObjects and Inpaint through Mic2eClient against the live server in
// MIC2E_ADDRESS: a text target is segmented then repainted; a box is filled; ready masks
// are inpainted; outside the repainted region the image keeps its own pixels; a bad
// field is named.
import * as assert from "node:assert/strict";
import { after, test } from "node:test";

import {
  Code,
  ConnectError,
  errorDetails,
  imageFromBytes,
  Mic2eClient,
  type ReplaceObjectsInit,
  type ReplaceObjectsResponse,
} from "../src/index.js";
import { encodePng, pngSize } from "./png.js";

const address = process.env.MIC2E_ADDRESS;
if (!address) throw new Error("MIC2E_ADDRESS (host:port of the orchestrator) is not set");

const W = 96;
const H = 64;
const CALL = { timeoutMs: 60_000 };
const FAST = { steps: 2, seed: 1n };

function picture(): Uint8Array {
  const rgb = new Uint8Array(W * H * 3).map((_, i) => (i * 29 + 7) % 251);
  return encodePng(W, H, 3, rgb);
}

const client = new Mic2eClient(address);
after(() => client.close());

async function drain(request: ReplaceObjectsInit): Promise<ReplaceObjectsResponse[]> {
  const events: ReplaceObjectsResponse[] = [];
  for await (const event of client.replaceObjects(request, CALL)) events.push(event);
  return events;
}

test("replace a text target: segmentation, per-step progress, one result", { timeout: 60_000 }, async () => {
  const events = await drain({
    image: imageFromBytes(picture()),
    target: { case: "text", value: { text: "dog", minScore: 0 } },
    replacement: "a cat",
    inpaintOptions: FAST,
  });
  const kinds = events.map((e) => e.event.case);
  assert.equal(kinds.at(-1), "result");
  assert.ok(kinds.includes("segmentation"), kinds.join());
  const steps = events.filter((e) => e.event.case === "progress" && e.event.value.stage === "inpainting");
  assert.equal(steps.length, 2, "one progress per denoising step");
  const last = events.at(-1)!.event;
  assert.ok(last.case === "result");
  const result = last.value;
  assert.deepEqual(pngSize(result.image!.data), { width: W, height: H });
  assert.deepEqual(result.stages.map((s) => s.server), ["segmentation", "flux"]);
  assert.deepEqual(result.timings.map((t) => t.stage), ["segmentation", "inpainting", "total"]);
});

test("fill a box: no segmentation, the box repainted", { timeout: 60_000 }, async () => {
  const events = await drain({
    image: imageFromBytes(picture()),
    target: { case: "box", value: { x0: 10, y0: 8, x1: 40, y1: 30 } },
    replacement: "a vase of flowers",
    inpaintOptions: { ...FAST, maskDilation: 0 },
  });
  assert.deepEqual(events.map((e) => e.event.case), ["progress", "progress", "result"]);
  const last = events.at(-1)!.event;
  assert.ok(last.case === "result" && last.value.mask?.width === W);
  assert.equal(last.value.instances.length, 0);
});

test("inpaint passed through: ready masks, per-step progress, the mask used", { timeout: 60_000 }, async () => {
  const grey = new Uint8Array(W * H);
  for (let y = 20; y < 40; y++) for (let x = 30; x < 60; x++) grey[y * W + x] = 255;
  const events = [];
  for await (const event of client.inpaint({
    image: imageFromBytes(picture()),
    masks: [{ width: W, height: H, encoding: { case: "png", value: encodePng(W, H, 1, grey) } }],
    prompt: "a cat",
    options: FAST,
  }, CALL)) events.push(event.event.case);
  assert.deepEqual(events, ["progress", "progress", "result"]);
});

test("a bad field is named: strength 0", { timeout: 60_000 }, async () => {
  await assert.rejects(
    drain({
      image: imageFromBytes(picture()),
      target: { case: "box", value: { x0: 1, y0: 1, x1: 9, y1: 9 } },
      replacement: "a cat",
      inpaintOptions: { strength: 0 },
    }),
    (err: unknown) => {
      assert.ok(err instanceof ConnectError && err.code === Code.InvalidArgument);
      assert.deepEqual(errorDetails(err).fieldViolations.map((v) => v.field), ["inpaint_options.strength"]);
      return true;
    },
  );
});
