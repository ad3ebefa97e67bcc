/**
 * The canvas over the photo: the masks found so far, and the marks the user makes on it
 * (clicked points, a dragged box), in the photo's own pixel coordinates.
 *
 * CSS lays the canvas over the photo at the photo's displayed size; everything on it is
 * drawn in photo pixels, and a pointer position is turned into photo pixels by the ratio
 * of the photo's size to the displayed one. The canvas's own resolution is the screen's,
 * whatever the photo's. Pointer events serve mouse, pen and touch
 * alike; the canvas's `touch-action: none` (CSS) keeps a finger that marks or drags from
 * scrolling the page.
 *
 * @module
 */
import type { Box, Instance } from "../../src/gen/mic2e/v1/common_pb.js";
import { masksLayer } from "./masks.js";

/** A clicked point in photo pixels; `negative` marks background. */
export interface Mark {
  x: number;
  y: number;
  negative: boolean;
}

/** A box in photo pixels (x1, y1 exclusive), as the API's `Box`. */
export type BoxInit = Pick<Box, "x0" | "y0" | "x1" | "y1">;

/** What pointer input on the canvas does. */
export type MarkMode = "points" | "box" | "none";

/** A drag shorter than this (photo pixels, either side) is not a box. */
const MIN_BOX = 4;

/** Opacity of the masks over the photo. */
const MASK_ALPHA = 0.5;

export class Overlay {
  /** Clicked points, in order. */
  points: Mark[] = [];
  /** The dragged box, if any. */
  box: BoxInit | undefined;
  /** What the pointer does now. */
  mode: MarkMode = "points";
  /** Whether the next click marks background (read at each click). */
  negativeNext: () => boolean = () => false;
  /** Called after the marks changed. */
  onChange: () => void = () => {};

  readonly #ctx: CanvasRenderingContext2D;
  /** The photo's size: the coordinates of marks, boxes and masks. */
  #width = 1;
  #height = 1;
  /** The masks shown, at the photo's size. */
  #masks: OffscreenCanvas | undefined;
  #dragFrom: { x: number; y: number } | undefined;
  /** Bumped by every new set of masks, so a slower earlier decode does not draw late. */
  #generation = 0;

  constructor(private readonly canvas: HTMLCanvasElement) {
    this.#ctx = canvas.getContext("2d")!;
    canvas.addEventListener("pointerdown", (e) => this.#down(e));
    canvas.addEventListener("pointermove", (e) => this.#move(e));
    canvas.addEventListener("pointerup", (e) => this.#up(e));
    canvas.addEventListener("pointercancel", () => this.#cancelDrag());
  }

  /** A new photo of this size: no masks, no marks. */
  reset(width: number, height: number): void {
    this.#width = width;
    this.#height = height;
    this.points = [];
    this.box = undefined;
    this.clearMasks();
  }

  /** Removes the points and the box (the masks stay). */
  clearMarks(): void {
    this.points = [];
    this.box = undefined;
    this.redraw();
    this.onChange();
  }

  /** Removes the masks. */
  clearMasks(): void {
    this.#generation++;
    this.#masks = undefined;
    this.redraw();
  }

  /** Shows these instances' masks, each in its own colour, instead of any before. */
  async setMasks(instances: Instance[]): Promise<void> {
    const generation = ++this.#generation;
    const layer = await masksLayer(instances.flatMap((instance) => (instance.mask ? [instance.mask] : [])));
    if (generation !== this.#generation) return;
    this.#masks = layer;
    this.redraw();
  }

  /** Draws the masks, then the marks on top. */
  redraw(): void {
    const ctx = this.#ctx;
    this.#fit();
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.setTransform(this.canvas.width / this.#width, 0, 0, this.canvas.height / this.#height, 0, 0);
    // Mask edges stay sharp, scaled up or down.
    ctx.imageSmoothingEnabled = false;
    if (this.#masks) {
      ctx.globalAlpha = MASK_ALPHA;
      ctx.drawImage(this.#masks, 0, 0);
      ctx.globalAlpha = 1;
    }
    // Marks sized for the screen, in photo pixels: one CSS pixel is `unit` of them.
    const unit = this.#width / Math.max(this.canvas.clientWidth, 1);
    ctx.lineWidth = 2.5 * unit;
    if (this.box) {
      const { x0, y0, x1, y1 } = this.box;
      // Dark under light dashes: visible on any photo.
      ctx.strokeStyle = "rgb(0 0 0 / 60%)";
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      ctx.setLineDash([6 * unit, 4 * unit]);
      ctx.strokeStyle = "white";
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      ctx.setLineDash([]);
    }
    for (const { x, y, negative } of this.points) {
      ctx.beginPath();
      // At the middle of the clicked pixel.
      ctx.arc(x + 0.5, y + 0.5, 8 * unit, 0, 2 * Math.PI);
      ctx.fillStyle = negative ? "#c62828" : "#2e7d32";
      ctx.fill();
      ctx.strokeStyle = "white";
      ctx.stroke();
    }
  }

  /**
   * Sizes the canvas to the screen pixels the photo covers now (resizing clears it): a
   * small photo shown large keeps sharp marks, a 12-megapixel one costs no more than the
   * screen.
   */
  #fit(): void {
    const shown = this.canvas.clientWidth * (window.devicePixelRatio || 1);
    const scale = shown > 0 ? shown / this.#width : 1;
    const [width, height] = [Math.round(this.#width * scale), Math.round(this.#height * scale)];
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
    }
  }

  /** The photo pixel under the pointer, inside the photo. */
  #pixel(e: PointerEvent): { x: number; y: number } {
    const rect = this.canvas.getBoundingClientRect();
    const [width, height] = [this.#width, this.#height];
    const x = Math.floor(((e.clientX - rect.left) / rect.width) * width);
    const y = Math.floor(((e.clientY - rect.top) / rect.height) * height);
    return { x: Math.min(Math.max(x, 0), width - 1), y: Math.min(Math.max(y, 0), height - 1) };
  }

  #down(e: PointerEvent): void {
    if (this.mode === "none" || !e.isPrimary) return;
    e.preventDefault();
    const at = this.#pixel(e);
    if (this.mode === "points") {
      this.points.push({ ...at, negative: this.negativeNext() });
      this.redraw();
      this.onChange();
      return;
    }
    this.#dragFrom = at;
    this.canvas.setPointerCapture(e.pointerId);
  }

  #move(e: PointerEvent): void {
    if (this.#dragFrom === undefined) return;
    const to = this.#pixel(e);
    const from = this.#dragFrom;
    // x1, y1 exclusive: the pixel under the pointer is inside.
    this.box = {
      x0: Math.min(from.x, to.x),
      y0: Math.min(from.y, to.y),
      x1: Math.max(from.x, to.x) + 1,
      y1: Math.max(from.y, to.y) + 1,
    };
    this.redraw();
  }

  #up(e: PointerEvent): void {
    if (this.#dragFrom === undefined) return;
    this.#move(e);
    this.#dragFrom = undefined;
    if (this.box && (this.box.x1 - this.box.x0 < MIN_BOX || this.box.y1 - this.box.y0 < MIN_BOX)) this.box = undefined;
    this.redraw();
    this.onChange();
  }

  #cancelDrag(): void {
    this.#dragFrom = undefined;
  }
}
