/**
 * Masks of the segmentation event as tinted layers to draw over the photo.
 *
 * A mask arrives at the photo's own size either as a 1-bit PNG or as COCO-style RLE (the
 * orchestrator passes the segmentation server's RLE on: compact, and nothing to decode on
 * its side). Both become a canvas of the photo's size, opaque where the mask is on and
 * transparent elsewhere, then filled with one colour.
 *
 * @module
 */
import type { Mask } from "../../src/gen/mic2e/v1/common_pb.js";

/** The on/off pixels of `mask` as alpha (255 on, 0 off), row-major. */
async function alphaOf(mask: Mask): Promise<Uint8ClampedArray> {
  const { width, height, encoding } = mask;
  const alpha = new Uint8ClampedArray(width * height);
  if (encoding.case === "rle") {
    // Column-major runs, zeros first: run k covers indices [start, start + count) of the
    // column-major order, index i being pixel (i / height, i % height).
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

/** `mask` as a layer of the photo's size: `colour` where it is on, transparent elsewhere. */
export async function maskLayer(mask: Mask, colour: string): Promise<OffscreenCanvas> {
  const { width, height } = mask;
  const alpha = await alphaOf(mask);
  const layer = new OffscreenCanvas(width, height);
  const ctx = layer.getContext("2d")!;
  const pixels = ctx.createImageData(width, height);
  for (let i = 0; i < alpha.length; i++) pixels.data[i * 4 + 3] = alpha[i]!;
  ctx.putImageData(pixels, 0, 0);
  // Keep the shape, take the colour.
  ctx.globalCompositeOperation = "source-in";
  ctx.fillStyle = colour;
  ctx.fillRect(0, 0, width, height);
  return layer;
}

/** A colour per instance, far apart around the hue circle (golden angle). */
export function instanceColour(index: number): string {
  return `hsl(${(index * 137.5 + 200) % 360} 90% 50%)`;
}
