// Image patches: the client asks the servers for only the changed part of an edited picture
// and rebuilds the whole picture from the bytes it sent. Offline: applyPatch pixel by pixel
// (PNG, an EXIF-rotated JPEG with an ICC profile), patches for another image refused, and
// the client's request and result handling against a fake server (an interceptor). Live,
// against the server in MIC2E_ADDRESS (skipped without it): a 4032x3024 photo's removal
// comes back whole from a patch, the input's own pixels outside the repainted box.
import * as assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, test } from "node:test";

import { type MessageInitShape, create } from "@bufbuild/protobuf";
import { createAsyncIterable } from "@connectrpc/connect/protocol";
import sharp from "sharp";

import {
  type Box,
  ClearStrategy,
  type DecodedImage,
  ImageFormat,
  type ImagePatch,
  ImagePatchSchema,
  type Interceptor,
  type MaskSchema,
  Mic2eClient,
  type RemoveObjectsRequest,
  type RemoveObjectsResponse,
  RemoveObjectsResponseSchema,
  type RemoveObjectsResult,
  applyPatch,
  decodeImage,
  imageFromBytes,
} from "../src/index.js";
import { encodePng } from "./png.js";

const address = process.env.MIC2E_ADDRESS;
const LIVE = { skip: address ? false : "MIC2E_ADDRESS is not set" } as const;
const sha256 = (data: Uint8Array) => createHash("sha256").update(data).digest("hex");

/** Deterministic bytes (a linear congruential generator), the same on every run. */
function noise(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let state = seed >>> 0;
  for (let i = 0; i < n; i++) {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    out[i] = state >>> 24;
  }
  return out;
}

/**
 * A `w` x `h` RGBA patch PNG: alpha 255 on a checkerboard of 3-pixel cells and in the last
 * row, 0 elsewhere, except one pixel of alpha 128 (left alone, as any alpha but 255); colours
 * random. Returns the PNG and its raw RGBA.
 */
async function patchPng(w: number, h: number, seed: number): Promise<{ png: Uint8Array; rgba: Uint8Array }> {
  const rgba = noise(w * h * 4, seed);
  for (let row = 0; row < h; row++) {
    for (let col = 0; col < w; col++) {
      const on = row === h - 1 || (Math.floor(row / 3) + Math.floor(col / 3)) % 2 === 0;
      rgba[(row * w + col) * 4 + 3] = on ? 255 : 0;
    }
  }
  rgba[(1 * w + 3) * 4 + 3] = 128;
  const png = await sharp(rgba, { raw: { width: w, height: h, channels: 4 } }).png().toBuffer();
  return { png, rgba };
}

function patchOf(base: Uint8Array, png: Uint8Array, x: number, y: number, full: [number, number], w: number, h: number): ImagePatch {
  return create(ImagePatchSchema, {
    image: { data: png, format: ImageFormat.PNG, width: w, height: h, sha256: sha256(png) },
    x,
    y,
    fullWidth: full[0],
    fullHeight: full[1],
    baseSha256: sha256(base),
  });
}

/** Every pixel: the patch's where its alpha is 255, the input's own decode elsewhere. */
function checkPixels(
  out: DecodedImage,
  input: DecodedImage,
  patch: { rgba: Uint8Array; x: number; y: number; w: number; h: number },
): void {
  assert.deepEqual([out.width, out.height], [input.width, input.height]);
  let fromPatch = 0;
  for (let y = 0; y < out.height; y++) {
    for (let x = 0; x < out.width; x++) {
      const i = (y * out.width + x) * 3;
      const px = x - patch.x;
      const py = y - patch.y;
      const inPatch = px >= 0 && py >= 0 && px < patch.w && py < patch.h;
      const p = (py * patch.w + px) * 4;
      const copied = inPatch && patch.rgba[p + 3] === 255;
      const expected = copied ? patch.rgba.subarray(p, p + 3) : input.data.subarray(i, i + 3);
      if (copied) fromPatch++;
      const got = out.data.subarray(i, i + 3);
      if (got[0] !== expected[0] || got[1] !== expected[1] || got[2] !== expected[2]) {
        assert.fail(`pixel (${x}, ${y}) is ${[...got]}, expected the ${copied ? "patch's" : "input's"} ${[...expected]}`);
      }
    }
  }
  assert.ok(fromPatch > 0, "some pixels came from the patch");
}

