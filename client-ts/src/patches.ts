/**
 * Image patches: the part of an edited picture a server changed, put back into the picture
 * the caller sent.
 *
 * An edit of a 12-megapixel photo changes a few percent of it; asked with `outputPatch`,
 * the servers send only that part (`ImagePatch`: an RGBA PNG or lossless WebP whose alpha
 * is 255 where a pixel is the result's and 0 where it is the input's, and its offset).
 * {@link applyPatch} rebuilds the whole picture from the input's bytes and the patch, as
 * the protos say: decode the input as the servers decode it ({@link decodeImage}), copy
 * every patch pixel whose alpha is 255, encode the result, keep the input's ICC profile.
 * `Mic2eClient` does this for its callers (see `Mic2eClientOptions.imagePatches`).
 *
 * Decoding and encoding use [sharp](https://sharp.pixelplumbing.com) (libvips, prebuilt
 * for each platform in its `@img/sharp-*` packages). It is loaded on first use only, so a
 * client that never gets a patch never loads libvips.
 *
 * @module
 */
import { create } from "@bufbuild/protobuf";
import { createHash } from "node:crypto";
import { deflateSync } from "node:zlib";
import type { SharpOptions } from "sharp";

import { type EncodedImage, EncodedImageSchema, ImageFormat, type ImagePatch } from "./gen/mic2e/v1/common_pb.js";

/** An image decoded as the mic2e servers decode their inputs. */
export interface DecodedImage {
  /** 8-bit RGB, 3 bytes a pixel, row after row (`width * height * 3` bytes). */
  data: Uint8Array;
  /** Width in pixels, upright (EXIF orientation applied). */
  width: number;
  /** Height in pixels, upright. */
  height: number;
  /**
   * The ICC colour profile embedded in the encoded image, if any. The pixels are NOT
   * converted by it (neither do the servers): it is carried to the outputs as it is.
   */
  icc?: Uint8Array;
}

type SharpFactory = (typeof import("sharp"))["default"];

let sharpLoad: Promise<SharpFactory> | undefined;

/**
 * sharp, imported on first use. Rejects when its native part cannot be loaded on this
 * platform (its prebuilt `@img/sharp-*` package missing): the caller then goes without.
 */
function loadSharp(): Promise<SharpFactory> {
  sharpLoad ??= import("sharp").then((m) => m.default);
  return sharpLoad;
}

/**
 * Whether this process can decode and encode images for patches (sharp loads here).
 * Resolves once; later calls are free.
 */
export async function patchesSupported(): Promise<boolean> {
  try {
    await loadSharp();
    return true;
  } catch {
    return false;
  }
}

// Input decoding. The servers decode with Pillow: EXIF orientation applied, ICC profile not
// applied, 16-bit samples cut to their high byte (16-bit grey: scaled and rounded), alpha
// composited on white with Pillow's integer arithmetic. libvips decodes JPEG, PNG and WebP
// to the same samples (both use libjpeg-turbo's default IDCT and upsampling, libpng and
// libwebp); the alpha and 16-bit grey steps are done here, in Pillow's own arithmetic,
// because libvips rounds them differently (off by one in about half the pixels).

/** "Any problem in the pixel data" would refuse images the servers took; warnings are fine. */
const DECODE: SharpOptions = { ignoreIcc: true, failOn: "error", limitInputPixels: false };

/** Which of the accepted formats `data` is, by its signature; undefined for any other. */
export function sniffFormat(data: Uint8Array): "jpeg" | "png" | "webp" | undefined {
  const b = data;
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return "jpeg";
  if (b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47) return "png";
  const ascii = (at: number) => String.fromCharCode(...b.subarray(at, at + 4));
  if (b.length >= 12 && ascii(0) === "RIFF" && ascii(8) === "WEBP") return "webp";
  return undefined;
}

/**
 * Whether the client can decode `data` exactly as the servers do (it asks for a patch only
 * then): a JPEG, PNG or WebP of one frame, not CMYK (Pillow converts CMYK without a
 * profile, libvips with one, so their pixels differ). Reads the header only.
 */
