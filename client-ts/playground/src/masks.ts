/**
 * The masks of a segmentation event as one tinted layer to draw over the photo.
 *
 * A mask arrives at the photo's own size either as a 1-bit PNG or as COCO-style RLE (the
 * orchestrator passes the segmentation server's RLE on: compact, and nothing to decode on
 * its side). Both are read into on/off pixels, then painted into one layer.
 *
 * @module
 */
import type { Mask } from "../../src/gen/mic2e/v1/common_pb.js";

/** The on/off pixels of `mask` as alpha (255 on, 0 off), row-major. */
async function alphaOf(mask: Mask): Promise<Uint8ClampedArray> {
  const { width, height, encoding } = mask;
  const alpha = new Uint8ClampedArray(width * height);
  if (encoding.case === "rle") {
    // Runs of off and on pixels in turn (off first) down the columns: index i of that
    // order is pixel (x, y) = (i / height, i % height).
    let index = 0;
    encoding.value.counts.forEach((count, k) => {
      if (k % 2 === 1) {
        for (let i = index; i < index + count; i++) alpha[(i % height) * width + Math.floor(i / height)] = 255;
      }
      index += count;
    });
  } else if (encoding.case === "png") {
    const bitmap = await createImageBitmap(new Blob([encoding.value.slice()], { type: "image/png" }), {
      colorSpaceConversion: "none",
      premultiplyAlpha: "none",
    });
    const canvas = new OffscreenCanvas(width, height);
    const ctx = canvas.getContext("2d", { willReadFrequently: true })!;
    ctx.drawImage(bitmap, 0, 0);
    bitmap.close();
    const rgba = ctx.getImageData(0, 0, width, height).data;
    // As the servers read a mask: on where the grey value is above 127.
    for (let i = 0; i < alpha.length; i++) alpha[i] = rgba[i * 4]! > 127 ? 255 : 0;
  }
  return alpha;
}

/** A colour per instance (RGB), cycled past the eighth. */
const PALETTE: readonly (readonly [number, number, number])[] = [
  [30, 136, 229],
  [229, 57, 53],
  [67, 160, 71],
  [251, 140, 0],
  [142, 36, 170],
  [0, 172, 193],
  [253, 216, 53],
  [216, 27, 96],
];

/**
 * The masks of one segmentation event as one layer of the photo's size: each instance's
 * pixels in its own colour, the best (first) instance on top, transparent elsewhere. One
 * layer, not one per instance: a 12-megapixel photo's layer alone is 48 MB.
 */
export async function masksLayer(masks: Mask[]): Promise<OffscreenCanvas | undefined> {
  const first = masks[0];
  if (first === undefined) return undefined;
  const { width, height } = first;
  const pixels = new ImageData(width, height);
  for (let i = masks.length - 1; i >= 0; i--) {
    const alpha = await alphaOf(masks[i]!);
    const [r, g, b] = PALETTE[i % PALETTE.length]!;
    const data = pixels.data;
    for (let p = 0; p < alpha.length; p++) {
      if (alpha[p] === 0) continue;
      data[p * 4] = r;
      data[p * 4 + 1] = g;
      data[p * 4 + 2] = b;
      data[p * 4 + 3] = 255;
    }
  }
  const layer = new OffscreenCanvas(width, height);
  layer.getContext("2d")!.putImageData(pixels, 0, 0);
  return layer;
}
