// The dashboard: renders what audit.js proved, and says loudly what it could not. Every string
// that comes from the controller is set as text (never as HTML); the page's CSP allows no other
// script. Query parameters: `controller` (the key to pin: its fingerprint, a C2SP vkey or a
// base64url SubjectPublicKeyInfo), `tiles` (read the published tiled log at that URL instead
// of the controller's API), `cvm` (the CVM shown).

import { ControllerApi, ControllerRefused, TilesSource, Unreachable } from './api.js';
import { ControllerLedger, HeadStore, TilesLedger, Timeline, summarize } from './audit.js';
import {
  VerificationFailure,
  b64decode,
  b64encode,
  b64urlDecode,
  b64urlEncode,
  canonicalBytes,
  cryptoAvailable,
  ed25519Spki,
  hex,
  importPublicKey,
  isHex64,
  pemToDer,
  sha256Hex,
  sha512,
  verifyAnswer,
} from './verify.js';

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;

/** What each failure is called in the banner. */
const FAILURES = {
  rollback: 'ROLLBACK',
  fork: 'FORK',
  inconsistent_head: 'INCONSISTENT HISTORY',
  bad_signature: 'BAD SIGNATURE',
  stale_answer: 'REPLAYED ANSWER',
  answer_not_bound: 'ANSWER NOT BOUND TO ITS REQUEST',
  bad_head: 'BAD TREE HEAD',
  entry_altered: 'ALTERED ENTRY',
  ledger_corrupted: 'ALTERED ENTRY',
  entry_missing: 'MISSING ENTRY',
  entry_misplaced: 'MISPLACED ENTRY',
  wrong_cvm: 'ENTRY OF ANOTHER CVM',
  no_inclusion_proof: 'NO PROOF',
  output_altered: 'OUTPUT DOES NOT MATCH ITS HASH',
  blob_altered: 'OUTPUT DOES NOT MATCH ITS HASH',
  output_missing: 'OUTPUT MISSING',
  key_mismatch: 'KEY MISMATCH',
  bad_identity: 'BAD IDENTITY',
  bad_key: 'UNUSABLE KEY',
  malformed_tile: 'BAD TILE',
  no_webcrypto: 'CANNOT VERIFY HERE',
};

const EVENTS = {
  'cvm.provisioning': 'Provisioning requested',
  'cvm.created': 'Machine created',
  'cvm.ready': 'Ready',
  'cvm.failed': 'Start failed',
  'cvm.resumed': 'Resumed after a controller restart',
  'cvm.attested': 'Attested',
  'cvm.locked': 'Controller locked itself out',
  'cvm.stopping': 'Stop requested',
  'cvm.stopped': 'Stopped',
  'cvm.stop_failed': 'Stop failed',
  'mode.changed': 'Mode changed',
  'hostkey.mismatch': 'HOST KEY MISMATCH',
  'command.started': 'Command started',
  'command.finished': 'Command finished',
  'command.failed': 'Command failed',
  'command.interrupted': 'Command interrupted',
  'controller.started': 'Controller started',
  'controller.owners': 'Owner set',
  'controller.owners_refused': 'Owner change refused',
  'controller.recovery_failed': 'Recovery failed',
  'controller.policy': 'Approval policy set',
  'proposal.created': 'Proposal created',
  'proposal.approved': 'Proposal approved',
  'proposal.rejected': 'Proposal rejected',
  'proposal.withdrawn': 'Proposal withdrawn',
  'proposal.expired': 'Proposal expired',
  'proposal.executed': 'Proposal executed',
  'proposal.failed': 'Proposal failed',
};

/** The governed operations (docs/approvals.md), as a reader would say them. */
const OPERATIONS = {
  'cvm.start': 'start a CVM',
  'cvm.run': 'run commands',
  'cvm.mark.in-update': 'reopen for updates (in service → in update)',
  'cvm.mark.in-service': 'put in service',
  'cvm.mark.final': 'put in service for good (final)',
  'cvm.stop': 'stop the CVM',
  'owners.change': 'change the owner set',
  'policy.change': 'change the approval policy',
};

const state = {
  mode: params.has('tiles') ? 'tiles' : 'controller',
  api: null,
  ledger: null,
  pin: null,
  selected: undefined, // a CVM id, null for the controller's own entries, undefined for none yet
  timeline: null,
  generation: 0,
  failures: [],
  cvms: new Map(),
  queue: Promise.resolve(),
  events: null,
  proposals: new Map(), // proposal id → what the verified entries of the timeline shown say of it
};

// --- small DOM helpers -------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name === 'text') node.textContent = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function when(iso) {
  const date = new Date(iso);
  if (!iso || Number.isNaN(date.getTime())) return el('span', { class: 'time', text: String(iso ?? '—') });
  return el('time', { class: 'time', datetime: iso, title: `${iso} (UTC)` }, timeFormat.format(date));
}

function short(id, length = 12) {
  return typeof id === 'string' && id.length > length ? id.slice(0, length) + '…' : String(id ?? '—');
}

function grouped(id) {
  return String(id).match(/.{1,4}/g).join(' ');
}

function bytes(n) {
  if (!Number.isFinite(n)) return '';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/** An id shown short, with its full value to copy (and to select: it is in the title too). */
function copyable(value, { length = 12, label = 'id' } = {}) {
  const text = String(value ?? '');
  const button = el('button', {
    class: 'copy',
    type: 'button',
    title: `Copy the full ${label}`,
    'aria-label': `Copy ${label} ${text}`,
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = 'copied';
      } catch {
        button.textContent = 'select it';
      }
      setTimeout(() => (button.textContent = 'copy'), 1500);
    },
    text: 'copy',
  });
  return el('span', { class: 'id' }, length ? el('code', { title: text, 'data-full': text }, short(text, length)) : null, button);
}

/** A link to this view that pins this key: its id for a controller (whose key the page fetches),
 * the key itself for a published log (which carries none). */
function pinLink(publicKey) {
  const url = new URL(location.href);
  url.searchParams.set('controller', state.mode === 'tiles' ? b64urlEncode(publicKey.spki) : publicKey.id);
  return el('span', { class: 'pin-link' }, 'Link that pins this key ', copyable(url.href, { length: 0, label: 'link that pins this key' }));
}

function mark(kind, text) {
  return el('span', { class: `mark ${kind}`, 'data-mark': kind }, text);
}

