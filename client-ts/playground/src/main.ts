/**
 * The playground page: pick a photo, mark what to edit, and watch the orchestrator's
 * `EditService` stream work on it.
 *
 * Calls go to this page's own origin (the orchestrator's HTTP port serves both) over the
 * Connect protocol with `@connectrpc/connect-web`, in the binary format: a photo then
 * travels as its bytes, not as base64 JSON a third larger. Requests never set
 * `outputPatch`, so every result is the whole picture and the page needs no patch code.
 *
 * What the user sees of a call: the masks drawn over the photo as soon as the
 * segmentation event arrives, the progress bar moving with each `Progress` event, the
 * result against the photo with a before/after slider and a download link, or the error
 * with each field a `google.rpc.BadRequest` names (the control it belongs to outlined).
 * `document.body.dataset.state` says where the page is (`idle`, `running`, `done`,
 * `error`), for people and tests alike.
 *
 * @module
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";

import { type EncodedImage, ImageFormat, PointLabel, type Progress } from "../../src/gen/mic2e/v1/common_pb.js";
import {
  EditService,
  type RemoveObjectsRequestSchema,
  type ReplaceObjectsRequestSchema,
  type SegmentationResult,
} from "../../src/gen/mic2e/v1/orchestrator_pb.js";
import { BadRequestSchema, ErrorInfoSchema } from "../../src/rpc_details.js";
import { Overlay } from "./overlay.js";
import { ProgressBar } from "./progress.js";

type Action = "remove" | "replace" | "generate";
type TargetKind = "points" | "box" | "text";
type RemoveInit = MessageInitShape<typeof RemoveObjectsRequestSchema>;
type ReplaceInit = MessageInitShape<typeof ReplaceObjectsRequestSchema>;

/** The one event shape every stream of the page shares (the segmentation case is not in Generate's). */
type StreamEvent =
  | { case: "progress"; value: Progress }
  | { case: "segmentation"; value: SegmentationResult }
  | { case: "result"; value: { image?: EncodedImage } }
  | { case: undefined; value?: undefined };

/** The element with this id; the page is static, so a missing one is a bug here. */
function $<T extends HTMLElement>(id: string): T {
  const element = document.getElementById(id);
  if (element === null) throw new Error(`#${id} is missing from index.html`);
  return element as T;
}

const ui = {
  form: $<HTMLFormElement>("controls"),
  file: $<HTMLInputElement>("file"),
  targets: $<HTMLFieldSetElement>("targets"),
  boxLabel: $("box-label"),
  negative: $<HTMLInputElement>("negative"),
  textLabel: $("text-label"),
  text: $<HTMLInputElement>("text"),
  promptLabel: $("prompt-label"),
  promptCaption: $("prompt-caption"),
  prompt: $<HTMLInputElement>("prompt"),
  steps: $<HTMLInputElement>("steps"),
  seed: $<HTMLInputElement>("seed"),
  width: $<HTMLInputElement>("width"),
  height: $<HTMLInputElement>("height"),
  run: $<HTMLButtonElement>("run"),
  clearMarks: $<HTMLButtonElement>("clear-marks"),
  cancel: $<HTMLButtonElement>("cancel"),
  error: $("error"),
  errorMessage: $("error-message"),
  violations: $<HTMLUListElement>("violations"),
  source: $("source"),
  drop: $("drop"),
  photo: $<HTMLImageElement>("photo"),
  overlay: $<HTMLCanvasElement>("overlay"),
  output: $("output"),
  compare: $("compare"),
  before: $<HTMLImageElement>("before"),
  result: $<HTMLImageElement>("result"),
  slider: $<HTMLInputElement>("slider"),
  download: $<HTMLAnchorElement>("download"),
};

const client = createClient(
  EditService,
  createConnectTransport({ baseUrl: location.origin, useBinaryFormat: true }),
);
const overlay = new Overlay(ui.overlay);
const progress = new ProgressBar($<HTMLProgressElement>("progress"), $("status"));

/** The photo being edited: its bytes as picked, and its size as the browser shows it upright. */
let photo: { bytes: Uint8Array; url: string; width: number; height: number } | undefined;
/** The call in flight; aborting it cancels the call (the server stops at its next step). */
let running: AbortController | undefined;
/** Object URL of the result shown, released when the next one replaces it. */
let resultUrl: string | undefined;

const action = () => (ui.form.elements.namedItem("action") as RadioNodeList).value as Action;
const targetKind = () => (ui.form.elements.namedItem("target") as RadioNodeList).value as TargetKind;

