// Image references against the live server in MIC2E_ADDRESS: an image's bytes go over the
// wire once, later calls send its SHA-256, and when the server has dropped it (simulated
// here by an interceptor answering IMAGE_NOT_FOUND, as the orchestrator does) the call is
// made again once with the bytes. A call refused UNAVAILABLE before its first event (a
// connection closing as it aged; simulated the same way) is made again once, as it was.
import * as assert from "node:assert/strict";
import { after, test } from "node:test";

import { Code, ConnectError, Mic2eClient, PointLabel, imageFromBytes } from "../src/index.js";
import { encodePng } from "./png.js";
import { Spy } from "./spy.js";

const address = process.env.MIC2E_ADDRESS;
if (!address) throw new Error("MIC2E_ADDRESS (host:port of the orchestrator) is not set");

const W = 64;
const H = 48;
const CALL = { timeoutMs: 60_000 };

/** A distinct W x H PNG per seed. */
function picture(seed: number): Uint8Array {
  const rgb = new Uint8Array(W * H * 3).map((_, i) => (i * 31 + seed * 97) % 253);
  return encodePng(W, H, 3, rgb);
}

const spy = new Spy();
const client = new Mic2eClient(address, { interceptors: [spy.interceptor] });
const plain = new Spy();
const noRefs = new Mic2eClient(address, { interceptors: [plain.interceptor], imageReferences: false });
after(() => {
  client.close();
  noRefs.close();
});

test("unary: bytes once, then the reference; bytes again after IMAGE_NOT_FOUND", { timeout: 60_000 }, async () => {
  spy.seen.length = 0;
  const request = { image: imageFromBytes(picture(1)), text: "dog", scoreThreshold: 0 };
  const first = await client.segmentByText(request, CALL);
  const second = await client.segmentByText(request, CALL);
  assert.deepEqual(spy.seen, ["data", "sha256"]);
  assert.equal(second.imageSha256, first.imageSha256);
  assert.equal(second.instances.length, first.instances.length);

  spy.dropNextReference = true;
  const third = await client.segmentByText(request, CALL);
  assert.deepEqual(spy.seen, ["data", "sha256", "sha256", "data"], "one retry, with the bytes");
  assert.equal(third.imageSha256, first.imageSha256);
  await client.segmentByText(request, CALL);
  assert.equal(spy.seen.at(-1), "sha256", "known again after the retry");
});

test("stream: a removal retries with the bytes only before its first event", { timeout: 60_000 }, async () => {
  spy.seen.length = 0;
  const request = {
    image: imageFromBytes(picture(2)),
    target: { case: "prompt" as const, value: { points: [{ x: 32, y: 24, label: PointLabel.POSITIVE }] } },
    clearOptions: { steps: 1, shortSide: 256, seed: 0n },
  };
  const kinds = async () => {
    const out: (string | undefined)[] = [];
    for await (const { event } of client.removeObjects(request, CALL)) out.push(event.case);
    return out;
  };
  assert.equal((await kinds()).at(-1), "result");
  spy.dropNextReference = true;
  assert.equal((await kinds()).at(-1), "result");
  assert.deepEqual(spy.seen, ["data", "sha256", "data"]);
});

test("imageReferences: false sends the bytes every time", { timeout: 60_000 }, async () => {
  const request = { image: imageFromBytes(picture(3)), text: "dog", scoreThreshold: 0 };
  await noRefs.segmentByText(request, CALL);
  await noRefs.segmentByText(request, CALL);
  assert.deepEqual(plain.seen, ["data", "data"]);
});

test("UNAVAILABLE before the first event: made again once, then the error is the caller's", { timeout: 60_000 }, async () => {
  spy.seen.length = 0;
  const request = { image: imageFromBytes(picture(4)), text: "dog", scoreThreshold: 0 };
  spy.unavailable = 1;
  const first = await client.segmentByText(request, CALL);
  assert.deepEqual(spy.seen, ["data", "data"], "the same request once more");
  assert.equal(first.imageSha256.length, 64);

  const generate = async () => {
    const out: (string | undefined)[] = [];
    for await (const { event } of client.generate({ prompt: "a red bicycle", width: 256, height: 256, steps: 1, seed: 0n }, CALL)) {
      out.push(event.case);
    }
    return out;
  };
  spy.seen.length = 0;
  spy.unavailable = 1;
  assert.equal((await generate()).at(-1), "result");
  assert.equal(spy.seen.length, 2, "a stream is made again too");

  spy.seen.length = 0;
  spy.unavailable = 2;
  await assert.rejects(client.segmentByText(request, CALL), (err: ConnectError) => err.code === Code.Unavailable);
  assert.equal(spy.seen.length, 2, "only once");
  spy.unavailable = 0;
});
