// The ZT-Infra console: approvals to answer, and evidence records verified in the browser.
// No framework and nothing from elsewhere: every request goes to this service, with the
// sign-in cookie and the CSRF token the sign-in gave. Data from requests is only ever put in
// the page as text (textContent), never as markup.
'use strict';

const state = { csrf: null, me: null, queue: null, known: '', record: null };
const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { accept: 'application/json' };
  if (state.csrf) headers['x-csrf-token'] = state.csrf;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
    cache: 'no-store',
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    const detail = (data && data.detail) || `HTTP ${response.status}`;
    if (response.status === 401 && state.me) signedOut(`Your console sign-in ended or expired: sign in again. (${detail})`);
    throw new ApiError(response.status, detail);
  }
  return data;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function when(seconds) {
  return new Date(seconds * 1000).toLocaleString();
}

// --- sign-in -------------------------------------------------------------------------------

function signedIn(who) {
  state.me = { name: who.name, role: who.role };
  state.csrf = who.csrf;
  $('who').textContent = `${who.name} (${who.role})`;
  $('sign-in').hidden = true;
  $('tabs').hidden = false;
  $('sign-out').hidden = false;
  show('approvals');
  watchQueue();
}

function signedOut(why) {
  state.me = null;
  state.csrf = null;
  state.queue = null;
  $('who').textContent = '';
  $('tabs').hidden = true;
  $('sign-out').hidden = true;
  $('approvals').hidden = true;
  $('evidence').hidden = true;
  $('sign-in').hidden = false;
  $('sign-in-error').textContent = why || '';
}

async function signIn(event) {
  event.preventDefault();
  $('sign-in-error').textContent = '';
  const token = $('token').value.trim();
  $('token').value = '';
  try {
    signedIn(await api('POST', '/console/session', { token }));
  } catch (e) {
    $('sign-in-error').textContent = e.message;
  }
}

async function signOut() {
  try {
    await api('DELETE', '/console/session');
  } finally {
    signedOut('Signed out.');
  }
}

function show(tab) {
  for (const name of ['approvals', 'evidence']) {
    $(name).hidden = name !== tab;
    $(`tab-${name}`).classList.toggle('active', name === tab);
  }
}

// --- the approvals queue -------------------------------------------------------------------