// --- status and failures -----------------------------------------------------------------------

function setStatus(kind, title, detail = '') {
  const status = $('status');
  status.className = `status ${kind}`;
  $('status-title').textContent = title;
  $('status-detail').textContent = detail;
  document.documentElement.dataset.state = state.failures.length ? 'failed' : kind;
}

/** Failures about one entry or output are listed each; a failure of the ledger as a whole (a
 * rollback seen again at every new entry, say) is listed once, with what was seen last. */
const PER_ITEM = new Set(['entry_altered', 'entry_missing', 'entry_misplaced', 'wrong_cvm', 'output_altered', 'output_missing', 'no_inclusion_proof']);

/** A check that did not hold: the red banner names it, above everything, read out at once. */
function fail(code, message) {
  const same = state.failures.find((f) => f.code === code && (f.message === message || !PER_ITEM.has(code)));
  if (same && same.message === message) return;
  if (same) same.message = message;
  else state.failures.push({ code, message });
  const alert = $('alert');
  alert.hidden = false;
  alert.replaceChildren(
    el('p', { class: 'alert-title' }, '⚠ ', el('strong', { 'data-failure': state.failures[0].code }, FAILURES[state.failures[0].code] || state.failures[0].code.toUpperCase())),
    el(
      'ul',
      {},
      state.failures.map((f) =>
        el('li', { 'data-failure': f.code }, el('strong', {}, `${FAILURES[f.code] || f.code.toUpperCase()}: `), f.message),
      ),
    ),
    el('p', { class: 'alert-help' }, 'Do not trust what this page shows until this is explained. `duet audit` gives the same verdict from a terminal.'),
  );
  document.documentElement.dataset.state = 'failed';
  document.documentElement.dataset.failures = state.failures.map((f) => f.code).join(' ');
  setStatus('failed', 'Verification FAILED', 'see the red banner above');
}