export async function canDecodeLikeServers(data: Uint8Array): Promise<boolean> {
  if (sniffFormat(data) === undefined) return false;
  try {
    const sharp = await loadSharp();
    const meta = await sharp(data, DECODE).metadata();
    return meta.space !== "cmyk" && (meta.pages ?? 1) === 1;
  } catch {
    return false;
  }
}

/**
 * Decodes an input image as the mic2e servers do: upright per its EXIF orientation, 8-bit
 * RGB, alpha composited on white, the ICC profile kept aside (not applied). Pixels outside
 * a patch are these, byte for byte the servers' own.
 *
 * @param data An encoded PNG, JPEG or WebP (as sent in `Image.data`).
 * @throws When `data` is not an image sharp can decode.
 */
export async function decodeImage(data: Uint8Array): Promise<DecodedImage> {
  const sharp = await loadSharp();
  const meta = await sharp(data, DECODE).metadata();
  const icc = meta.icc !== undefined ? new Uint8Array(meta.icc) : undefined;
  if (meta.space === "grey16" && !meta.hasAlpha) {
    // Pillow keeps 16-bit grey's full range: round(v / 65535 * 255), not the high byte.
    const { data: grey, info } = await sharp(data, DECODE)
      .rotate()
      .toColourspace("grey16")
      .raw({ depth: "ushort" })
      .toBuffer({ resolveWithObject: true });
    const samples = new Uint16Array(grey.buffer, grey.byteOffset, grey.byteLength / 2);
    const rgb = new Uint8Array(info.width * info.height * 3);
    for (let i = 0; i < samples.length; i++) {
      // The same float64 operations, in the same order, as the servers' numpy code.
      const v = Math.floor((samples[i]! / 65535) * 255 + 0.5);
      rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = v;
    }
    return { data: rgb, width: info.width, height: info.height, ...(icc ? { icc } : {}) };
  }
  // libvips gives 8-bit sRGB (grey replicated, palettes expanded, 16-bit cut to the high
  // byte) with the alpha channel as it is; the white background is added below.
  const pipeline = sharp(data, DECODE).rotate().toColourspace("srgb");
  const { data: pixels, info } = await (meta.hasAlpha ? pipeline.ensureAlpha() : pipeline.removeAlpha())
    .raw({ depth: "uchar" })
    .toBuffer({ resolveWithObject: true });
  const rgb = info.channels === 4 ? onWhite(pixels) : new Uint8Array(pixels.buffer, pixels.byteOffset, pixels.byteLength);
  return { data: rgb, width: info.width, height: info.height, ...(icc ? { icc } : {}) };
}

/**
 * RGBA composited on opaque white, in Pillow's `alpha_composite` integer arithmetic
 * (7 extra bits, divisions by 255 rounded), which is what the servers do.
 */
function onWhite(rgba: Uint8Array): Uint8Array {
  const n = rgba.length / 4;
  const rgb = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    const a = rgba[4 * i + 3]!;
    // Over an opaque destination Pillow's coefficients reduce to a * 128 and (255 - a) * 128.
    const coef1 = a * 128;
    const white = 255 * (255 - a) * 128 + (0x80 << 7);
    for (let c = 0; c < 3; c++) {
      const tmp = rgba[4 * i + c]! * coef1 + white;
      rgb[3 * i + c] = (((tmp >>> 8) + tmp) >>> 8) >>> 7;
    }
  }
  return rgb;
}

/**
 * Copies the pixels of an RGBA patch whose alpha is 255 into `image`, at column `x`, row
 * `y` (in place). Pixels of any other alpha are left as they are: the protos give only 0
 * (the input's own) and 255 (the result's), and a copy rather than a blend keeps both
 * exact.
 *
 * @returns How many pixels were copied.
 * @throws When the patch does not fit inside the image.
 */
