// Streams over fetch (not EventSource, which cannot send the token in a header): the
// watch stream of change records, read a JSON object a line, resumed after the last
// seq it saw when the connection drops.

import { ApiError, call, get } from "./api";

export interface Change {
  seq: number;
  event_type: string;
  kind: string;
  uuid: string;
  name: string | null;
  status: string | null;
}

const MAX_LINE = 1 << 20; // a line longer than this is not a change record: drop the stream
const RETRY_MS = 2000;

/** Each line of a streamed body, until it ends or `signal` aborts. */
export async function* lines(resp: Response, signal: AbortSignal): AsyncGenerator<string> {
  if (!resp.body) return;
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  const abort = (): void => void reader.cancel().catch(() => undefined);
  signal.addEventListener("abort", abort);
  let pending = "";
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      pending += value;
      let nl: number;
      while ((nl = pending.indexOf("\n")) >= 0) {
        yield pending.slice(0, nl);
        pending = pending.slice(nl + 1);
      }
      if (pending.length > MAX_LINE) throw new Error("a watch line too long");
    }
  } finally {
    signal.removeEventListener("abort", abort);
  }
}

export type LiveState = "live" | "reconnecting";

/** Calls `onChange` for every change record after the current head (of the project, or
 * of one capsule), for as long as `signal` is not aborted; reconnects with the last seq.
 * `onState` says whether the stream is up. `onChange(null)` means "reload everything":
 * once the head is known (so nothing between the caller's first read and the stream is
 * lost), and after a pruned cursor (410) made the stream start again at the head. */
export async function watch(
  filter: Record<string, string>, signal: AbortSignal,
  onChange: (c: Change | null) => void, onState: (s: LiveState) => void = () => undefined,
): Promise<void> {
  const params = new URLSearchParams(filter);
  let since: number | null = null;
  while (!signal.aborted) {
    try {
      if (since === null) {
        since = await head(params, signal);
        onChange(null);
      }
      const resp = await call("GET", `/v1/events?${params}&watch=true&since=${since}`,
        { accept: "application/x-ndjson", signal });
      onState("live");
      for await (const line of lines(resp, signal)) {
        if (!line.trim()) continue;
        const record = JSON.parse(line) as Change & { heartbeat?: boolean };
        since = record.seq;
        if (!record.heartbeat) onChange(record);
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && err.status === 401) return; // off to log in again
      if (err instanceof ApiError && err.status === 410) since = null; // pruned: from the head
    }
    if (signal.aborted) return;
    onState("reconnecting");
    await sleep(RETRY_MS, signal);
  }
}

async function head(params: URLSearchParams, signal: AbortSignal): Promise<number> {
  const page = await get<{ head: number }>(`/v1/events?${params}&limit=1`, signal);
  return page.head;
}

export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

/** `f` at most once per `ms`, the last call winning (many records → one reload). */
export function debounce(f: () => void, ms: number): () => void {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return () => {
    if (timer !== undefined) clearTimeout(timer);
    timer = setTimeout(() => { timer = undefined; f(); }, ms);
  };
}