function report(error) {
  if (error instanceof VerificationFailure) fail(error.code, error.message);
  else if (error instanceof ControllerRefused) {
    // The controller checks each entry it reads from its disk against its tree, and refuses to
    // serve one that was altered or deleted there (a signed refusal, in its own words).
    const match = /entr(?:y|ies) \[?(\d+)/.exec(error.message);
    const what = match ? `entry ${match[1]}` : 'an entry';
    if (error.code === 'ledger_corrupted' && /deleted/.test(error.message)) fail('entry_missing', `the controller cannot serve ${what}: ${error.message}`);
    else if (error.code === 'ledger_corrupted') fail('entry_altered', `the controller refuses to serve ${what}: ${error.message}`);
    else if (error.code === 'blob_altered') fail('output_altered', error.message);
    else setStatus('pending', 'The controller refused a request', `${error.code}: ${error.message}`);
  } else if (error instanceof Unreachable) {
    setStatus('pending', 'Cannot read the ledger right now', error.message);
  } else {
    console.error(error);
    setStatus('pending', 'Something went wrong in this page', String(error && error.message));
  }
}

/** Ledger work runs one task at a time, so a live update never races a timeline being proven. */
function enqueue(task) {
  state.queue = state.queue.then(task).catch(report);
  return state.queue;
}

// --- the pinned key ----------------------------------------------------------------------------

const pinKey = () => `duet.dashboard.pin.${state.mode === 'tiles' ? new URL(params.get('tiles'), location.href).href : location.origin + location.pathname}`;

function storedPin() {
  try {
    return JSON.parse(localStorage.getItem(pinKey()) || 'null');
  } catch {
    return null;
  }
}

async function savePin(publicKey, how) {
  const record = { controller: publicKey.id, spki: b64encode(publicKey.spki), how, pinned_at: new Date().toISOString() };
  localStorage.setItem(pinKey(), JSON.stringify(record));
  return record;
}

/** What `?controller=` names: {id} for a fingerprint, {spki} for a key (vkey or base64url SPKI). */
function linkPin(raw) {
  if (!raw) return null;
  const text = raw.trim().toLowerCase().replace(/[\s:]/g, ''); // a fingerprint as printed, grouped or not
  if (isHex64(text)) return { id: text };
  const value = raw.replace(/ /g, '+').trim(); // a + left unencoded in a link reads as a space (a key may end in +)
  const vkey = /^([^+]+)\+([0-9a-f]{8})\+(.+)$/.exec(value); // a C2SP vkey, as the controller logs it
  if (vkey) {
    const material = b64decode(vkey[3]);
    if (material[0] !== 0x01 || material.length !== 33) throw new VerificationFailure('bad_key', 'the vkey in the link is not an Ed25519 note key');
    return { spki: ed25519Spki(material.slice(1)), name: vkey[1] };
  }
  return { spki: b64urlDecode(value) };
}

/** Resolve the key to verify with: the link's, the one this browser pinned, or the user's choice. */
async function pinController(presented) {
  const link = linkPin(params.get('controller'));
  const stored = storedPin();
  let expected = link;
  if (link && link.spki) {
    const key = await importPublicKey(link.spki);
    link.id = key.id;
    if (link.name && link.name !== `duet.controller/${key.id}`) {
      throw new VerificationFailure('key_mismatch', `the vkey in the link is named ${link.name}, but its key is controller ${grouped(key.id)}`);
    }
    link.key = key;
  }
  if (link && stored && stored.controller !== link.id) {
    // A pin is changed on purpose (the button below), never by following a link.
    showRepin(presented || link.key || { id: link.id });
    throw new VerificationFailure(
      'key_mismatch',
      `this browser pinned controller ${grouped(stored.controller)} on ${timeFormat.format(new Date(stored.pinned_at))}, but the link names ${grouped(link.id)}`,
    );
  }
  if (link && link.key) {
    if (presented && link.id !== presented.id) {
      throw new VerificationFailure('key_mismatch', `the link pins controller ${grouped(link.id)}, but this controller presents ${grouped(presented.id)}`);
    }
    await savePin(link.key, 'link');
    return link.key;
  }
  if (!expected && stored) expected = { id: stored.controller, stored };
  if (expected) {
    if (presented && presented.id !== expected.id) {
      const since = expected.stored ? ` on ${timeFormat.format(new Date(expected.stored.pinned_at))}` : '';
      showRepin(presented);
      throw new VerificationFailure(
        'key_mismatch',
        `${expected.stored ? `this browser pinned controller ${grouped(expected.id)}${since}` : `the link pins controller ${grouped(expected.id)}`}, ` +
          `but this controller presents ${grouped(presented.id)}: another controller, or a key that changed`,
      );
    }
    const key = presented || (stored && stored.controller === expected.id ? await importPublicKey(b64decode(stored.spki)) : null);
    if (!key) throw new VerificationFailure('bad_key', 'a published log carries no key: give the whole key in the link (?controller=<vkey>)');
    if (link) await savePin(key, 'link');
    return key;
  }
  if (!presented) throw new VerificationFailure('bad_key', 'a published log carries no key: give the key in the link (?controller=<vkey or base64url public key>)');
  return askToPin(presented);
}

/** First visit: show the fingerprint and wait for the user to compare it with `duet verify`'s. */
function askToPin(presented) {
  const panel = $('pin');
  panel.hidden = false;
  setStatus('pending', 'Pin the controller key first', 'compare its fingerprint with the one `duet verify` printed');
  return new Promise((resolve) => {
    const input = el('input', { id: 'pin-input', type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'paste the controller id that duet verify printed' });
    const result = el('p', { class: 'pin-result', role: 'status' });
    const accept = async (how) => {
      await savePin(presented, how);
      panel.hidden = true;
      resolve(presented);
    };
    panel.replaceChildren(
      el('h2', {}, 'First visit: pin this controller’s key'),
      el('p', {}, 'Everything below is checked against one key. Run ', el('code', {}, `duet --url ${location.origin} verify`), ' and compare the controller id it prints with this fingerprint:'),
      el('p', { class: 'fingerprint', 'data-fingerprint': presented.id }, grouped(presented.id)),
      el(
        'form',
        {
          class: 'pin-form',
          onsubmit: (event) => {
            event.preventDefault();
            const typed = input.value.trim().toLowerCase().replace(/[\s:]/g, '');
            if (typed === presented.id) accept('compared');
            else result.textContent = '✗ That is not this key’s fingerprint. Do not pin it.';
          },
        },
        el('label', { for: 'pin-input' }, 'Paste it here to compare:'),
        input,
        el('button', { type: 'submit' }, 'Compare and pin'),
      ),
      el('button', { type: 'button', class: 'secondary', onclick: () => accept('confirmed') }, 'I compared it: pin this key'),
      result,
    );
    input.focus();
  });
}

function showRepin(presented) {
  const panel = $('pin');
  panel.hidden = false;
  panel.replaceChildren(
    el('h2', {}, 'The controller’s key is not the one pinned'),
    el('p', {}, 'If the controller was replaced on purpose, verify it again with ', el('code', {}, 'duet verify'), ' and pin its new key:'),
    el('p', { class: 'fingerprint' }, grouped(presented.id)),
    el('button', { type: 'button', class: 'secondary', onclick: () => { localStorage.removeItem(pinKey()); location.reload(); } }, 'Forget the pinned key'),
  );
}

// --- the controller --------------------------------------------------------------------------------

function field(name, ...value) {
  return [el('dt', {}, name), el('dd', {}, ...value)];
}

/** The SGX quote's measurements, and whether its REPORTDATA binds this identity (checked here). */
async function quoteFacts(evidence, identity) {
  let quote;
  try {
    quote = b64decode(String(evidence.quote));
  } catch {
    return { error: 'the quote is not base64' };
  }
  if (quote.length < 432) return { error: 'the quote is too short' };
  const body = quote.slice(48, 432);
  const u16 = (at) => body[at] | (body[at + 1] << 8);
  const expected = await sha512(canonicalBytes(identity));
  return {
    mr_enclave: hex(body.slice(64, 96)),
    mr_signer: hex(body.slice(128, 160)),
    isv_prod_id: u16(256),
    isv_svn: u16(258),
    debug: (body[48] & 0x02) !== 0,
    bound: hex(body.slice(320, 384)) === hex(expected),
  };
}

async function renderController(answer, publicKey) {
  const result = answer && answer.result;
  const identity = (result && result.identity) || {};
  const evidence = (result && result.evidence) || {};
  const type = String(evidence.type);
  const items = [
    ...field('Controller id (key fingerprint)', el('span', { class: 'fingerprint small', 'data-controller': publicKey.id }, grouped(publicKey.id)), ' ', copyable(publicKey.id, { length: 0, label: 'controller id' })),
    ...field('Key', `${publicKey.type === 'ed25519' ? 'Ed25519' : publicKey.type === 'ecdsa' ? 'ECDSA P-256' : 'RSA-PSS'}, pinned in this browser `, mark('verified', '✓ pinned'), el('br'), pinLink(publicKey)),
  ];
  let verdict;
  if (type === 'none') {
    verdict = el('span', { class: 'badge danger' }, 'NOT ATTESTED — TEE none: nothing proves which code runs');
  } else if (type === 'simulated-sgx' || type === 'sgx-dcap') {
    const facts = await quoteFacts(evidence, identity);
    verdict = el(
      'span',
      {},
      type === 'simulated-sgx' ? el('span', { class: 'badge warn', 'data-simulated': 'true' }, 'SIMULATED SGX — signed by a local root, protects nothing') : el('span', { class: 'badge' }, 'Intel SGX (DCAP)'),
    );
    if (facts.error) items.push(...field('Quote', facts.error));
    else {
      items.push(
        ...field('Report data', facts.bound ? mark('verified', '✓ binds this identity (checked here)') : mark('failed', '✗ does not bind this identity')),
        ...field('MRENCLAVE', copyable(facts.mr_enclave, { length: 16, label: 'MRENCLAVE' })),
        ...field('MRSIGNER', copyable(facts.mr_signer, { length: 16, label: 'MRSIGNER' })),
        ...field('Product / SVN', `${facts.isv_prod_id} / ${facts.isv_svn}`, facts.debug ? el('span', { class: 'badge danger' }, ' DEBUG enclave') : ''),
        ...field('Quote signature', 'checked by ', el('code', {}, 'duet verify'), ' (to its root), not in this page'),
      );
      if (!facts.bound) fail('bad_identity', 'the quote’s REPORTDATA is not SHA-512 of the identity document: the evidence is about another identity');
    }
  } else {
    verdict = el('span', { class: 'badge danger' }, `unknown evidence type ${type}`);
  }
  items.splice(2, 0, ...field('Attestation', verdict));
  const owners = Array.isArray(identity.owners) ? identity.owners : [];
  items.push(...field(`Owners (${owners.length})`, el('ul', { class: 'owners' }, owners.map((o) => el('li', {}, copyable(o, { length: 16, label: 'owner key id' }))))));
  if (identity.version) items.push(...field('Version', String(identity.version)));
  items.push(...field('Ledger', el('span', { id: 'ledger-head' }, '…')));
  $('controller-facts').replaceChildren(...items);
}

function renderHead(head, seen) {
  const target = $('ledger-head');
  if (!target) return;
  target.replaceChildren(
    mark('verified', '✓ signed'),
    ` ${head.tree_size.toLocaleString()} entries, root `,
    copyable(head.root_hash, { length: 12, label: 'root hash' }),
    ...(head.timestamp ? [', signed ', when(head.timestamp)] : [', checkpoint']),
    el('br'),
    !seen
      ? 'the first head this browser sees from this controller'
      : seen.tree_size === head.tree_size
        ? 'the same tree as the head this browser saw before'
        : `proven to extend the head of ${seen.tree_size.toLocaleString()} entries this browser saw before`,
  );
  $('head-size').textContent = head.tree_size.toLocaleString();
}

// --- CVMs ------------------------------------------------------------------------------------------

function modeBadge(mode, final) {
  const label = { 'in-service': 'IN SERVICE', 'in-update': 'in update' }[mode] || String(mode ?? 'unknown');
  return el('span', { class: `badge mode mode-${mode}`, 'data-mode': mode }, label, final ? ' · final' : '');
}

function attestationSummary(attestation) {
  const last = attestation && attestation.last;
  if (!last) return el('span', { class: 'muted' }, attestation && attestation.required === false ? 'attestation off' : 'not attested yet');
  return el(
    'span',
    {},
    last.ok ? el('span', { class: 'badge ok' }, '✓ attested') : el('span', { class: 'badge danger' }, '✗ attestation failed'),
    last.simulated ? el('span', { class: 'badge warn', 'data-simulated': 'true' }, 'SIMULATED') : '',
    ` ${last.kind || ''}`,
  );
}

function renderCvms(cvms) {
  const list = $('cvm-list');
  for (const cvm of cvms) {
    state.cvms.set(cvm.cvm_id, cvm);
    let item = list.querySelector(`[data-cvm="${CSS.escape(cvm.cvm_id)}"]`);
    const content = [
      el('span', { class: 'cvm-id' }, el('code', {}, short(cvm.cvm_id, 16))),
      el('span', { class: 'cvm-kind' }, `${cvm.type || '?'} · ${cvm.provider || '?'}`),
      modeBadge(cvm.mode, cvm.final),
      el('span', { class: 'cvm-att' }, attestationSummary(cvm.attestation)),
    ];
    if (!item) {
      item = el('li', { 'data-cvm': cvm.cvm_id }, el('button', { type: 'button', class: 'cvm', onclick: () => select(cvm.cvm_id) }));
      const controllerItem = list.querySelector('[data-cvm=""]');
      list.insertBefore(item, controllerItem);
    }
    item.firstChild.replaceChildren(...content);
    item.firstChild.setAttribute('aria-current', state.selected === cvm.cvm_id ? 'true' : 'false');
  }
  $('cvm-count').textContent = String(state.cvms.size);
  if (state.selected === undefined && cvms.length) {
    const wanted = params.get('cvm');
    const pick = cvms.find((c) => c.cvm_id === wanted) || cvms.find((c) => c.mode === 'in-service') || cvms[cvms.length - 1];
    select(pick.cvm_id);
  }
  if (state.selected !== undefined) renderCvmHeader();
}

function ensureControllerItem() {
  const list = $('cvm-list');
  if (list.querySelector('[data-cvm=""]')) return;
  list.append(
    el('li', { 'data-cvm': '' }, el('button', { type: 'button', class: 'cvm controller-events', onclick: () => select(null) }, el('span', { class: 'cvm-id' }, 'Controller events'), el('span', { class: 'cvm-kind' }, 'owners, policy, restarts'))),
  );
}

async function refreshCvms() {
  if (state.mode === 'tiles') {
    renderCvms(summarize(state.ledger.entries));
    return;
  }
  const result = await state.api.get('/v1/cvms');
  renderCvms(Array.isArray(result && result.cvms) ? result.cvms : []);
}

function select(cvm) {
  if (state.selected === cvm && state.timeline) return;
  state.selected = cvm;
  for (const button of document.querySelectorAll('#cvm-list button')) {
    button.setAttribute('aria-current', String(button.parentElement.dataset.cvm === (cvm ?? '')));
  }
  const url = new URL(location.href);
  if (cvm) url.searchParams.set('cvm', cvm);
  else url.searchParams.delete('cvm');
  history.replaceState(null, '', url);
  renderCvmHeader();
  enqueue(() => loadTimeline(cvm));
}

function renderCvmHeader() {
  const cvm = state.selected ? state.cvms.get(state.selected) : null;
  const header = $('timeline-header');
  if (state.selected === null) {
    header.replaceChildren(el('h2', { id: 'timeline-title' }, 'Controller events'), el('p', { class: 'muted' }, 'Entries about no CVM: starts, owner sets, approval policies, and the proposals to start a CVM or to change the owners or the policy.'));
    return;
  }
  if (!cvm) return;
  const verified = state.timeline && state.timeline.cvm === state.selected ? summarize(state.timeline.entries.filter((e) => state.timeline.proven.has(e.seq)))[0] : null;
  const att = cvm.attestation && cvm.attestation.last;
  header.replaceChildren(
    el('h2', { id: 'timeline-title' }, 'CVM ', copyable(cvm.cvm_id, { length: 16, label: 'CVM id' })),
    el(
      'div',
      { class: 'cvm-mode' },
      modeBadge(cvm.mode, cvm.final),
      el('span', { class: 'mode-help' }, cvm.mode === 'in-service' ? 'the owner cannot run commands on it' : cvm.mode === 'in-update' ? 'the owner may run commands on it; each is recorded below' : ''),
      verified && verified.mode === cvm.mode ? mark('verified', '✓ by the ledger') : mark('pending', '… ledger'),
    ),
    el('dl', { class: 'facts' }, ...field('Type · provider', `${cvm.type || '?'} · ${cvm.provider || '?'}`), ...field('Final', cvm.final ? (cvm.lockdown === 'done' ? 'yes — the controller locked itself out' : 'yes — lockdown pending') : 'no'), ...field('Attestation', attestationSummary(cvm.attestation))),
    att ? attestationDetails(att) : '',
  );
}

function attestationDetails(att) {
  const measurements = att.measurements && typeof att.measurements === 'object' ? Object.entries(att.measurements) : [];
  return el(
    'details',
    { class: 'attestation' },
    el('summary', {}, `Latest attestation: ${att.ok ? 'passed' : 'FAILED'}${att.simulated ? ' (SIMULATED hardware)' : ''}, `, when(att.time), att.seq !== undefined ? ` — ledger entry #${att.seq}` : ''),
    el(
      'dl',
      { class: 'facts' },
      ...field('Kind · signer', `${att.kind || '?'} · ${att.signer || '?'}`),
      ...measurements.flatMap(([name, value]) => field(name, copyable(String(value), { length: 24, label: name }))),
      ...(att.tcb ? field('TCB', Object.entries(att.tcb).map(([k, v]) => `${k} ${v}`).join(', ')) : []),
      ...field('Debug · migration', `${att.debug ? 'DEBUG' : 'no debug'} · ${att.migration_allowed ? 'migration ALLOWED' : 'no migration'}`),
      ...(att.evidence_sha256 ? field('Evidence', copyable(att.evidence_sha256, { label: 'evidence SHA-256' })) : []),
      ...(att.valid_until ? field('Valid until', when(att.valid_until)) : []),
    ),
  );
}

// --- the timeline ----------------------------------------------------------------------------------

function describe(entry) {
  const parts = [];
  const actor = entry.actor && entry.actor !== 'controller' ? ['by owner ', copyable(entry.actor, { length: 10, label: 'owner key id' })] : [];
  switch (entry.event) {
    case 'command.started':
      parts.push(el('code', { class: 'command' }, `$ ${entry.command}`), ' ', ...actor);
      break;
    case 'command.finished':
      parts.push(
        el('code', { class: 'command' }, `$ ${entry.command}`),
        ' ',
        el('span', { class: `badge exit ${entry.exit_status === 0 ? 'ok' : 'danger'}`, 'data-exit': entry.exit_status }, `exit ${entry.exit_status}`),
        ` ${Number(entry.duration_ms || 0).toFixed(0)} ms${entry.timed_out ? ', TIMED OUT' : ''}`,
      );
      break;
    case 'mode.changed':
      parts.push(`${entry.previous} → `, modeBadge(entry.mode, entry.final), ' ', ...actor);
      break;
    case 'cvm.ready':
      parts.push(`mode ${entry.mode || 'in-update'}`, entry.uname ? ` — ${entry.uname}` : '');
      break;
    case 'cvm.attested':
      parts.push(entry.ok ? el('span', { class: 'badge ok' }, '✓ passed') : el('span', { class: 'badge danger' }, '✗ FAILED'), entry.simulated ? el('span', { class: 'badge warn', 'data-simulated': 'true' }, 'SIMULATED') : '', ` ${entry.kind || ''}`, entry.reason ? ` — ${entry.reason}` : '');
      break;
    case 'cvm.provisioning':
      parts.push(`${entry.type || ''} on ${entry.provider || '?'} `, ...actor);
      break;
    case 'proposal.created': {
      const request = entry.request && typeof entry.request === 'object' ? entry.request : null;
      parts.push(operation(entry.operation || entry.op), el('br'), ...who('proposed by', entry.actor), ' ', tally(1, entry.threshold, 'the proposer’s'));
      parts.push(el('br'), 'expires ', when(entry.expires_at));
      if (entry.cvm_mode) parts.push(`; made while the CVM is ${entry.cvm_mode}${entry.cvm_final ? ' (final)' : ''}`, Number.isSafeInteger(entry.cvm_mode_seq) ? ` (since #${entry.cvm_mode_seq})` : '');
      parts.push(...proposed(entry, request));
      break;
    }
    case 'proposal.approved': {
      const threshold = entry.threshold;
      const more = Number.isSafeInteger(threshold) && Number.isSafeInteger(entry.approvals) ? threshold - entry.approvals : null;
      parts.push(...about(entry.proposal), ...who('approved by', entry.actor), ' ', tally(entry.approvals, threshold), entry.ready ? ' threshold met: it runs now' : more > 0 ? ` ${more} more needed` : '');
      break;
    }
    case 'proposal.rejected': {
      const params = entry.request && typeof entry.request === 'object' && entry.request.params ? entry.request.params : {};
      parts.push(...about(entry.proposal), ...who('rejected by', entry.actor), ` (${entry.rejections} rejection${entry.rejections === 1 ? '' : 's'})`);
      if (entry.closed) parts.push(' ', el('span', { class: 'badge danger outcome' }, 'closed, not executed'), ' the threshold is out of reach');
      if (typeof params.reason === 'string' && params.reason) parts.push(el('br'), 'reason: ', el('q', { class: 'reason' }, params.reason));
      break;
    }
    case 'proposal.withdrawn':
      parts.push(...about(entry.proposal), ...who('withdrawn by its proposer,', entry.actor), ' ', el('span', { class: 'badge warn outcome' }, 'closed, not executed'));
      break;
    case 'proposal.expired':
      parts.push(...about(entry.proposal), el('span', { class: 'badge warn outcome' }, 'not executed'), ' not enough approvals before ', when(entry.expires_at));
      break;
    case 'proposal.executed': {
      const approvers = Array.isArray(entry.approvers) ? entry.approvers : [];
      parts.push(operation(entry.operation), el('br'), tally(approvers.length, entry.threshold), ' by ');
      approvers.forEach((approver, i) => parts.push(i ? ', ' : '', copyable(approver, { length: 10, label: 'approver key id' })));
      break;
    }
    case 'proposal.failed':
      parts.push(...about(entry.proposal), el('span', { class: 'badge danger outcome' }, 'not executed'), ' ', el('code', { class: 'code' }, String(entry.code)), entry.reason ? `: ${entry.reason}` : '');
      break;
    case 'controller.policy':
      parts.push(thresholds(entry.policy), el('br'), 'policy ', copyable(entry.policy_sha256, { length: 12, label: 'policy SHA-256' }), ' ', ...actor);
      break;
    case 'controller.owners': {
      const count = Array.isArray(entry.owners) ? entry.owners.length : '?';
      parts.push(`${count} owner key${count === 1 ? '' : 's'}`, ' ', ...actor);
      if (entry.actor && entry.actor !== 'controller') {
        if (Array.isArray(entry.added) && entry.added.length) parts.push(`; ${entry.added.length} added`);
        if (Array.isArray(entry.removed) && entry.removed.length) {
          parts.push('; removed ');
          entry.removed.forEach((key, i) => parts.push(i ? ', ' : '', copyable(key, { length: 10, label: 'owner key id' })));
        }
      }
      break;
    }
    default:
      for (const name of ['reason', 'error', 'mode', 'host_key_fingerprint']) {
        if (entry[name]) {
          parts.push(`${name}: ${typeof entry[name] === 'string' ? entry[name] : JSON.stringify(entry[name])}`);
          break;
        }
      }
  }
  if (entry.proposal && String(entry.event).startsWith('proposal.')) {
    parts.push(el('span', { class: 'proposal-id' }, ' proposal ', copyable(entry.proposal, { length: 10, label: 'proposal id' })));
  } else if (typeof entry.request_digest === 'string' && state.proposals.has(entry.request_digest)) {
    // an operation run by a proposal: its own entries carry the proposal id as their request digest
    const known = state.proposals.get(entry.request_digest);
    parts.push(
      el(
        'span',
        { class: 'proposal-id', 'data-proposal': entry.request_digest },
        'as approved in proposal ',
        copyable(entry.request_digest, { length: 10, label: 'proposal id' }),
        known.executed ? ` (${known.executed.approvers} of ${known.executed.threshold} owners)` : '',
      ),
    );
  }
  return parts;
}

/** An operation by its policy name, and what it does. */
function operation(name) {
  const meaning = OPERATIONS[name];
  return el('span', { class: 'operation', 'data-operation': name }, el('code', {}, String(name ?? '?')), meaning ? ` ${meaning}` : '');
}

/** "2 of 2 approvals": a badge, green once the threshold is met. */
function tally(count, threshold, whose = '') {
  const met = Number.isSafeInteger(count) && Number.isSafeInteger(threshold) && count >= threshold;
  return el(
    'span',
    { class: `badge tally ${met ? 'ok' : 'warn'}`, 'data-tally': `${count}/${threshold}` },
    `${count ?? '?'} of ${threshold ?? '?'} approval${threshold === 1 ? '' : 's'}${whose ? ` (${whose})` : ''}`,
  );
}

/** "approved by owner 3f2a… copy" (the controller acts as itself). */
function who(verb, actor) {
  if (!actor || actor === 'controller') return [`${verb} the controller`];
  return [`${verb} owner `, copyable(actor, { length: 10, label: 'owner key id' })];
}

/** The operation a vote or outcome is about ("cvm.stop: "), when the timeline shows its proposal. */
function about(proposal) {
  const known = state.proposals.get(proposal);
  return known && known.operation ? [el('code', { class: 'operation', 'data-operation': known.operation }, known.operation), ': '] : [];
}

/** What a proposal would run, from the signed request it carries (null above 16 KiB: a blob). */
function proposed(entry, request) {
  if (!request) return entry.request === null ? [el('br'), el('span', { class: 'muted' }, 'the signed request is kept as a blob (over 16 KiB)')] : [];
  const params = request.params && typeof request.params === 'object' ? request.params : {};
  const out = [];
  if (Array.isArray(params.commands)) out.push(...params.commands.map((command) => el('code', { class: 'command proposed' }, `$ ${command}`)));
  if (Array.isArray(params.add) && params.add.length) out.push(el('br'), `adds ${params.add.length} owner key${params.add.length === 1 ? '' : 's'}`);
  if (Array.isArray(params.remove) && params.remove.length) {
    out.push(el('br'), 'removes ');
    params.remove.forEach((key, i) => out.push(i ? ', ' : '', copyable(key, { length: 10, label: 'owner key id' })));
  }
  if (params.policy && typeof params.policy === 'object') out.push(el('br'), `new policy: ${thresholds(params.policy)}`);
  if (entry.operation === 'cvm.start' && (params.type || params.provider)) out.push(el('br'), `${params.type || '?'} on ${params.provider || '?'}`);
  return out;
}

/** A policy's thresholds above one owner, in a line ("cvm.stop 2, owners.change 3"). */
function thresholds(policy) {
  const table = policy && typeof policy.thresholds === 'object' && policy.thresholds ? policy.thresholds : {};
  const above = Object.entries(table).filter(([, n]) => n !== 1);
  return above.length ? above.map(([op, n]) => `${op} needs ${n}`).join(', ') + '; any other operation 1' : 'one owner for every operation';
}

/** What an entry tells of the proposals (before its row is drawn, so later rows can say it). */
function learn(entry) {
  if (!entry || typeof entry.proposal !== 'string' || !String(entry.event).startsWith('proposal.')) return;
  const known = state.proposals.get(entry.proposal) || {};
  if (entry.event === 'proposal.created') Object.assign(known, { operation: entry.operation || entry.op, proposer: entry.actor, threshold: entry.threshold });
  if (entry.event === 'proposal.executed') {
    known.operation = known.operation || entry.operation;
    known.executed = { approvers: Array.isArray(entry.approvers) ? entry.approvers.length : '?', threshold: entry.threshold };
  }
  state.proposals.set(entry.proposal, known);
}

function outputBlock(entry, stream) {
  const digest = entry[`${stream}_sha256`];
  if (typeof digest !== 'string') return null;
  const size = entry[`${stream}_size`];
  const preview = el('span', { class: 'preview' }, size === 0 ? '(empty)' : '…');
  const check =
    size === 0 ? mark('verified', '✓ empty') : state.mode === 'tiles' ? mark('pending', 'not published') : mark('pending', '… hash');
  const pre = el('pre', { class: 'output', tabindex: '0' });
  const details = el(
    'details',
    { class: 'stream', 'data-stream': stream, 'data-sha256': digest },
    el('summary', {}, el('span', { class: 'stream-name' }, stream), ` ${bytes(size)}${entry[`${stream}_truncated`] ? ' (cut)' : ''} `, check, ' ', preview),
    pre,
    el('p', { class: 'muted small' }, 'SHA-256 ', copyable(digest, { length: 16, label: `${stream} SHA-256` })),
  );
  details.check = check;
  details.preview = preview;
  details.pre = pre;
  if (size !== 0) outputs.observe(details);
  details.addEventListener('toggle', () => details.open && fetchOutput(details));
  return details;
}

const fetching = new Set();
let inFlight = 0;
const waiting = [];
const outputs = new IntersectionObserver((seen) => {
  for (const item of seen) {
    if (item.isIntersecting) {
      outputs.unobserve(item.target);
      fetchOutput(item.target);
    }
  }
});

/** Fetch an output by its hash and check it against the hash the (proven) entry recorded. */
async function fetchOutput(details) {
  if (fetching.has(details) || state.mode === 'tiles') return;
  fetching.add(details);
  if (inFlight >= 4) await new Promise((resolve) => waiting.push(resolve));
  inFlight += 1;
  const digest = details.dataset.sha256;
  try {
    const data = await state.api.blob(digest);
    const actual = await sha256Hex(data);
    const text = new TextDecoder().decode(data);
    details.pre.textContent = text;
    details.preview.textContent = text.split('\n', 1)[0].slice(0, 80) || '(blank)';
    if (actual === digest) {
      details.check.replaceWith((details.check = mark('verified', '✓ hash')));
    } else {
      details.check.replaceWith((details.check = mark('failed', '✗ ALTERED')));
      details.classList.add('failed');
      fail('output_altered', `an output served for hash ${digest.slice(0, 16)}… hashes to ${actual.slice(0, 16)}…: it is not what the ledger recorded`);
    }
  } catch (error) {
    details.check.replaceWith((details.check = mark('failed', error.code === 'output_pruned' ? 'pruned' : '✗ unavailable')));
    if (error instanceof ControllerRefused && error.code === 'output_pruned') details.preview.textContent = error.message;
    else if (error instanceof ControllerRefused && error.code === 'unknown_blob') {
      fail('output_missing', `the output with hash ${digest.slice(0, 16)}…, which a verified entry recorded, is not served: ${error.message}`);
    } else report(error);
  } finally {
    inFlight -= 1;
    if (waiting.length) waiting.shift()();
  }
}

function row(entry) {
  const outputsOf = entry.event === 'command.finished' ? [outputBlock(entry, 'stdout'), outputBlock(entry, 'stderr')] : [];
  const label = EVENTS[entry.event] || entry.event;
  return el(
    'li',
    { class: `entry event-${String(entry.event).replace(/[^a-z]/g, '-')}`, id: `seq-${entry.seq}`, 'data-seq': entry.seq, 'data-event': entry.event, 'data-state': 'pending' },
    el('span', { class: 'entry-mark' }, mark('pending', '… checking')),
    el('span', { class: 'entry-when' }, when(entry.time), el('span', { class: 'seq' }, `#${entry.seq}`)),
    el('div', { class: 'entry-what' }, el('strong', { class: 'event' }, label), el('span', { class: 'event-name' }, entry.event), el('div', { class: 'entry-detail' }, ...describe(entry)), ...outputsOf),
  );
}

function setRowState(node, kind) {
  node.dataset.state = kind;
  const text = { verified: '✓ verified', failed: '✗ NOT VERIFIED', pending: '… checking' }[kind];
  node.querySelector('.entry-mark').replaceChildren(mark(kind, text));
}

/** Rows shown at first, the latest ones; earlier ones on request (every entry is proven either way). */
const WINDOW = 200;

function rowsOf(timeline, entries) {
  const bad = new Set(timeline.findings.map((f) => f.seq).filter((s) => s !== null));
  const fragment = document.createDocumentFragment();
  for (const entry of entries) {
    const node = row(entry);
    setRowState(node, bad.has(entry.seq) || !timeline.proven.has(entry.seq) ? 'failed' : 'verified');
    fragment.append(node);
  }
  return fragment;
}

function showTimeline(timeline) {
  const entries = timeline.entries;
  let shown = Math.min(WINDOW, entries.length);
  const earlier = $('earlier');
  const more = () => {
    const hidden = entries.length - shown;
    earlier.hidden = hidden === 0;
    earlier.textContent = `Show ${Math.min(WINDOW, hidden).toLocaleString()} earlier entries (${hidden.toLocaleString()} not shown, all verified alike)`;
  };
  earlier.onclick = () => {
    const from = Math.max(0, entries.length - shown - WINDOW);
    $('entries').prepend(rowsOf(timeline, entries.slice(from, entries.length - shown)));
    shown = entries.length - from;
    more();
  };
  $('entries').replaceChildren(rowsOf(timeline, entries.slice(entries.length - shown)));
  more();
  $('entry-count').textContent = entries.length.toLocaleString();
  $('empty').hidden = entries.length > 0;
}

const failedState = () => state.failures.length > 0;

async function loadTimeline(cvm) {
  const generation = ++state.generation;
  const list = $('entries');
  list.replaceChildren();
  $('empty').hidden = true;
  $('earlier').hidden = true;
  setStatus('verifying', 'Verifying…', 'checking the timeline against the signed head');
  let timeline;
  const started = performance.now();
  if (state.mode === 'tiles') {
    timeline = new Timeline(cvm);
    for (const entry of state.ledger.entries) {
      if (entry.cvm === cvm) {
        timeline.add(entry, null);
        timeline.proven.add(entry.seq);
      }
    }
  } else {
    timeline = await state.ledger.timeline(cvm, state.ledger.head, (done, total) => {
      if (generation === state.generation) $('progress').textContent = `${done.toLocaleString()} of ${total.toLocaleString()} checked`;
    });
  }
  if (generation !== state.generation) return;
  state.timeline = timeline;
  const proven = performance.now();
  state.proposals = new Map();
  for (const entry of timeline.entries) if (timeline.proven.has(entry.seq)) learn(entry);
  showTimeline(timeline);
  for (const finding of timeline.findings) fail(finding.code, finding.message);
  $('progress').textContent = '';
  figures(started, proven, timeline);
  finished(timeline);
  renderCvmHeader();
}

/** All entries shown are proven: say so (and in data-verified, for tests and bench/dashboard.py). */
function finished(timeline) {
  const verified = timeline.entries.filter((e) => timeline.proven.has(e.seq)).length;
  if (failedState()) return;
  setStatus(
    'verified',
    'Verified in this browser',
    `${verified.toLocaleString()} entr${verified === 1 ? 'y' : 'ies'} proven in the head signed by the pinned key; consistent with every head this browser saw`,
  );
  document.documentElement.dataset.verified = String(verified);
}

/** What the first full verification of a timeline cost, for bench/dashboard.py (window.duetDashboard). */
function figures(started, proven, timeline) {
  window.duetDashboard = {
    verifiedAt: performance.now(), // since navigation start: the page, the identity, the head, the timeline
    timelineMs: performance.now() - started,
    provingMs: proven - started,
    entries: timeline.entries.length,
    requests: (state.api || state.ledger.source).requests,
  };
}

/** New entries (already proven in the new head): append this CVM's, refresh the list. */
function appendProven(all) {
  const timeline = state.timeline;
  let touched = false;
  for (const [entry, leaf] of all) {
    if (typeof entry.cvm === 'string') touched = true;
    if (!timeline || entry.cvm !== timeline.cvm || entry.seq <= (timeline.last ?? -1)) continue;
    const before = timeline.findings.length;
    timeline.add(entry, leaf);
    timeline.proven.add(entry.seq);
    learn(entry);
    const node = row(entry);
    setRowState(node, timeline.findings.length > before ? 'failed' : 'verified');
    $('entries').append(node);
    for (const finding of timeline.findings.slice(before)) fail(finding.code, finding.message);
  }
  if (timeline) {
    $('entry-count').textContent = timeline.entries.length.toLocaleString();
    $('empty').hidden = timeline.entries.length > 0;
    finished(timeline);
  }
  return touched;
}

let refreshTimer = null;
function scheduleRefresh(delay = 150) {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => enqueue(refresh), delay);
}