test("applyPatch: alpha-255 pixels are the patch's, all others the input's own decode", async () => {
  const [W, H] = [97, 61];
  const input = encodePng(W, H, 3, noise(W * H * 3, 7));
  const [x, y, w, h] = [13, 7, 40, 30];
  const { png, rgba } = await patchPng(w, h, 11);
  const decoded = await decodeImage(input);
  for (const format of [ImageFormat.UNSPECIFIED, ImageFormat.PNG, ImageFormat.WEBP]) {
    const image = await applyPatch(input, patchOf(input, png, x, y, [W, H], w, h), format);
    const expectedFormat = format === ImageFormat.WEBP ? ImageFormat.WEBP : ImageFormat.PNG;
    assert.equal(image.format, expectedFormat);
    assert.deepEqual([image.width, image.height], [W, H]);
    assert.equal(image.sha256, sha256(image.data));
    assert.equal((await sharp(image.data).metadata()).format, expectedFormat === ImageFormat.WEBP ? "webp" : "png");
    checkPixels(await decodeImage(image.data), decoded, { rgba, x, y, w, h });
  }
  const jpeg = await applyPatch(input, patchOf(input, png, x, y, [W, H], w, h), ImageFormat.JPEG);
  assert.equal(jpeg.format, ImageFormat.JPEG);
  assert.equal((await sharp(jpeg.data).metadata()).format, "jpeg");
});

test("applyPatch: an EXIF-rotated JPEG is patched upright and keeps its ICC profile", async () => {
  // Stored 80x120 and rotated 90 degrees by its EXIF orientation (6): 120x80 upright.
  const [SW, SH] = [80, 120];
  const input = await sharp(noise(SW * SH * 3, 3), { raw: { width: SW, height: SH, channels: 3 } })
    .withIccProfile("p3")
    .withMetadata({ orientation: 6 })
    .jpeg({ quality: 90 })
    .toBuffer();
  const icc = (await sharp(input).metadata()).icc;
  assert.ok(icc && icc.length > 0, "the input has a profile");
  const decoded = await decodeImage(input);
  assert.deepEqual([decoded.width, decoded.height], [SH, SW], "upright");
  assert.deepEqual(decoded.icc, new Uint8Array(icc));
  const [x, y, w, h] = [100, 50, 20, 30];
  const { png, rgba } = await patchPng(w, h, 5);
  for (const format of [ImageFormat.PNG, ImageFormat.WEBP, ImageFormat.JPEG]) {
    const image = await applyPatch(input, patchOf(input, png, x, y, [SH, SW], w, h), format);
    const meta = await sharp(image.data).metadata();
    assert.deepEqual([meta.width, meta.height, meta.orientation], [SH, SW, undefined], "upright, no orientation tag");
    assert.deepEqual(meta.icc, icc, `the input's profile, unchanged, in the ${meta.format}`);
    if (format !== ImageFormat.JPEG) checkPixels(await decodeImage(image.data), decoded, { rgba, x, y, w, h });
  }
});

test("applyPatch refuses a patch for another image", async () => {
  const input = encodePng(20, 10, 3, noise(600, 1));
  const other = encodePng(20, 10, 3, noise(600, 2));
  const { png } = await patchPng(4, 4, 1);
  await assert.rejects(applyPatch(input, patchOf(other, png, 0, 0, [20, 10], 4, 4)), /applies to image/);
  await assert.rejects(applyPatch(input, patchOf(input, png, 0, 0, [21, 10], 4, 4)), /21x10/);
  await assert.rejects(applyPatch(input, patchOf(input, png, 17, 0, [20, 10], 4, 4)), /does not fit/);
});

/**
 * A stand-in for the orchestrator's RemoveObjects: records each request as sent and answers
 * one progress event and a result whose patch (a 4x4 square at (2, 3)) applies to `base`,
 * or a whole `image` when the request did not ask for a patch.
 */