export function pastePatch(
  image: DecodedImage,
  rgba: Uint8Array,
  width: number,
  height: number,
  x: number,
  y: number,
): number {
  if (rgba.length !== width * height * 4) throw new Error(`patch pixels: ${rgba.length} bytes for ${width}x${height} RGBA`);
  if (x + width > image.width || y + height > image.height) {
    throw new Error(`a ${width}x${height} patch at (${x}, ${y}) does not fit in the ${image.width}x${image.height} image`);
  }
  const out = image.data;
  let copied = 0;
  for (let row = 0; row < height; row++) {
    let src = row * width * 4;
    let dst = ((y + row) * image.width + x) * 3;
    for (let col = 0; col < width; col++, src += 4, dst += 3) {
      if (rgba[src + 3] !== 255) continue;
      out[dst] = rgba[src]!;
      out[dst + 1] = rgba[src + 1]!;
      out[dst + 2] = rgba[src + 2]!;
      copied++;
    }
  }
  return copied;
}

/**
 * Encodes RGB pixels as the servers encode a result: PNG (zlib level 1), JPEG (quality 95)
 * or lossless WebP, with `image.icc` embedded when set.
 *
 * @param format The request's `outputFormat`; UNSPECIFIED is PNG, the servers' default.
 */
export async function encodeImage(image: DecodedImage, format: ImageFormat = ImageFormat.PNG): Promise<Uint8Array> {
  const sharp = await loadSharp();
  const raw = sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } });
  let out: Uint8Array;
  switch (format) {
    case ImageFormat.JPEG:
      out = await raw.jpeg({ quality: 95 }).toBuffer();
      break;
    case ImageFormat.WEBP:
      out = await raw.webp({ lossless: true, effort: 0 }).toBuffer(); // the servers' fastest effort
      break;
    default:
      out = await raw.png({ compressionLevel: 1 }).toBuffer();
  }
  // sharp embeds a profile only by converting the pixels to it (`withIccProfile`), or
  // keeps the one of an encoded input (`keepIccProfile`); these pixels are raw and must
  // not change, so the profile is written into the file here.
  if (image.icc === undefined || image.icc.length === 0) return out;
  switch (format) {
    case ImageFormat.JPEG:
      return jpegWithIcc(out, image.icc);
    case ImageFormat.WEBP:
      return webpWithIcc(out, image.icc, image.width, image.height);
    default:
      return pngWithIcc(out, image.icc);
  }
}

/**
 * The whole picture of an edit that came as a patch: `input` (the encoded image the
 * request sent) decoded as the servers decode it, every patch pixel of alpha 255 copied
 * over it, encoded in `format` with the input's ICC profile - the `image` the server
 * would have sent had it not been asked for a patch (byte for byte its pixels for PNG and
 * WebP; JPEG's are the same encoder settings, not necessarily the same bytes).
 *
 * @param input The encoded input image the patch applies to (its SHA-256 must be the
 *   patch's `baseSha256`).
 * @param patch The result's `patch`.
 * @param format The request's `outputFormat` (UNSPECIFIED: PNG).
 * @returns An `EncodedImage` as the server fills it: data, format, width, height, sha256.
 * @throws When the patch is for another image (SHA-256 or size) or does not fit it.
 */
export async function applyPatch(
  input: Uint8Array,
  patch: ImagePatch,
  format: ImageFormat = ImageFormat.UNSPECIFIED,
): Promise<EncodedImage> {
  const sha = createHash("sha256").update(input).digest("hex");
  if (patch.baseSha256 !== "" && patch.baseSha256 !== sha) {
    throw new Error(`the patch applies to image ${patch.baseSha256}, not to this one (${sha})`);
  }
  if (patch.image === undefined) throw new Error("the patch has no image");
  const sharp = await loadSharp();
  const [image, decoded] = await Promise.all([
    decodeImage(input),
    // The patch as it is: no orientation (it has none), no colour conversion.
    sharp(patch.image.data, DECODE).ensureAlpha().raw({ depth: "uchar" }).toBuffer({ resolveWithObject: true }),
  ]);
  if (image.width !== patch.fullWidth || image.height !== patch.fullHeight) {
    throw new Error(
      `the patch is for a ${patch.fullWidth}x${patch.fullHeight} image, the input decodes to ${image.width}x${image.height}`,
    );
  }
  const { data: rgba, info } = decoded;
  pastePatch(image, rgba, info.width, info.height, patch.x, patch.y);
  const out = format === ImageFormat.UNSPECIFIED ? ImageFormat.PNG : format;
  const data = await encodeImage(image, out);
  return create(EncodedImageSchema, {
    data,
    format: out,
    width: image.width,
    height: image.height,
    sha256: createHash("sha256").update(data).digest("hex"),
  });
}