/** Shows the controls the chosen action and target use. */
function updateForm(): void {
  const act = action();
  const kind = targetKind();
  const generate = act === "generate";
  ui.source.hidden = generate;
  ui.file.closest("label")!.hidden = generate;
  ui.targets.hidden = generate;
  ui.clearMarks.hidden = generate;
  ui.textLabel.hidden = generate || kind !== "text";
  ui.promptLabel.hidden = act === "remove";
  ui.promptCaption.textContent = generate ? "Prompt" : "Replace with";
  // Replacing by a box fills the box (no segmentation); removing by a box segments the
  // object in it.
  ui.boxLabel.textContent = act === "replace" ? "Drag a box to fill" : "Drag a box";
  ui.negative.closest("label")!.hidden = kind !== "points";
  for (const el of document.querySelectorAll<HTMLElement>(".generate-only")) el.hidden = !generate;
  overlay.mode = generate || kind === "text" ? "none" : kind;
  ui.run.textContent = { remove: "Remove", replace: "Replace", generate: "Generate" }[act];
}

/** Loads a picked or dropped file as the photo to edit. */
async function loadPhoto(file: File): Promise<void> {
  clearError();
  const bytes = new Uint8Array(await file.arrayBuffer());
  const url = URL.createObjectURL(file);
  ui.photo.src = url;
  try {
    await ui.photo.decode();
  } catch {
    URL.revokeObjectURL(url);
    showError(`${file.name} is not a picture this browser can show.`);
    return;
  }
  if (photo) URL.revokeObjectURL(photo.url);
  // naturalWidth/Height are upright (EXIF orientation applied), as the servers see it.
  photo = { bytes, url, width: ui.photo.naturalWidth, height: ui.photo.naturalHeight };
  ui.photo.hidden = false;
  ui.overlay.hidden = false;
  ui.drop.classList.remove("empty");
  overlay.reset(photo.width, photo.height);
  ui.output.hidden = true;
  progress.start(false, `${photo.width}x${photo.height}: ${hint()}`);
}

/** What to do next, for the status line. */
function hint(): string {
  if (targetKind() === "text") return "type what to find, then run.";
  return targetKind() === "points" ? "click the object, then run." : "drag a box around it, then run.";
}

/** A number input's value; undefined when empty. */
function numberOf(input: HTMLInputElement): number | undefined {
  return input.value.trim() === "" ? undefined : Number(input.value);
}

/** The seed input as the API's uint64; undefined when empty. */
function seedOf(): bigint | undefined {
  const value = ui.seed.value.trim();
  return value === "" ? undefined : BigInt(value);
}

/** The request's `target` from the marks or the text; none when nothing is marked (the
 * server then names the field). A box marks the object in it. */
function target(): RemoveInit["target"] {
  const kind = targetKind();
  if (kind === "text") return { case: "text", value: { text: ui.text.value } };
  if (kind === "box") return overlay.box ? { case: "prompt", value: { box: overlay.box } } : { case: undefined };
  if (overlay.points.length === 0) return { case: undefined };
  const points = overlay.points.map(({ x, y, negative }) => ({
    x,
    y,
    label: negative ? PointLabel.NEGATIVE : PointLabel.POSITIVE,
  }));
  return { case: "prompt", value: { points } };
}

/** ReplaceObjects' `target`: as {@link target}, but a box is filled (no segmentation). */
function replaceTarget(): ReplaceInit["target"] {
  if (targetKind() === "box") return overlay.box ? { case: "box", value: overlay.box } : { case: undefined };
  return target();
}

/** The stream of the chosen action, as events of one shape. */
function call(signal: AbortSignal): AsyncIterable<{ event: StreamEvent }> {
  const steps = numberOf(ui.steps);
  const seed = seedOf();
  const image = { source: { case: "data" as const, value: photo?.bytes ?? new Uint8Array() } };
  switch (action()) {
    case "remove":
      return client.removeObjects({ image, target: target(), clearOptions: { steps, seed } }, { signal });
    case "replace":
      return client.replaceObjects(
        { image, target: replaceTarget(), replacement: ui.prompt.value, inpaintOptions: { steps, seed } },
        { signal },
      );
    case "generate":
      return client.generate(
        { prompt: ui.prompt.value, steps, seed, width: numberOf(ui.width), height: numberOf(ui.height) },
        { signal },
      );
  }
}

/** Runs the chosen action and shows its events as they come. */
async function run(): Promise<void> {
  if (running) return;
  clearError();
  const act = action();
  if (act !== "generate" && photo === undefined) {
    showError("Pick a photo first.");
    return;
  }
  const segmented = act !== "generate" && !(act === "replace" && targetKind() === "box");
  // The last result goes: what shows next is this call's.
  overlay.clearMasks();
  ui.output.hidden = true;
  running = new AbortController();
  setRunning(true);
  progress.start(segmented, "Sending…");
  try {
    for await (const { event } of call(running.signal)) {
      if (event.case === "progress") progress.show(event.value);
      else if (event.case === "segmentation") {
        await overlay.setMasks(event.value.instances);
        document.body.dataset.masks = String(event.value.instances.length);
      } else if (event.case === "result" && event.value.image) {
        await showResult(event.value.image, act);
        progress.finish(`Done: ${event.value.image.width}x${event.value.image.height}.`);
        document.body.dataset.state = "done";
      }
    }
  } catch (err) {
    if (err instanceof ConnectError && err.code === Code.Canceled) {
      progress.stop("Cancelled.");
      document.body.dataset.state = "idle";
    } else {
      progress.stop("Failed.");
      showError(err);
    }
  } finally {
    running = undefined;
    setRunning(false);
  }
}