async function refresh() {
  if (state.mode === 'tiles') {
    const { head, previous, fresh } = await state.ledger.advance();
    renderHead(head, previous);
    if (fresh.length) {
      appendProven(fresh.map((e) => [e, null]));
      renderCvms(summarize(state.ledger.entries));
    } else if (state.timeline) {
      finished(state.timeline);
    }
    return;
  }
  const { head, previous, frontier } = await state.ledger.advance();
  renderHead(head, previous);
  if (previous && head.tree_size > previous.tree_size) {
    const all = await state.ledger.grow(previous, head, frontier);
    if (appendProven(all)) await refreshCvms();
    renderCvmHeader();
  } else if (state.timeline) {
    finished(state.timeline); // back after the controller was unreachable: say so
  }
}

// --- start -------------------------------------------------------------------------------------------

async function startController() {
  const api = new ControllerApi(location.href);
  state.api = api;
  $('source').replaceChildren('Reading the controller at ', el('code', {}, location.origin));
  const { answer, nonce, target } = await api.answer('/v1/attestation');
  const identity = answer && answer.result && answer.result.identity;
  if (!identity || typeof identity.signing_key !== 'string') throw new VerificationFailure('bad_identity', 'the controller serves no identity document');
  const presented = await importPublicKey(pemToDer(identity.signing_key));
  if (identity.controller !== presented.id) {
    throw new VerificationFailure('bad_identity', `the identity names controller ${short(identity.controller)}, but its signing key's id is ${short(presented.id)}`);
  }
  const publicKey = await pinController(presented);
  state.pin = { controller: publicKey.id, publicKey };
  api.pin = state.pin;
  await verifyAnswer(answer, { ...state.pin, nonce, target });
  await renderController(answer, publicKey);
  state.ledger = new ControllerLedger(api);
  // The entries that put the owner set and the policy in force, as the verified identity names
  // them: the controller's own view must show them (an entry hidden at its end links to nothing).
  state.ledger.anchors = [
    { seq: identity.owners_seq, event: 'controller.owners', what: 'the owner set' },
    { seq: identity.policy_seq, event: 'controller.policy', what: 'the approval policy' },
  ];
  const [{ head, seen }, listed] = await Promise.all([state.ledger.advance(), api.get('/v1/cvms')]);
  renderHead(head, seen);
  ensureControllerItem(); // once there is a head to prove its entries in
  renderCvms(Array.isArray(listed && listed.cvms) ? listed.cvms : []);
  if (state.selected === undefined) {
    finished(new Timeline(undefined));
    $('empty').hidden = false;
  }
  state.events = api.events(head.tree_size, {
    onEntry: () => scheduleRefresh(),
    onOpen: () => scheduleRefresh(0),
    onFailure: (error) => fail(error.code || 'bad_signature', `a live event: ${error.message}`),
  });
}

