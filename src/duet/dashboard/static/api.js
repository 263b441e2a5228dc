// The page's only I/O: signed reads from a controller (each with a fresh nonce, checked against
// the pinned key, the nonce and the request it answers), outputs by hash, live ledger events,
// and the files of a published tiled log. Nothing read here is believed before verify.js says so.

import { VerificationFailure, canonical, hex, requestTarget, verifyAnswer } from './verify.js';

/** A refusal the controller signed ({"error": {code, message}}): its word, verified as such. */
export class ControllerRefused extends Error {
  constructor(code, message, status) {
    super(message);
    this.name = 'ControllerRefused';
    this.code = code;
    this.status = status;
  }
}

/** The controller or the tiles could not be reached or read: nothing was judged. */
export class Unreachable extends Error {
  constructor(message) {
    super(message);
    this.name = 'Unreachable';
  }
}

export function newNonce() {
  return hex(crypto.getRandomValues(new Uint8Array(16)));
}

/**
 * A controller's API at `base` (the directory the page was served from, so a controller behind
 * a path prefix works too). The paths named in signed answers are the controller's own (`/v1/...`).
 */
export class ControllerApi {
  constructor(base) {
    this.base = new URL('./', base);
    this.pin = null; // {controller, publicKey}: set once the user pinned a key
    this.requests = 0;
  }

