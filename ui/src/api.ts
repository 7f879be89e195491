// Every data call of the dashboard: the capsuled REST API with the session's token in
// X-Auth-Token and a fixed microversion, errors turned into ApiError with Zun's fields.

import { forget, token } from "./session";

export const MICROVERSION = "container 1.40";

export class ApiError extends Error {
  constructor(readonly status: number, readonly title: string, readonly problems: string[]) {
    super(title);
  }
}

let onUnauthenticated: () => void = () => undefined;

/** What to do when the server no longer knows the token (main.ts: go and log in). */
export function whenUnauthenticated(f: () => void): void {
  onUnauthenticated = f;
}

export interface CallOptions {
  body?: unknown;
  accept?: string;
  signal?: AbortSignal;
}

export async function call(method: string, path: string, opts: CallOptions = {}): Promise<Response> {
  const headers: Record<string, string> = {
    "OpenStack-API-Version": MICROVERSION,
    Accept: opts.accept ?? "application/json",
  };
  const t = token();
  if (t !== null) headers["X-Auth-Token"] = t;
  let body: string | undefined;
  if (opts.body !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(opts.body);
  }
  const resp = await fetch(path, {
    method, headers, body, signal: opts.signal, credentials: "omit", cache: "no-store",
    redirect: "error", referrerPolicy: "no-referrer",
  });
  if (!resp.ok) throw await apiError(resp);
  return resp;
}

export async function json<T>(method: string, path: string, opts: CallOptions = {}): Promise<T> {
  const resp = await call(method, path, opts);
  if (resp.status === 204) return undefined as T;
  return (await resp.json()) as T;
}

export const get = <T>(path: string, signal?: AbortSignal): Promise<T> => json<T>("GET", path, { signal });

async function apiError(resp: Response): Promise<ApiError> {
  let title = `${resp.status} ${resp.statusText}`;
  let problems: string[] = [];
  try {
    const body = (await resp.json()) as { errors?: { title?: unknown; detail?: unknown }[] };
    const first = body.errors?.[0];
    if (first) {
      if (typeof first.title === "string") title = first.title;
      // InvalidInput puts one "path: message" problem a line in `detail`.
      if (typeof first.detail === "string") problems = first.detail.split("\n").filter(Boolean);
    }
  } catch {
    // not Zun's shape: the status line says it all
  }
  if (resp.status === 401) {
    forget();
    onUnauthenticated();
  }
  return new ApiError(resp.status, title, problems);
}

/** A short text for any failure, for the page's error line. */
export function describeError(err: unknown): string {
  if (err instanceof ApiError) return err.problems.length > 1 ? err.problems.join("; ") : err.title;
  if (err instanceof Error) return err.message;
  return String(err);
}

export const q = encodeURIComponent;

// The shapes the dashboard reads (the fields it uses; the API sends more).
export interface Container {
  uuid: string;
  name: string;
  image: string;
  status: string;
  status_reason: string | null;
  status_detail: string | null;
  ready: boolean;
  restart_count: number;
  exit_code: number | null;
  tty: boolean;
}

export interface Volume {
  name: string;
  type: string;
  size: number | null;
  docker_volume: string | null;
}

export interface Capsule {
  uuid: string;
  name: string;
  status: string;
  status_reason: string | null;
  ready: string;
  labels: Record<string, string>;
  created_at: string | null;
  containers: Container[];
  init_containers: Container[];
  volumes: Volume[];
  restart_count: number;
  revision: number;
}

export interface CapsuleEvent {
  id: number;
  created_at: string | null;
  last_seen: string | null;
  type: string;
  reason: string;
  message: string | null;
  container: string | null;
  count: number;
}

export interface Whoami {
  project_id: string;
  user_id: string;
  roles: string[];
}