function fakeServer(base: Uint8Array, patch: Uint8Array, seen: RemoveObjectsRequest[]): Interceptor {
  return () => async (req) => {
    if (!req.stream) throw new Error("only streams here");
    let sent: RemoveObjectsRequest | undefined;
    for await (const m of req.message) sent = m as RemoveObjectsRequest;
    seen.push(sent!);
    const asked = sent!.clearOptions?.outputPatch === true;
    const result: MessageInitShape<typeof RemoveObjectsResponseSchema> = {
      event: {
        case: "result",
        value: asked
          ? { patch: patchOf(base, patch, 2, 3, [16, 12], 4, 4), repaintedBox: { x0: 2, y0: 3, x1: 6, y1: 7 } }
          : { image: { data: base, format: ImageFormat.PNG, width: 16, height: 12, sha256: sha256(base) } },
      },
    };
    const events = [
      create(RemoveObjectsResponseSchema, { event: { case: "progress", value: { stage: "object_clear", step: 1 } } }),
      create(RemoveObjectsResponseSchema, result),
    ];
    return {
      stream: true,
      service: req.service,
      method: req.method,
      header: new Headers(),
      trailer: new Headers(),
      message: createAsyncIterable(events),
    };
  };
}

test("the client asks for a patch only for bytes it can decode, and hands back the whole picture", async () => {
  const base = encodePng(16, 12, 3, noise(16 * 12 * 3, 9));
  const { png } = await patchPng(4, 4, 2);
  const seen: RemoveObjectsRequest[] = [];
  // Nothing is dialled: the interceptor answers every call.
  const client = new Mic2eClient("localhost:1", { interceptors: [fakeServer(base, png, seen)] });
  const off = new Mic2eClient("localhost:1", { interceptors: [fakeServer(base, png, seen)], imagePatches: false });
  try {
    await fakeCalls(client, off, base, seen);
  } finally {
    client.close();
    off.close();
  }
});

async function fakeCalls(client: Mic2eClient, off: Mic2eClient, base: Uint8Array, seen: RemoveObjectsRequest[]) {
  const target = { case: "masks" as const, value: { masks: [] } };
  const resultOf = async (c: Mic2eClient, request: Parameters<Mic2eClient["removeObjects"]>[0]) => {
    const events: RemoveObjectsResponse[] = [];
    for await (const event of c.removeObjects(request)) events.push(event);
    assert.deepEqual(events.map((e) => e.event.case), ["progress", "result"]);
    const last = events[1]!.event;
    assert.equal(last.case, "result");
    return last.value as RemoveObjectsResult;
  };

  // Asked (by the client), applied: the whole picture, and the patch kept.
  const clearOptions = { steps: 2, outputFormat: ImageFormat.WEBP };
  const whole = await resultOf(client, { image: imageFromBytes(base), target, clearOptions });
  assert.equal(seen.at(-1)?.clearOptions?.outputPatch, true);
  assert.equal(seen.at(-1)?.clearOptions?.steps, 2, "the caller's options are kept");
  assert.equal(seen.at(-1)?.image?.source.case, "data");
  assert.deepEqual(clearOptions, { steps: 2, outputFormat: ImageFormat.WEBP }, "the caller's object is not changed");
  assert.ok(whole.patch, "the patch is kept");
  assert.equal(whole.image?.format, ImageFormat.WEBP, "encoded as the request asked");
  assert.deepEqual([whole.image?.width, whole.image?.height], [16, 12]);
  const expected = await applyPatch(base, whole.patch, ImageFormat.WEBP);
  assert.deepEqual(whole.image?.data, expected.data);

  // The same bytes again go by reference; the client still holds them and applies the patch.
  const again = await resultOf(client, { image: imageFromBytes(base), target, clearOptions: { steps: 2 } });
  assert.equal(seen.at(-1)?.image?.source.case, "sha256");
  assert.equal(seen.at(-1)?.clearOptions?.outputPatch, true);
  assert.equal(again.image?.format, ImageFormat.PNG);
  assert.equal(again.image?.sha256, sha256(again.image!.data));

  // The caller's own outputPatch: true hands the patch through untouched.
  const own = await resultOf(client, { image: imageFromBytes(base), target, clearOptions: { outputPatch: true } });
  assert.equal(own.image, undefined, "no picture built");
  assert.ok(own.patch);
  // ... and its own false, or imagePatches: false, asks for the whole picture.
  for (const [c, options] of [[client, { outputPatch: false }], [off, {}]] as const) {
    const plain = await resultOf(c, { image: imageFromBytes(base), target, clearOptions: options });
    assert.equal(seen.at(-1)?.clearOptions?.outputPatch ?? false, false);
    assert.equal(plain.patch, undefined);
    assert.deepEqual(plain.image?.data, base);
  }
  // Bytes the client cannot decode as the servers do (a GIF) are sent as they are, no patch.
  const gif = new TextEncoder().encode("GIF89a not really");
  await resultOf(client, { image: imageFromBytes(gif), target });
  assert.equal(seen.at(-1)?.clearOptions?.outputPatch ?? false, false);
}

