/**
 * The progress bar of one call, moved by the stream's `Progress` events.
 *
 * A call runs one or two stages: the segmentation (a text, clicks or a box to find) and
 * then the model's own (object_clear, inpaint or generation, one event per step). The bar
 * shows the whole call: the segmentation fills its first {@link SEGMENTATION_SHARE}, the
 * model's steps the rest. It never moves back (a "queued" event or a stage without steps
 * leaves it where it is). Every value it has shown is kept in the element's
 * `data-values` (comma-separated), so a test can tell that it moved with the events.
 *
 * @module
 */
import type { Progress } from "../../src/gen/mic2e/v1/common_pb.js";

/** Part of the bar for the segmentation stage: short next to the model's steps. */
export const SEGMENTATION_SHARE = 0.15;

/** Drives a `<progress max="1">` and a status line from `Progress` events. */
export class ProgressBar {
  #share = 0;
  #shown: number[] = [];

  /**
   * @param bar The `<progress>` element (its `max` is set to 1).
   * @param label Where the current stage and step are written.
   */
  constructor(
    private readonly bar: HTMLProgressElement,
    private readonly label: HTMLElement,
  ) {
    bar.max = 1;
  }

  /** Back to zero for a new call; `segmented` when the call starts with a segmentation. */
  start(segmented: boolean, text: string): void {
    this.#share = segmented ? SEGMENTATION_SHARE : 0;
    this.#shown = [];
    this.#set(0);
    this.label.textContent = text;
  }

  /** One `Progress` event: the bar moves to the call's overall fraction. */
  show(progress: Progress): void {
    const { stage, step, totalSteps } = progress;
    const fraction = totalSteps > 0 ? Math.min(step / totalSteps, 1) : undefined;
    if (fraction !== undefined) {
      const overall = stage === "segmentation" ? this.#share * fraction : this.#share + (1 - this.#share) * fraction;
      this.#set(Math.max(overall, this.bar.value));
    }
    this.label.textContent = totalSteps > 0 ? `${stage}: step ${step} of ${totalSteps}` : `${stage}…`;
  }

  /** The call ended: full bar and a closing line. */
  finish(text: string): void {
    this.#set(1);
    this.label.textContent = text;
  }

  /** The call failed or was cancelled: the bar stays, the line says why. */
  stop(text: string): void {
    this.label.textContent = text;
  }

  #set(value: number): void {
    this.bar.value = value;
    this.#shown.push(Math.round(value * 1000) / 1000);
    this.bar.dataset.values = this.#shown.join(",");
  }
}