// Long polls the pending list: the service answers when it changes, or after 25 s.
async function watchQueue() {
  const me = state.me;
  state.known = '';
  while (state.me === me) {
    try {
      const list = await api('GET', `/v1/approvals?status=pending&wait=25s&known=${encodeURIComponent(state.known)}`);
      if (state.me !== me) return;
      state.known = list.fingerprint;
      renderQueue(list.approvals);
      $('queue-state').textContent = `Live: updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      if (state.me !== me) return;
      $('queue-state').textContent = `Cannot read the queue: ${e.message}; trying again`;
      await new Promise((resolve) => setTimeout(resolve, 3000));
    }
  }
}

function renderQueue(approvals) {
  const queue = $('queue');
  // Keep what a person is typing: cards are replaced only for approvals that changed.
  const open = new Map([...queue.children].map((card) => [card.dataset.id, card]));
  queue.replaceChildren();
  $('queue-count').textContent = `(${approvals.length})`;
  if (approvals.length === 0) queue.append(el('p', 'Nothing waits for an answer.', 'muted'));
  for (const approval of approvals) {
    const kept = open.get(approval.id);
    queue.append(kept && kept.dataset.version === version(approval) ? kept : card(approval));
  }
}

function version(approval) {
  return `${approval.status}/${approval.approvals}`;
}

// What the service had observed of the agent when it asked (`context.behaviour`), in words.
function behaviour(b) {
  const usual = b.baseline_per_hour > 0
    ? `${b.rate_percent}% of its usual ${b.baseline_per_hour} an hour`
    : 'no baseline yet';
  return [
    b.novel_action ? 'an action it was never allowed before' : 'an action it has been allowed before',
    `${b.rate_last_minute} decisions in the last minute (${usual})`,
    `${b.denies_recent} recent denies`,
    `${b.distinct_resources_recent} other resources recently`,
  ].join('; ');
}

function card(approval) {
  const request = approval.request || {};
  const context = request.context || {};
  const session = context.session || {};
  const node = el('article', null, 'card approval');
  node.dataset.id = approval.id;
  node.dataset.version = version(approval);
  node.append(el('h3', `${approval.actor} asks to ${request.action} on ${request.resource}`));
  const facts = el('dl');
  const fact = (name, value, mono) => {
    facts.append(el('dt', name));
    facts.append(el('dd', value === undefined || value === '' ? '—' : value, mono ? 'mono' : ''));
  };
  if (approval.note) fact('Message from the agent', approval.note);
  fact('Approval', approval.id, true);
  fact('Agent', approval.actor);
  fact('Session', approval.session, true);
  const lineage = [
    session.parent ? `child of ${session.parent}` : 'root session',
    `depth ${session.depth ?? 0}`,
    session.broker ? `started by ${session.broker}` : '',
    session.workload ? `workload ${session.workload}` : '',
  ].filter(Boolean).join(', ');
  fact('Lineage', lineage);
  fact('On behalf of', approval.on_behalf_of);
  if (context.delegation) fact('Delegation', `depth ${context.delegation.depth}, from ${context.delegation.origin}`);
  if (context.behaviour) fact('Behaviour when it asked', behaviour(context.behaviour));
  fact('Asked by policy', approval.policy, true);
  fact('Approvers', `${approval.approvals} of ${approval.needed} from group ${approval.group}`);
  fact('Expires', when(approval.expires_at));
  node.append(facts);
  node.append(el('div', 'The request as sent (with what the service bound):', 'muted'));
  node.append(el('pre', JSON.stringify(request, null, 2), 'request'));
  for (const answer of approval.answers || []) {
    node.append(el('p', `${answer.verdict} by ${answer.approver}: ${answer.reason}`, 'muted'));
  }
  if (state.me && state.me.role === 'approver') {
    const reason = el('textarea');
    reason.placeholder = 'Reason (required, recorded as evidence)';
    reason.className = 'reason';
    const approve = el('button', 'Approve', 'primary approve');
    const deny = el('button', 'Deny', 'danger deny');
    const result = el('span', '', 'error result');
    const buttons = [approve, deny];
    const ready = () => buttons.forEach((b) => { b.disabled = reason.value.trim() === ''; });
    reason.addEventListener('input', ready);
    ready();
    for (const [button, verdict] of [[approve, 'approve'], [deny, 'deny']]) {
      button.type = 'button';
      button.addEventListener('click', async () => {
        buttons.forEach((b) => { b.disabled = true; });
        result.textContent = '';
        try {
          const answered = await api('POST', `/v1/approvals/${approval.id}/${verdict}`, { reason: reason.value.trim() });
          // The card leaves the queue once the approval is no longer pending: say so above it.
          $('queue-note').textContent = `${verdict === 'approve' ? 'Approved' : 'Denied'} ${approval.actor}'s ${request.action} on ${request.resource} (approval ${approval.id}): it is ${answered.status} now.`;
          result.className = 'muted result';
          result.textContent = `it is ${answered.status} now`;
        } catch (e) {
          result.className = 'error result';
          result.textContent = e.message;
          ready();
        }
      });
    }
    const actions = el('div', null, 'actions');
    actions.append(approve, deny, result);
    node.append(reason, actions);
  }
  return node;
}

// --- evidence ------------------------------------------------------------------------------

async function search(event) {
  if (event) event.preventDefault();
  const params = new URLSearchParams();
  for (const name of ['actor', 'action', 'decision']) {
    const value = $(`f-${name}`).value.trim();
    if (value) params.set(name, value);
  }
  for (const name of ['since', 'until']) {
    const value = $(`f-${name}`).value;
    if (value) params.set(name, String(new Date(value).getTime()));
  }
  $('search-state').textContent = 'Searching…';
  try {
    const found = await api('GET', `/v1/evidence?${params}`);
    const body = $('records').querySelector('tbody');
    body.replaceChildren();
    for (const record of found.records) {
      const row = el('tr');
      row.dataset.seq = record.seq;
      const cells = [record.seq, new Date(record.time_ms).toLocaleString(), record.kind, record.decision,
        record.actor, record.action, record.resource, record.approval || ''];
      cells.forEach((value, i) => row.append(el('td', value, i === 0 || i === 7 ? 'mono' : '')));
      const open = el('button', 'Open', 'open');
      open.type = 'button';
      open.addEventListener('click', () => openRecord(found.log, record.seq));
      const cell = el('td');
      cell.append(open);
      row.append(cell);
      body.append(row);
    }
    $('search-state').textContent = `${found.records.length} record(s) in log ${found.log}`;
  } catch (e) {
    $('search-state').textContent = e.message;
  }
}

async function openRecord(log, seq) {
  const record = await api('GET', `/v1/evidence/${seq}?log=${encodeURIComponent(log)}`);
  state.record = record;
  $('record').hidden = false;
  $('record-seq').textContent = `#${seq} of ${record.log}`;
  $('record-json').textContent = JSON.stringify(record.record, null, 2);
  $('verdict').textContent = '';
  $('verdict').className = '';
}

