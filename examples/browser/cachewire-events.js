// cachewire-events.js: subscribe a web page to a cachewire hub over Server-Sent Events.
// Dependency-free ES module; copy it next to your page. See docs/security.md.
//
//   import { subscribe } from "./cachewire-events.js";
//   const sub = subscribe({
//     hub: "https://hub.example.com",
//     types: ["program:1234", "user:42"],
//     // Protected hub, another origin: how to authenticate the ticket request
//     // (POST /v1/tickets). Called again whenever a fresh ticket is needed.
//     headers: async () => ({ Authorization: `Bearer ${await myApp.hubToken()}` }),
//     onEvent: (event, id) => cache.delete(event.meta.type),
//     onReset: (reset) => refetchEverything(),     // events may have been lost
//     onError: (error) => console.warn(error),      // e.g. a type not granted (403)
//   });
//   sub.close();
//
// Without `headers` the EventSource is opened as is: an open hub, or a protected hub on the
// same site that reads the `cachewire_token` cookie (`withCredentials` sends it to another
// origin listed in --cors-origin); `refresh` is then called before reconnecting after
// `cachewire:reauth`, to renew that cookie.
//
// `cachewire:reauth` (the credential expired or lost a grant) and any stream the browser
// cannot reconnect by itself (a used ticket) are resumed from the last id received, by
// a new EventSource with `?lastEventId=`: the hub replays what was missed.

const RESET = "cachewire:reset";
const REAUTH = "cachewire:reauth";

export class CachewireError extends Error {
  constructor(message, status) {
    super(message);
    this.name = "CachewireError";
    this.status = status; // HTTP status of the ticket request (401, 403, …), or 0
  }
}

export function subscribe(options) {
  const {
    hub,
    types,
    headers = null,
    refresh = null,
    withCredentials = false,
    eventQuery = "eventType",
    onEvent = () => {},
    onReset = () => {},
    onError = () => {},
    retryMs = 1000,
    maxRetryMs = 30000,
  } = options;
  const base = hub.replace(/\/+$/, "");
  let source = null;
  let lastEventId = options.lastEventId || "";
  let closed = false;
  let failures = 0;

  async function ticket() {
    const response = await fetch(`${base}/v1/tickets`, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...(await headers()) },
      body: JSON.stringify({ types }),
    });
    if (!response.ok) {
      let message = response.statusText;
      try {
        message = (await response.json()).error || message;
      } catch (_) {}
      throw new CachewireError(`ticket refused: ${message}`, response.status);
    }
    return (await response.json()).ticket;
  }

  async function open() {
    if (closed) return;
    const query = new URLSearchParams({ [eventQuery]: types.join(",") });
    try {
      if (headers) query.set("ticket", await ticket());
      else if (refresh && failures > 0) await refresh();
    } catch (error) {
      onError(error);
      if (error instanceof CachewireError && error.status === 403) {
        closed = true; // not granted (or a foreign origin): retrying would not help
        return;
      }
      failures += 1; // 401: `headers` gives a fresh credential next time
      return retry();
    }
    if (lastEventId) query.set("lastEventId", lastEventId);
    const es = new EventSource(`${base}/?${query}`, { withCredentials });
    source = es;
    es.onopen = () => {
      failures = 0;
    };
    es.onmessage = (message) => {
      if (message.lastEventId) lastEventId = message.lastEventId;
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (error) {
        onError(error);
        return;
      }
      if (event && event.meta && event.meta.type === RESET) onReset(event);
      else onEvent(event, message.lastEventId);
    };
    es.addEventListener(REAUTH, (message) => {
      if (message.lastEventId) lastEventId = message.lastEventId;
      es.close();
      failures = 1; // renew the cookie (refresh) before reopening
      open();
    });
    es.onerror = () => {
      // The browser reconnects by itself (with Last-Event-ID) unless the hub refused the
      // request (a used ticket, an expired cookie): then the source is CLOSED.
      if (es.readyState === EventSource.CLOSED && source === es) {
        failures += 1;
        retry();
      }
    };
  }

  function retry() {
    if (closed) return;
    const delay = Math.min(maxRetryMs, retryMs * 2 ** Math.min(failures, 10));
    setTimeout(open, delay * (0.5 + Math.random() / 2));
  }

  open();
  return {
    close() {
      closed = true;
      if (source) source.close();
    },
    get lastEventId() {
      return lastEventId;
    },
  };
}