  url(path, query = {}) {
    const url = new URL(path.replace(/^\//, ''), this.base);
    for (const [name, value] of Object.entries(query)) if (value !== undefined && value !== null) url.searchParams.set(name, value);
    return url;
  }

  /** One GET: the answer as served (not verified), with the nonce and target it must name. */
  async answer(path, query = {}) {
    const nonce = newNonce();
    const params = { ...query, nonce };
    let response;
    this.requests += 1;
    try {
      response = await fetch(this.url(path, params), { credentials: 'omit', cache: 'no-store' });
    } catch (error) {
      throw new Unreachable(`cannot reach the controller (${error.message})`);
    }
    let text;
    try {
      text = await response.text();
    } catch (error) {
      throw new Unreachable(`the controller's answer to ${path} broke off (${error.message})`);
    }
    let answer;
    try {
      answer = JSON.parse(text);
    } catch {
      throw new Unreachable(`the controller answered ${path} with HTTP ${response.status} and no JSON`);
    }
    return { answer, nonce, target: await requestTarget('GET', path, params), status: response.status };
  }

  /**
   * The verified result of a read. A signed refusal is raised as ControllerRefused (after its
   * signature held); an answer that does not verify, as VerificationFailure. `prepare`, given
   * the result, may return its canonical text (so large pages are canonicalized once).
   */
  async get(path, query = {}, prepare = null) {
    if (!this.pin) throw new Error('no controller key is pinned');
    const { answer, nonce, target, status } = await this.answer(path, query);
    const resultText = prepare && answer && typeof answer === 'object' ? prepare(answer.result) : null;
    let result;
    try {
      result = await verifyAnswer(answer, { ...this.pin, nonce, target, resultText });
    } catch (error) {
      if (error instanceof VerificationFailure) error.message = `the answer to GET ${path}: ${error.message}`;
      throw error;
    }
    if (result && typeof result === 'object' && result.error && typeof result.error === 'object' && Object.keys(result).length === 1) {
      throw new ControllerRefused(String(result.error.code), String(result.error.message), status);
    }
    return result;
  }

  /** A stored output by its SHA-256: raw bytes, checked by the caller. A refusal (altered on the
   * controller's disk, pruned) is the controller's signed JSON error. */
  async blob(sha256) {
    let response;
    this.requests += 1;
    try {
      response = await fetch(this.url(`/v1/blobs/${sha256}`), { credentials: 'omit' });
    } catch (error) {
      throw new Unreachable(`cannot fetch output ${sha256.slice(0, 12)}… (${error.message})`);
    }
    if (response.ok) {
      try {
        return new Uint8Array(await response.arrayBuffer());
      } catch (error) {
        // The controller cuts the stream of an output that no longer matches its hash on its disk.
        throw new ControllerRefused('blob_altered', `the controller cut output ${sha256.slice(0, 12)}… short: ${error.message}`, 0);
      }
    }
    let answer = null;
    try {
      answer = await response.json();
    } catch {
      throw new Unreachable(`output ${sha256.slice(0, 12)}…: HTTP ${response.status}`);
    }
    const path = `/v1/blobs/${sha256}`;
    const result = await verifyAnswer(answer, { ...this.pin, target: await requestTarget('GET', path, {}) });
    const error = (result && result.error) || {};
    throw new ControllerRefused(String(error.code), String(error.message), response.status);
  }

  /**
   * Live ledger entries (Server-Sent Events) from `from`: `onEntry(entry)` for each event whose
   * signed answer verifies (else `onFailure(error)`), `onOpen()` at every (re)connection, when
   * anything may have happened meanwhile (a restart, a rollback). EventSource resumes by itself
   * with Last-Event-ID; a stream that ended or failed for good is opened again after a pause.
   */
  events(from, { onEntry, onOpen, onFailure }) {
    let source = null;
    let closed = false;
    let nonce = newNonce();
    let retry = null;
    const open = async (start) => {
      nonce = newNonce();
      const query = { from: start, nonce };
      const target = await requestTarget('GET', '/v1/events', query);
      source = new EventSource(this.url('/v1/events', query));
      source.addEventListener('open', () => onOpen());
      source.addEventListener('entry', async (event) => {
        let answer;
        try {
          answer = JSON.parse(event.data);
          const entry = await verifyAnswer(answer, { ...this.pin, nonce, target });
          onEntry(entry);
        } catch (error) {
          onFailure(error instanceof VerificationFailure ? error : new VerificationFailure('bad_signature', 'a live event is not a signed answer'));
        }
      });
      let last = start;
      source.addEventListener('entry', (event) => {
        last = Number(event.lastEventId) + 1;
      });
      const reopen = () => {
        source.close();
        if (!closed) retry = setTimeout(() => open(last), 2000);
      };
      source.addEventListener('end', reopen);
      source.addEventListener('error', () => {
        if (source.readyState === EventSource.CLOSED) reopen();
      });
    };
    open(from);
    return {
      close() {
        closed = true;
        clearTimeout(retry);
        if (source) source.close();
      },
    };
  }
}

/**
 * A published tiled log (C2SP tlog-tiles: checkpoint, entry bundles) at `base`, read with plain
 * GETs: a bucket, a CDN, or the static host this page itself came from. Cross-origin hosts must
 * allow it (CORS); nothing is sent but the file paths.
 */
export class TilesSource {
  constructor(base) {
    const url = new URL(base, location.href);
    if (!url.pathname.endsWith('/')) url.pathname += '/';
    this.base = url;
    this.requests = 0;
  }

  async file(path, { optional = false } = {}) {
    this.requests += 1;
    let response;
    try {
      response = await fetch(new URL(path, this.base), { credentials: 'omit', cache: path === 'checkpoint' ? 'no-store' : 'default' });
    } catch (error) {
      throw new Unreachable(`cannot read ${path} from ${this.base.href} (${error.message})`);
    }
    if (response.status === 404 || response.status === 403) {
      if (optional) return null;
      throw new Unreachable(`${path} is not in the published log at ${this.base.href}`);
    }
    if (!response.ok) throw new Unreachable(`${path}: HTTP ${response.status} from ${this.base.href}`);
    return new Uint8Array(await response.arrayBuffer());
  }

  async checkpoint() {
    return new TextDecoder('utf-8', { fatal: true }).decode(await this.file('checkpoint'));
  }
}

/** The canonical text of an entries page, each entry's text kept for its leaf hash. */
export function pageText(result, texts) {
  if (!result || typeof result !== 'object' || !Array.isArray(result.entries)) return null;
  const parts = [];
  for (const entry of result.entries) {
    let text = null;
    try {
      text = canonical(entry);
    } catch {
      return null; // verifyAnswer canonicalizes again and refuses it
    }
    texts.set(entry, text);
    parts.push(text);
  }
  const rest = { ...result, entries: [] };
  const skeleton = canonical(rest);
  return skeleton.replace('"entries":[]', () => `"entries":[${parts.join(',')}]`);
}
