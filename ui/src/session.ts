// The token lives in sessionStorage (this tab only, gone when it closes): never a cookie,
// so no request is authenticated by the browser on its own (no CSRF surface), and never
// in a URL (history, logs, Referer).

const KEY = "capsuled.token";

export function token(): string | null {
  return sessionStorage.getItem(KEY);
}

export function keep(value: string): void {
  sessionStorage.setItem(KEY, value);
}

export function forget(): void {
  sessionStorage.removeItem(KEY);
}