// RFC 8785 (as the service writes records): members sorted by UTF-16 code units, strings as
// JSON.stringify escapes them, integers only.
function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(',')}}`;
  }
  if (typeof value === 'number' && !Number.isSafeInteger(value)) {
    throw new Error('the record holds a number that is not an exact integer');
  }
  return JSON.stringify(value);
}

const encoder = new TextEncoder();

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
}

function hex(bytes) {
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
}

function fromHex(text) {
  if (!/^([0-9a-f]{2})*$/.test(text)) throw new Error(`\`${text}\` is not hex`);
  return new Uint8Array(text.match(/../g) ? text.match(/../g).map((h) => parseInt(h, 16)) : []);
}

function fromBase64(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function equal(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

// RFC 9162 2.1.3.2.
async function rootFromInclusion(index, size, leaf, proof) {
  if (index >= size) throw new Error('the record is beyond the tree');
  let fn = BigInt(index);
  let sn = BigInt(size - 1);
  let r = leaf;
  for (const p of proof) {
    if (sn === 0n) throw new Error('the inclusion proof is too long');
    if ((fn & 1n) === 1n || fn === sn) {
      r = await sha256(concat(Uint8Array.of(1), p, r));
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      r = await sha256(concat(Uint8Array.of(1), r, p));
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new Error('the inclusion proof is too short');
  return r;
}

// A C2SP signed note: its body, and the checkpoint's origin, size and root; verified with one
// of the log's Ed25519 keys.
async function verifyNote(note, keyring) {
  const split = note.indexOf('\n\n');
  if (split < 0) throw new Error('the checkpoint note is malformed');
  const body = note.slice(0, split + 1);
  const [origin, size, root] = body.trimEnd().split('\n');
  for (const line of note.slice(split + 2).split('\n').filter(Boolean)) {
    const [dash, name, blob] = line.split(' ');
    if (dash !== '\u2014' || name !== origin) continue;
    const bytes = fromBase64(blob);
    const keyHash = bytes.slice(0, 4);
    const signature = bytes.slice(4);
    for (const key of keyring.keys) {
      const raw = fromBase64(key.public_key);
      const expected = (await sha256(concat(encoder.encode(`${origin}\n`), Uint8Array.of(1), raw))).slice(0, 4);
      if (!equal(expected, keyHash)) continue;
      const imported = await crypto.subtle.importKey('raw', raw, { name: 'Ed25519' }, false, ['verify']);
      if (await crypto.subtle.verify({ name: 'Ed25519' }, imported, signature, encoder.encode(body))) {
        return { origin, size: Number(size), root: fromBase64(root), key: key.key_id };
      }
      throw new Error(`the checkpoint's signature does not verify with key ${key.key_id}`);
    }
  }
  throw new Error("the checkpoint is not signed by any of the log's keys");
}

async function verify() {
  const record = state.record;
  const verdict = $('verdict');
  verdict.className = '';
  verdict.textContent = 'Verifying…';
  try {
    const log = encodeURIComponent(record.log);
    const content = await sha256(encoder.encode(canonical(record.record)));
    if (hex(content) !== record.hash) {
      throw new Error(`the record's content does not match its hash (${hex(content)} ≠ ${record.hash})`);
    }
    const [checkpoint, keyring] = await Promise.all([
      api('GET', `/v1/evidence/checkpoint?log=${log}`),
      api('GET', `/v1/evidence/keys?log=${log}`),
    ]);
    if (keyring.origin !== record.log) throw new Error('the keys are of another log');
    const note = await verifyNote(checkpoint.note, keyring);
    if (note.origin !== record.log) throw new Error(`the checkpoint is of log ${note.origin}, not ${record.log}`);
    const proof = await api('GET', `/v1/evidence/${record.seq}/proof?size=${note.size}&log=${log}`);
    if (proof.record_hash !== record.hash) throw new Error("the proof is for another record's hash");
    const leaf = await sha256(concat(Uint8Array.of(0), content));
    const root = await rootFromInclusion(record.seq, note.size, leaf, proof.proof.map(fromHex));
    if (!equal(root, note.root)) throw new Error("the inclusion proof does not lead to the signed checkpoint's root");
    verdict.className = 'verified';
    verdict.textContent = `verified: record #${record.seq} is in log ${note.origin} at tree size ${note.size}, whose checkpoint key ${note.key} signed`;
  } catch (e) {
    verdict.className = 'failed';
    verdict.textContent = `verification failed: ${e.message}`;
  }
}

// --- start ---------------------------------------------------------------------------------

document.addEventListener('DOMContentLoaded', async () => {
  $('sign-in-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', signOut);
  $('tab-approvals').addEventListener('click', () => show('approvals'));
  $('tab-evidence').addEventListener('click', () => { show('evidence'); search(); });
  $('filter').addEventListener('submit', search);
  $('verify').addEventListener('click', verify);
  try {
    signedIn(await api('GET', '/console/session'));
  } catch (_) {
    signedOut('');
  }
});
