// The model calls EditService passes through (SegmentByText, SegmentByPrompt, Generate),
// through Mic2eClient against the live server in MIC2E_ADDRESS.
import * as assert from "node:assert/strict";
import { after, test } from "node:test";

import { Mic2eClient, imageFromBytes, imageFromSha256 } from "../src/index.js";
import { encodePng, pngSize } from "./png.js";

const address = process.env.MIC2E_ADDRESS;
if (!address) throw new Error("MIC2E_ADDRESS (host:port of the orchestrator) is not set");

const W = 96;
const H = 64;
const CALL = { timeoutMs: 60_000 };

const client = new Mic2eClient(address);
after(() => client.close());

test("segmentByText, then segmentByPrompt by SHA-256 reference", { timeout: 60_000 }, async () => {
  const rgb = new Uint8Array(W * H * 3).map((_, i) => (i * 37) % 251);
  const text = await client.segmentByText(
    { image: imageFromBytes(encodePng(W, H, 3, rgb)), text: "dog", scoreThreshold: 0 },
    CALL,
  );
  assert.deepEqual([text.imageWidth, text.imageHeight], [W, H]);
  assert.match(text.imageSha256, /^[0-9a-f]{64}$/);
  assert.ok(text.instances.length >= 1, "at least one instance at threshold 0");
  assert.equal(text.provenance?.server, "segmentation");

  const prompt = await client.segmentByPrompt(
    { image: imageFromSha256(text.imageSha256), points: [{ x: 3, y: 3 }] },
    CALL,
  );
  assert.deepEqual([prompt.best?.mask?.width, prompt.best?.mask?.height], [W, H]);
});

test("generate streams one progress per step, then one result", { timeout: 60_000 }, async () => {
  const events = [];
  for await (const e of client.generate({ prompt: "a red bicycle", width: 256, height: 256, steps: 2, seed: 1n }, CALL)) {
    events.push(e.event);
  }
  assert.deepEqual(events.map((e) => e.case), ["progress", "progress", "result"]);
  const last = events.at(-1);
  if (last?.case !== "result") assert.fail("the last event is not the result");
  assert.deepEqual(pngSize(last.value.image?.data ?? new Uint8Array()), { width: 256, height: 256 });
  assert.equal(last.value.provenance?.seed, 1n);
});