// --- Live: a full-resolution photo through the tiny stack ---

const PW = 4032;
const PH = 3024;
const CALL = { timeoutMs: 120_000 };
const FAST = { steps: 2, shortSide: 256, seed: 0n };
/** The removed rectangle [x0, y0, x1, y1): 570 x 428, about 2 % of the photo. */
const RECT = [1500, 1100, 2070, 1528] as const;

let photo: Promise<Uint8Array> | undefined;

/**
 * A 4032x3024 JPEG (quality 90) of fine detail, as a phone photo has: sums of sines of
 * several frequencies per channel plus seeded noise, so that no codec can summarise it.
 */
function thePhoto(): Promise<Uint8Array> {
  photo ??= (async () => {
    const wave = (n: number, f: number, phase: number, amp: number) =>
      Float32Array.from({ length: n }, (_, i) => amp * Math.sin(i * f + phase));
    const rgb = new Uint8Array(PW * PH * 3);
    const grain = noise(PW * PH, 4032);
    for (let c = 0; c < 3; c++) {
      const wx = wave(PW, 0.011 + c * 0.004, c, 40);
      const wy = wave(PH, 0.013 + c * 0.003, 2 * c, 30);
      const wd = wave(PW + 2 * PH, 0.29 + c * 0.05, c, 18);
      for (let y = 0; y < PH; y++) {
        for (let x = 0; x < PW; x++) {
          const v = 128 + wx[x]! + wy[y]! + wd[x + 2 * y]! + ((grain[y * PW + x]! - 128) >> 4);
          rgb[(y * PW + x) * 3 + c] = v < 0 ? 0 : v > 255 ? 255 : v;
        }
      }
    }
    return sharp(rgb, { raw: { width: PW, height: PH, channels: 3 } }).jpeg({ quality: 90 }).toBuffer();
  })();
  return photo;
}

/** A COCO RLE mask (column-major runs, zeros first) at the photo's size, on inside RECT. */
function rectMask(): MessageInitShape<typeof MaskSchema> {
  const [x0, y0, x1, y1] = RECT;
  const counts = [x0 * PH + y0];
  for (let x = x0; x < x1; x++) counts.push(y1 - y0, x === x1 - 1 ? 0 : PH - (y1 - y0));
  counts[counts.length - 1] = PH - y1 + (PW - x1) * PH;
  return { width: PW, height: PH, encoding: { case: "rle", value: { counts } } };
}

/**
 * The result of a removal of RECT from the photo. `fusion`: false for RESIZE, because the
 * tiny model's random fusion weights mark the whole picture as the object's effect region
 * (a patch of the whole photo, 15 s of blending on 2 cores); without fusion the repainted
 * region is the dilated mask, as a real model's fusion region is for a small object.
 */
async function removal(client: Mic2eClient, strategy: ClearStrategy, fusion?: boolean): Promise<RemoveObjectsResult> {
  let result: RemoveObjectsResult | undefined;
  for await (const { event } of client.removeObjects(
    {
      image: imageFromBytes(await thePhoto()),
      target: { case: "masks", value: { masks: [rectMask()] } },
      clearOptions: { ...FAST, strategy, ...(fusion === undefined ? {} : { fusion }) },
    },
    CALL,
  )) {
    if (event.case === "result") result = event.value;
  }
  assert.ok(result, "a result");
  return result;
}

