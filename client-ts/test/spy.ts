// An interceptor for the tests that records how each call sent its image and can answer
// as a server would (IMAGE_NOT_FOUND for a reference, UNAVAILABLE) without one.
import type { Message } from "@bufbuild/protobuf";
import { createAsyncIterable } from "@connectrpc/connect/protocol";

import { Code, ConnectError, type Interceptor } from "../src/index.js";
import { errorInfo } from "./wire.js";

type Sent = { image?: { source: { case?: string; value?: unknown } } };

/** Records how each call sent its image; answers IMAGE_NOT_FOUND to the next reference when asked. */
export class Spy {
  readonly seen: (string | undefined)[] = [];
  dropNextReference = false;
  /** Answer UNAVAILABLE to this many of the next calls. */
  unavailable = 0;
  readonly interceptor: Interceptor = (next) => async (req) => {
    let message: Sent;
    if (req.stream) {
      const all: Message[] = [];
      for await (const m of req.message) all.push(m);
      message = all[0] as unknown as Sent;
      req = { ...req, message: createAsyncIterable(all) };
    } else {
      message = req.message as unknown as Sent;
    }
    const source = message.image?.source;
    this.seen.push(source?.case);
    if (this.unavailable > 0) {
      this.unavailable -= 1;
      throw new ConnectError("max connection age", Code.Unavailable);
    }
    if (this.dropNextReference && source?.case === "sha256") {
      this.dropNextReference = false;
      const err = new ConnectError("image not found", Code.NotFound);
      err.details = [{ type: "google.rpc.ErrorInfo", value: errorInfo("IMAGE_NOT_FOUND", "mic2e.v1", { sha256: String(source.value) }) }];
      throw err;
    }
    return next(req);
  };
}