// ICC profiles written into encoded files, per each format's specification.

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 of a PNG chunk (`zlib.crc32` is newer than Node 20.9, which sharp allows). */
export function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** An `iCCP` chunk right after IHDR (it must come before PLTE and IDAT). */
function pngWithIcc(png: Uint8Array, icc: Uint8Array): Uint8Array {
  const buf = Buffer.from(png.buffer, png.byteOffset, png.byteLength);
  const ihdrEnd = 8 + 8 + buf.readUInt32BE(8) + 4;
  // Keyword, its NUL, compression method 0 (zlib), the compressed profile.
  const body = Buffer.concat([Buffer.from("ICC Profile\0\0", "latin1"), deflateSync(icc)]);
  const chunk = Buffer.alloc(12 + body.length);
  chunk.writeUInt32BE(body.length, 0);
  chunk.write("iCCP", 4, "latin1");
  body.copy(chunk, 8);
  chunk.writeUInt32BE(crc32(chunk.subarray(4, 8 + body.length)), 8 + body.length);
  return Buffer.concat([buf.subarray(0, ihdrEnd), chunk, buf.subarray(ihdrEnd)]);
}

/** APP2 `ICC_PROFILE` segments (65,519 profile bytes each), after SOI and any JFIF APP0. */
function jpegWithIcc(jpeg: Uint8Array, icc: Uint8Array): Uint8Array {
  const buf = Buffer.from(jpeg.buffer, jpeg.byteOffset, jpeg.byteLength);
  let at = 2;
  if (buf[2] === 0xff && buf[3] === 0xe0) at = 4 + buf.readUInt16BE(4);
  const MAX = 65519;
  const count = Math.ceil(icc.length / MAX);
  const segments: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    const part = icc.subarray(i * MAX, (i + 1) * MAX);
    const head = Buffer.alloc(18);
    head.writeUInt16BE(0xffe2, 0);
    head.writeUInt16BE(2 + 14 + part.length, 2);
    head.write("ICC_PROFILE\0", 4, "latin1");
    head[16] = i + 1;
    head[17] = count;
    segments.push(head, Buffer.from(part));
  }
  return Buffer.concat([buf.subarray(0, at), ...segments, buf.subarray(at)]);
}

/** The extended format: a VP8X chunk with the ICC flag, then `ICCP`, then the image. */
function webpWithIcc(webp: Uint8Array, icc: Uint8Array, width: number, height: number): Uint8Array {
  const buf = Buffer.from(webp.buffer, webp.byteOffset, webp.byteLength);
  const riffChunk = (type: string, data: Uint8Array) => {
    const head = Buffer.alloc(8);
    head.write(type, 0, "latin1");
    head.writeUInt32LE(data.length, 4);
    return Buffer.concat([head, data, Buffer.alloc(data.length % 2)]);
  };
  let chunks = buf.subarray(12);
  let vp8x: Buffer;
  if (chunks.toString("latin1", 0, 4) === "VP8X") {
    vp8x = Buffer.from(chunks.subarray(0, 18));
    chunks = chunks.subarray(18);
  } else {
    vp8x = riffChunk("VP8X", Buffer.alloc(10));
    vp8x.writeUIntLE(width - 1, 12, 3);
    vp8x.writeUIntLE(height - 1, 15, 3);
  }
  vp8x[8] = vp8x[8]! | 0x20; // ICC profile present
  const body = Buffer.concat([Buffer.from("WEBP", "latin1"), vp8x, riffChunk("ICCP", icc), chunks]);
  const head = Buffer.alloc(8);
  head.write("RIFF", 0, "latin1");
  head.writeUInt32LE(body.length, 4);
  return Buffer.concat([head, body]);
}