/** How many pixels of `a` and `b` are equal; throws at the first unequal one outside `box`. */
function compare(a: DecodedImage, b: DecodedImage, box?: Box): number {
  assert.deepEqual([a.width, a.height], [b.width, b.height]);
  const [bx0, by0, bx1, by1] = box ? [Math.floor(box.x0), Math.floor(box.y0), Math.ceil(box.x1), Math.ceil(box.y1)] : [0, 0, 0, 0];
  let equal = 0;
  for (let y = 0; y < a.height; y++) {
    for (let x = 0; x < a.width; x++) {
      const i = (y * a.width + x) * 3;
      const same = a.data[i] === b.data[i] && a.data[i + 1] === b.data[i + 1] && a.data[i + 2] === b.data[i + 2];
      if (same) equal++;
      else if (box && !(x >= bx0 && x < bx1 && y >= by0 && y < by1)) {
        assert.fail(`pixel (${x}, ${y}) outside the repainted box [${bx0}, ${by0}, ${bx1}, ${by1}) is not the input's`);
      }
    }
  }
  return equal;
}

const live = address ? new Mic2eClient(address) : undefined;
const whole = address ? new Mic2eClient(address, { imagePatches: false }) : undefined;
after(() => {
  live?.close();
  whole?.close();
});

/** Sizes on the wire of the RESIZE removal: the patch, then the server's whole picture. */
const wire: { patch?: number; whole?: number; rebuilt?: DecodedImage } = {};

test("live RESIZE: a 4032x3024 photo comes back whole, from a patch, the input's own outside the box", { ...LIVE, timeout: 150_000 }, async () => {
  const result = await removal(live!, ClearStrategy.RESIZE, false);
  assert.ok(result.patch, "the result came as a patch");
  assert.ok(result.image, "and the client rebuilt the whole picture");
  assert.deepEqual([result.image.width, result.image.height, result.image.format], [PW, PH, ImageFormat.PNG]);
  assert.deepEqual([result.patch.fullWidth, result.patch.fullHeight], [PW, PH]);
  assert.equal(result.patch.baseSha256, sha256(await thePhoto()));
  const box = result.repaintedBox;
  assert.ok(box, "the repainted box");
  const [x0, y0, x1, y1] = RECT;
  assert.ok(box.x0 <= x0 && box.y0 <= y0 && box.x1 >= x1 && box.y1 >= y1, `the box ${JSON.stringify(box)} covers the mask`);
  const input = await decodeImage(await thePhoto());
  const out = await decodeImage(result.image.data);
  assert.deepEqual([out.width, out.height], [PW, PH]);
  const equal = compare(out, input, box);
  assert.ok(equal < PW * PH, "something was repainted");
  const boxArea = (box.x1 - box.x0) * (box.y1 - box.y0);
  assert.ok(boxArea < 0.05 * PW * PH, `the repainted box ${JSON.stringify(box)} is about the mask's`);
  wire.patch = result.patch.image!.data.length;
  wire.rebuilt = out;
});

test("live CROP: at least 90 % of the photo's pixels are the input's own", { ...LIVE, timeout: 150_000 }, async () => {
  const result = await removal(live!, ClearStrategy.CROP);
  assert.ok(result.patch && result.image, "came as a patch, rebuilt whole");
  assert.deepEqual([result.image.width, result.image.height], [PW, PH]);
  const equal = compare(await decodeImage(result.image.data), await decodeImage(await thePhoto()), result.repaintedBox);
  assert.ok(equal >= 0.9 * PW * PH, `${((100 * equal) / (PW * PH)).toFixed(2)} % equal`);
});

test("live imagePatches: false gets the whole picture from the server, much larger than the patch", { ...LIVE, timeout: 150_000 }, async (t) => {
  const result = await removal(whole!, ClearStrategy.RESIZE, false);
  assert.equal(result.patch, undefined, "no patch");
  assert.ok(result.image, "the whole picture");
  assert.deepEqual([result.image.width, result.image.height], [PW, PH]);
  wire.whole = result.image.data.length;
  if (wire.patch !== undefined) {
    t.diagnostic(`on the wire: a patch of ${wire.patch} bytes, or a whole picture of ${wire.whole} bytes`);
    assert.ok(wire.patch * 10 < wire.whole, `patch ${wire.patch} bytes, whole picture ${wire.whole} bytes`);
  }
  if (wire.rebuilt !== undefined) {
    // The same removal (same seed): the client's rebuild is the server's picture.
    const server = await decodeImage(result.image.data);
    assert.equal(compare(server, wire.rebuilt), PW * PH, "every pixel equal to the client's rebuild");
  }
});