function setRunning(on: boolean): void {
  ui.run.disabled = on;
  ui.cancel.disabled = !on;
  if (on) document.body.dataset.state = "running";
}

const MIME: Record<number, [string, string]> = {
  [ImageFormat.JPEG]: ["image/jpeg", "jpg"],
  [ImageFormat.WEBP]: ["image/webp", "webp"],
};

/** Shows the result against the photo (a generated picture alone), with its download link. */
async function showResult(image: EncodedImage, act: Action): Promise<void> {
  const [type, extension] = MIME[image.format] ?? ["image/png", "png"];
  if (resultUrl) URL.revokeObjectURL(resultUrl);
  resultUrl = URL.createObjectURL(new Blob([image.data.slice()], { type }));
  ui.compare.classList.toggle("single", act === "generate");
  if (act !== "generate" && photo) ui.before.src = photo.url;
  ui.result.src = resultUrl;
  await ui.result.decode();
  ui.download.href = resultUrl;
  ui.download.download = `mic2e-${act}.${extension}`;
  ui.output.hidden = false;
}

/** The control a refused field (e.g. `target`, `text.text`, `clear_options.steps`) belongs to. */
function controlOf(field: string): HTMLElement | undefined {
  const parts = field.split(/[.[]/);
  const [first, last] = [parts[0], parts.at(-1)];
  const options: Record<string, HTMLElement> = { steps: ui.steps, seed: ui.seed, width: ui.width, height: ui.height };
  if (last !== undefined && last in options) return options[last];
  if (first === "image") return ui.file;
  if (first === "replacement" || (first === "prompt" && action() === "generate")) return ui.prompt;
  if (first === "text") return ui.text;
  if (first === "target" || first === "prompt" || first === "box" || first === "masks") return ui.targets;
  return undefined;
}

/** Shows an error: a ConnectError's code and message, each field it names, its reason. */
function showError(err: unknown): void {
  clearError();
  document.body.dataset.state = "error";
  ui.error.hidden = false;
  if (!(err instanceof ConnectError)) {
    ui.errorMessage.textContent = typeof err === "string" ? err : String(err);
    return;
  }
  const reason = err.findDetails(ErrorInfoSchema).at(-1)?.reason;
  ui.errorMessage.textContent = `${Code[err.code]}: ${err.rawMessage}${reason ? ` (${reason})` : ""}`;
  for (const { field, description } of err.findDetails(BadRequestSchema).flatMap((b) => b.fieldViolations)) {
    const item = document.createElement("li");
    item.dataset.field = field;
    const name = document.createElement("code");
    name.textContent = field;
    item.append(name, `: ${description}`);
    ui.violations.append(item);
    controlOf(field)?.setAttribute("aria-invalid", "true");
  }
}

function clearError(): void {
  ui.error.hidden = true;
  ui.errorMessage.textContent = "";
  ui.violations.replaceChildren();
  for (const el of document.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

// Wiring.
ui.form.addEventListener("change", updateForm);
ui.form.addEventListener("submit", (e) => {
  e.preventDefault();
  void run();
});
ui.cancel.addEventListener("click", () => running?.abort());
ui.clearMarks.addEventListener("click", () => {
  overlay.clearMarks();
  overlay.clearMasks();
});
ui.file.addEventListener("change", () => {
  const file = ui.file.files?.[0];
  if (file) void loadPhoto(file);
});
ui.slider.addEventListener("input", () => ui.compare.style.setProperty("--split", `${ui.slider.value}%`));
ui.negative.addEventListener("change", () => overlay.redraw());
overlay.negativeNext = () => ui.negative.checked;
window.addEventListener("resize", () => overlay.redraw());

// A file dropped anywhere on the page is the photo (and never opens in the tab instead).
document.addEventListener("dragover", (e) => {
  e.preventDefault();
  ui.drop.classList.add("dragging");
});
document.addEventListener("dragleave", () => ui.drop.classList.remove("dragging"));
document.addEventListener("drop", (e) => {
  e.preventDefault();
  ui.drop.classList.remove("dragging");
  const file = e.dataTransfer?.files[0];
  if (file) void loadPhoto(file);
});

updateForm();