async function startTiles(base) {
  const source = new TilesSource(base);
  $('source').replaceChildren('Reading the published log at ', el('code', {}, source.base.href), ' (the controller is not asked anything)');
  const publicKey = await pinController(null);
  state.pin = { controller: publicKey.id, publicKey };
  $('controller-facts').replaceChildren(
    ...field('Controller id (key fingerprint)', el('span', { class: 'fingerprint small', 'data-controller': publicKey.id }, grouped(publicKey.id)), ' ', copyable(publicKey.id, { length: 0, label: 'controller id' })),
    ...field('Key', 'Ed25519, pinned in this browser ', mark('verified', '✓ pinned'), el('br'), pinLink(publicKey)),
    ...field('Attestation', 'not in a published log: verify the controller with ', el('code', {}, 'duet verify')),
    ...field('Ledger', el('span', { id: 'ledger-head' }, '…')),
  );
  $('outputs-note').hidden = false;
  state.ledger = new TilesLedger(source, state.pin, new HeadStore('tiles'));
  const seen = state.ledger.store.last(publicKey.id);
  const { head } = await state.ledger.advance((done, total) => ($('progress').textContent = `${done.toLocaleString()} of ${total.toLocaleString()} entries read`));
  $('progress').textContent = '';
  renderHead(head, seen);
  ensureControllerItem();
  renderCvms(summarize(state.ledger.entries));
  if (state.selected === undefined) finished(new Timeline(undefined));
  setInterval(() => enqueue(refresh), 10000); // a bucket announces nothing: read its checkpoint again
}

async function main() {
  $('zone').textContent = zone;
  if (!cryptoAvailable()) {
    fail('no_webcrypto', 'this browser offers WebCrypto only to pages served over HTTPS (or from localhost): open the controller’s https:// address');
    return;
  }
  setStatus('verifying', 'Verifying…', 'reading the controller’s identity');
  try {
    if (state.mode === 'tiles') await startTiles(params.get('tiles'));
    else await startController();
  } catch (error) {
    report(error);
  }
}

main();
