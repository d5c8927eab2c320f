// Auditor web UI for the NRM Exchange audit ledger.
//
// Plain JavaScript, no framework, no external resource; works under
// `Content-Security-Policy: default-src 'self'` (no inline script, no inline style, no eval).
// The auditor token lives in sessionStorage only (this tab, until it closes).
// Everything the server sends is put into the page with textContent, never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "nrm-ledger-token";
  const CHECKPOINT_KEY = "nrm-ledger-checkpoint"; // last checkpoint this tab checked or accepted
  const FAILURES_KEY = "nrm-ledger-failures"; // failed consistency checks seen in this tab
  const MAX_FAILURES = 50;
  const PAGE_SIZE = 50;
  const RECHECK_MS = 15000;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);

  // ---- small helpers ------------------------------------------------------------------

  class AuthError extends Error {}

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    for (const c of children) node.append(c);
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    for (const c of children) node.append(c);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) node.setAttribute(k, String(v));
    }
  }

  // Event and checkpoint times are Unix seconds; tolerate milliseconds or nanoseconds.
  function toDate(t) {
    if (typeof t !== "number" || !Number.isFinite(t)) return null;
    let ms = t * 1000;
    if (t > 1e17) ms = t / 1e6; // nanoseconds
    else if (t > 1e11) ms = t; // milliseconds
    const d = new Date(ms);
    return Number.isNaN(d.getTime()) ? null : d;
  }

  function iso(t) {
    const d = toDate(t);
    return d ? d.toISOString().replace(/\.\d{3}Z$/, "Z") : "—";
  }

  function shortId(hex) {
    return hex && hex.length > 12 ? hex.slice(0, 12) + "…" : hex || "";
  }

  function duration(seconds) {
    if (seconds < 60) return `${+seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
    if (seconds < 3600) return `${+(seconds / 60).toFixed(1)} min`;
    if (seconds < 86400) return `${+(seconds / 3600).toFixed(1)} h`;
    return `${+(seconds / 86400).toFixed(1)} d`;
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = !message;
  }

  // ---- words for codes (PROTOCOL.md §9.0): the code stays in data-* and the tooltip -------

  const KIND_WORDS = {
    "referral.sent": "Referral sent",
    "referral.received": "Referral received",
    "message.rejected": "Message refused",
    "receipt.sent": "Receipt sent",
    "receipt.received": "Receipt received",
    "directory.accepted": "Directory accepted",
    "directory.refused": "Directory refused",
    "key.rotated": "Keys rotated",
    "transition.sent": "Status change sent",
    "transition.received": "Status change received",
    "consent.recorded": "Consent recorded",
    "consent.withdrawn": "Consent withdrawn",
    "consent.unverifiable": "Consent not verifiable",
    "erasure.confirmed": "Erasure confirmed",
    "escalation.sent": "Escalated to co-ordinator",
    "resend.requested": "Resend requested",
    "resend.honoured": "Resend honoured",
    "delivery.failed": "Delivery failed",
    "standing.changed": "Standing changed",
    "alert.acknowledged": "Alert acknowledged",
    "retention.purged": "Retention purge",
    "record.accessed": "Record accessed",
    "clock.overdue": "Overdue, told co-ordinator",
    "identification.decided": "Identification decided",
    "identification.sent": "Identification decision sent",
    "identification.received": "Identification decision received",
    "catalogue.published": "Service catalogue published",
    "break-glass.requested": "Break-glass referral requested",
    "break-glass.confirmed": "Break-glass referral confirmed, sent",
    "break-glass.refused": "Break-glass referral refused",
    "break-glass.lapsed": "Break-glass referral lapsed unconfirmed",
    "protection.notified": "Protection notice sent",
    "protection.received": "Protection notice received",
    "reconsideration.requested": "Reconsideration requested",
    "reconsideration.received": "Reconsideration request received",
    "case.left": "Case ended: the person left the process",
    "case.closed": "Case closed: reconsideration window ran out",
    "transfer-request.sent": "Transfer of the case requested",
    "transfer-request.received": "Transfer request received",
    "transfer-step.sent": "Transfer step sent",
    "transfer-step.received": "Transfer step received",
    "statistics.contributed": "Statistics sent to the rapporteur",
    "statistics.received": "Statistics received from an authority",
    "transfer.sent": "Case transfer proposed",
    "transfer.received": "Case transfer received",
    "case-owner-changed.sent": "Authority told of the new case owner",
  };
  const LABEL_WORDS = {
    referral_type: {
      nrm_full: "Full NRM referral",
      anonymous_notification: "Anonymous notification",
      transnational: "Transnational referral",
      service_request: "Service request",
      unspecified: "Type not stated",
    },
    urgency: { routine: "Routine", urgent: "Urgent", emergency: "Emergency", unspecified: "Urgency not stated" },
    state: {
      submitted: "Submitted",
      delivered: "Delivered",
      acknowledged: "Acknowledged",
      accepted: "Accepted",
      declined: "Declined",
      more_info_requested: "More information requested",
      in_progress: "In progress",
      closed: "Closed",
      withdrawn: "Withdrawn",
      cancelled: "Cancelled",
      expired: "Expired",
    },
    clock: { respond: "Not accepted or declined in time" }, // clock.overdue's clock
    // an identification decision's events
    stage: { first: "First stage", second: "Second stage" },
    outcome: { positive: "Positive", negative: "Negative" },
    age_route: { adult: "Adult route", child: "Child route" },
    break_glass: { yes: "Break-glass" }, // on referral.sent
    // a protection notice's events
    protection: { "no-removal": "No removal", reflection: "Recovery and reflection period" },
    event: {
      started: "Started",
      extended: "Extended",
      "ending-soon": "Ending soon",
      ended: "Ended",
      "not-granted": "Not granted",
    },
    // a transfer step's events (§8.10)
    transfer_kind: { transfer: "Case transfer", "transfer-request": "Transfer request" },
    to_state: {
      proposed: "Proposed",
      delivered: "Delivered",
      accepted: "Accepted",
      rejected: "Rejected",
      revoked: "Revoked",
      expired: "Expired",
      completed: "Completed",
      requested: "Requested",
      granted: "Granted",
      refused: "Refused",
      fulfilled: "Fulfilled",
      lapsed: "Lapsed",
    },
  };
  const LABEL_ORDER = ["referral_type", "urgency", "state"];
  const COUNT_WORDS = {
    envelopes: "envelopes",
    idempotency_keys: "idempotency keys",
    webhook_bodies: "webhook bodies",
    history: "history entries",
    closed_referrals: "closed referrals",
    reads: "reads", // record.accessed: how many reads the event counts
  };
  // Kinds whose counterpart sent something to the agency that recorded the event (§9.0):
  // drawn "agency ← counterpart" (receiver ← sender); every other counterpart is the one
  // the agency sent to, drawn "agency → counterpart".
  const INCOMING = new Set(["referral.received", "receipt.received", "transition.received",
    "message.rejected", "erasure.confirmed", "record.accessed", "identification.received",
    "protection.received", "reconsideration.received", "transfer-request.received",
    "transfer-step.received", "statistics.received"]);

  // A code with no entry above (a newer ledger) still reads as words: "a.b_c" -> "A b c".
  function words(code) {
    const w = String(code || "").replace(/[._-]+/g, " ").trim();
    return w ? w[0].toUpperCase() + w.slice(1) : "";
  }

  function kindWords(kind) {
    return KIND_WORDS[kind] || words(kind);
  }

  function labelWords(name, value) {
    if (name in COUNT_WORDS) return `${value} ${COUNT_WORDS[name]}`;
    if (name === "period") return String(value); // a month, YYYY-MM (statistics.*)
    const table = LABEL_WORDS[name];
    const w = (table && table[value]) || words(value);
    return name === "state" ? `New state: ${w}` : w;
  }

  // The event's labels as [name, code, words], the statistics labels first.
  function labelList(labels) {
    const names = Object.keys(labels || {}).sort((a, b) => {
      const ia = LABEL_ORDER.indexOf(a), ib = LABEL_ORDER.indexOf(b);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || (a < b ? -1 : a > b ? 1 : 0);
    });
    return names.map((n) => [n, labels[n], labelWords(n, labels[n])]);
  }

  function labelChips(labels) {
    return labelList(labels).map(([name, code, text]) =>
      el("span", { class: `label label-${name}`, "data-label": name, "data-value": code,
        title: `${name} = ${code}` }, text));
  }

  function kindChip(kind) {
    return el("span", { class: `kind ${kindClass(kind)}`, title: kind || "" }, kindWords(kind));
  }

  // [arrow, words for the tooltip] of an event's counterpart.
  function direction(e) {
    return INCOMING.has(e.kind)
      ? ["←", `from ${e.counterpart} (it sent to ${e.agency})`]
      : ["→", `to ${e.counterpart} (${e.agency} sent to it)`];
  }

  function route(e) {
    if (!e.counterpart) return el("span", { class: "route" }, e.agency || "");
    const [arrow, how] = direction(e);
    return el("span", { class: "route", "data-direction": arrow === "←" ? "in" : "out", title: how },
      `${e.agency} ${arrow} ${e.counterpart}`);
  }

  // ---- API ----------------------------------------------------------------------------

  async function api(path) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) throw new AuthError("No auditor token.");
    const resp = await fetch(path, {
      headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
    });
    if (resp.ok) return resp.json();
    let detail = `${resp.status} ${resp.statusText}`;
    try {
      const problem = await resp.json(); // application/problem+json
      detail = [problem.title, problem.detail].filter(Boolean).join(": ") || detail;
    } catch (_) { /* not JSON */ }
    if (resp.status === 401 || resp.status === 403) throw new AuthError(detail);
    throw new Error(`${path.split("?")[0]}: ${detail}`);
  }

  function failed(err) {
    if (err instanceof AuthError) {
      signOut();
      showError(`The ledger refused the token (${err.message}). Enter a valid auditor token.`);
    } else {
      showError(String(err && err.message ? err.message : err));
    }
  }

  // ---- RFC 6962 / RFC 9162 consistency proof, checked here with WebCrypto SHA-256 ----

  function fromHex(hex) {
    if (typeof hex !== "string" || hex.length % 2 || /[^0-9a-fA-F]/.test(hex)) {
      throw new Error("not a hex string");
    }
    const out = new Uint8Array(hex.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
    return out;
  }

  function toHex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function equalBytes(a, b) {
    if (a.length !== b.length) return false;
    let diff = 0;
    for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
    return diff === 0;
  }

  async function nodeHash(left, right) {
    const buf = new Uint8Array(1 + left.length + right.length);
    buf[0] = 0x01;
    buf.set(left, 1);
    buf.set(right, 1 + left.length);
    return new Uint8Array(await crypto.subtle.digest("SHA-256", buf));
  }

  // RFC 9162 §2.1.4.2. Returns nothing; throws with the reason when the proof does not hold.
  async function verifyConsistency(first, second, firstRoot, secondRoot, proof) {
    if (first > second) throw new Error("the ledger shrank");
    const path = proof.map(fromHex);
    if (path.some((p) => p.length !== 32) || firstRoot.length !== 32 || secondRoot.length !== 32) {
      throw new Error("a hash is not 32 bytes");
    }
    if (first === 0) {
      const empty = new Uint8Array(await crypto.subtle.digest("SHA-256", new Uint8Array(0)));
      if (!equalBytes(firstRoot, empty)) throw new Error("size 0 with a root other than the empty tree's");
    }
    if (first === second) {
      if (path.length) throw new Error("proof between equal sizes must be empty");
      if (!equalBytes(firstRoot, secondRoot)) throw new Error("same size, different root");
      return;
    }
    if (first === 0) {
      if (path.length) throw new Error("proof from the empty tree must be empty");
      return; // every tree extends the empty tree
    }
    if (!path.length) throw new Error("empty consistency proof");
    if ((first & (first - 1)) === 0) path.unshift(firstRoot);
    // Sizes stay below 2^53, so plain arithmetic (not 32-bit bit operators) is used.
    let fn = first - 1;
    let sn = second - 1;
    while (fn % 2 === 1) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
    let fr = path[0];
    let sr = path[0];
    for (const c of path.slice(1)) {
      if (sn === 0) throw new Error("consistency proof too long");
      if (fn % 2 === 1 || fn === sn) {
        fr = await nodeHash(c, fr);
        sr = await nodeHash(c, sr);
        if (fn % 2 === 0) {
          while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
        }
      } else {
        sr = await nodeHash(sr, c);
      }
      fn = Math.floor(fn / 2);
      sn = Math.floor(sn / 2);
    }
    if (sn !== 0) throw new Error("consistency proof too short");
    if (!equalBytes(fr, firstRoot)) throw new Error("proof does not lead to the earlier root");
    if (!equalBytes(sr, secondRoot)) throw new Error("proof does not lead to the latest root");
  }

  // The C2SP checkpoint is "origin\nsize\nbase64(root)\n\n" and signature lines; the time is
  // in the ledger's tlog-cosignature line: "— <origin> base64(key id || u64 time || sig)",
  // 76 bytes (its plain Ed25519 line is 68). Compare both with the JSON. (The signatures are
  // not checked here: agents and `nrm audit verify` do that.)
  function cosignedTime(lines, origin) {
    const prefix = `\u2014 ${origin} `;
    const times = [];
    for (const line of lines.slice(4)) {
      if (!line.startsWith(prefix)) continue;
      const raw = atob(line.slice(prefix.length));
      if (raw.length !== 4 + 8 + 64) continue;
      let t = 0n;
      for (let i = 4; i < 12; i++) t = (t << 8n) | BigInt(raw.charCodeAt(i));
      times.push(t);
    }
    return times.length === 1 ? times[0] : null;
  }

  function noteMatches(cp) {
    if (typeof cp.note !== "string") return false;
    const lines = cp.note.split("\n");
    try {
      const raw = atob(lines[2] || "");
      const root = toHex(Uint8Array.from(raw, (ch) => ch.charCodeAt(0)));
      const time = cosignedTime(lines, cp.origin);
      return lines[0] === cp.origin && lines[1] === String(cp.size) && lines[3] === "" &&
        root === cp.root.toLowerCase() && Number.isSafeInteger(cp.timestamp) &&
        time === BigInt(cp.timestamp);
    } catch (_) {
      return false;
    }
  }

  // ---- checkpoint ---------------------------------------------------------------------

  function setStatus(label, text, cls, basis) {
    $("checkpoint-status-label").textContent = label;
    const status = $("checkpoint-status");
    status.textContent = text;
    status.className = `status ${cls}`;
    $("checkpoint-basis").textContent = basis;
  }

  function serverClaim(cp) {
    if (typeof cp.verified === "boolean") return cp.verified ? "verified" : "NOT verified";
    return null;
  }

  // ---- failed consistency checks: kept for the tab until the auditor acknowledges them ----
  //
  // A failure is evidence (two signed checkpoints that cannot both be true), so it is not
  // forgotten when a later checkpoint checks out again: a ledger that shows one view to
  // one fetch and the honest view to the next is exactly what the check is for. Each
  // failure stays in an alarm above the checkpoint until acknowledged; acknowledging ends
  // the alarm and moves it to the list of acknowledged failures, which keeps it (with both
  // notes) for as long as the tab lives. Repeated failures against the same earlier
  // checkpoint are one failure, seen again.

  // The failure the latest check in this page ended in (its id), or null after a check that
  // held: only while checks still fail does acknowledging move the baseline on.
  let failing = null;

  function pickCheckpoint(cp) {
    return { origin: cp.origin, size: cp.size, root: cp.root, timestamp: cp.timestamp, note: cp.note };
  }

  function loadFailures() {
    try {
      const list = JSON.parse(sessionStorage.getItem(FAILURES_KEY) || "[]");
      return Array.isArray(list) ? list : [];
    } catch (_) {
      return [];
    }
  }

  function saveFailures(list) {
    // Bounded: past MAX_FAILURES the oldest acknowledged ones go first, never an open one.
    while (list.length > MAX_FAILURES) {
      const i = list.findIndex((f) => f.acknowledged_at);
      list.splice(i < 0 ? 0 : i, 1);
    }
    sessionStorage.setItem(FAILURES_KEY, JSON.stringify(list));
  }

  function recordFailure(prev, cp, reason, declared) {
    const list = loadFailures();
    const now = new Date().toISOString().replace(/\.\d{3}Z$/, "Z");
    const open = list.find((f) => !f.acknowledged_at && f.earlier.size === prev.size &&
      f.earlier.root === prev.root);
    if (open) {
      open.later = pickCheckpoint(cp);
      open.reason = reason;
      open.declared = declared;
      open.last_seen = now;
      open.times += 1;
      failing = open.id;
    } else {
      const id = list.reduce((n, f) => Math.max(n, f.id), 0) + 1;
      list.push({ id, detected_at: now, last_seen: now, times: 1, earlier: pickCheckpoint(prev),
        later: pickCheckpoint(cp), reason, declared, acknowledged_at: null });
      failing = id;
    }
    saveFailures(list);
    renderFailures();
  }

  function acknowledge(id) {
    const list = loadFailures();
    const f = list.find((x) => x.id === id);
    if (!f || f.acknowledged_at) return;
    f.acknowledged_at = new Date().toISOString().replace(/\.\d{3}Z$/, "Z");
    saveFailures(list);
    // While checks still fail against the earlier checkpoint (a declared restore never
    // extends it again), they go on from the later one; after a check that held, the
    // baseline has moved on by itself and is kept.
    if (failing === id) {
      sessionStorage.setItem(CHECKPOINT_KEY, JSON.stringify(f.later));
      failing = null;
    }
    renderFailures();
    loadCheckpoint().catch(failed);
  }

  function failureText(f) {
    const times = f.times > 1 ? ` (seen ${f.times} times, last at ${f.last_seen})` : "";
    return `Detected at ${f.detected_at}${times}: the checkpoint of size ${f.later.size}, root ` +
      `${shortId(f.later.root)} (cosigned ${iso(f.later.timestamp)}), does not extend the one of ` +
      `size ${f.earlier.size}, root ${shortId(f.earlier.root)} (cosigned ` +
      `${iso(f.earlier.timestamp)}): ${f.reason}.${f.declared || ""}`;
  }

  function evidence(f) {
    return el("details", { class: "evidence" },
      el("summary", {}, "Both signed checkpoints (evidence)"),
      el("p", { class: "muted" }, `Earlier, size ${f.earlier.size}:`),
      el("pre", {}, f.earlier.note || ""),
      el("p", { class: "muted" }, `Later, size ${f.later.size}:`),
      el("pre", {}, f.later.note || ""));
  }

  function renderFailures() {
    const list = loadFailures();
    const open = list.filter((f) => !f.acknowledged_at);
    const done = list.filter((f) => f.acknowledged_at);
    const alarm = $("failures");
    alarm.hidden = !open.length;
    $("failures-count").textContent = String(open.length);
    $("failures-list").replaceChildren(...open.map((f) => el("li", { class: "failure", "data-id": f.id },
      el("p", {}, failureText(f)),
      evidence(f),
      el("button", { type: "button", class: "acknowledge", "data-id": f.id,
        title: "Mark this failure as seen: the alarm ends, the record stays listed for this tab, " +
          "and checks go on from the latest checkpoint",
        "aria-label": `Acknowledge consistency failure ${f.id}` }, "Acknowledge"))));
    const past = $("failures-acknowledged");
    past.hidden = !done.length;
    $("failures-acknowledged-count").textContent = String(done.length);
    $("failures-acknowledged-list").replaceChildren(...done.map((f) =>
      el("li", { class: "failure acknowledged", "data-id": f.id },
        el("p", {}, `${failureText(f)} Acknowledged at ${f.acknowledged_at}.`),
        evidence(f))));
  }

  function openFailureNote() {
    const n = loadFailures().filter((f) => !f.acknowledged_at).length;
    return n ? ` An earlier check in this tab FAILED (${n} not acknowledged, listed above): ` +
      "it stays listed until you acknowledge it." : "";
  }

  async function loadCheckpoint() {
    const cp = await api("/v1/checkpoint");
    $("checkpoint-size").textContent = String(cp.size);
    $("checkpoint-root").textContent = cp.root;
    $("checkpoint-time").textContent = iso(cp.timestamp);
    $("checkpoint-origin").textContent = cp.origin || "—";
    $("checkpoint-note").textContent = cp.note || "";
    const claim = serverClaim(cp);
    $("checkpoint-server").textContent = claim || "no verification claim in the response";
    const matches = noteMatches(cp);
    $("checkpoint-note-match").textContent = matches
      ? "signed note text matches size, root and cosigned time (signatures not checked in the browser)"
      : "signed note text does NOT match the size, root and time shown";

    let prev = null;
    try { prev = JSON.parse(sessionStorage.getItem(CHECKPOINT_KEY) || "null"); } catch (_) { /* ignore */ }

    if (!prev || prev.origin !== cp.origin) {
      sessionStorage.setItem(CHECKPOINT_KEY, JSON.stringify(cp));
      if (claim) {
        setStatus("Stated by the server (not checked by this browser):", claim, claim === "verified" ? "server" : "bad",
          "First checkpoint this tab has seen, so there is nothing to compare it with yet. " +
          "Later fetches (every 15 s or with the button) are checked here against it.");
      } else {
        setStatus("Checked in this browser:", "baseline", "neutral",
          "First checkpoint this tab has seen: kept as the baseline. Later fetches (every 15 s or " +
          "with the button) are checked here for consistency with it.");
      }
      return;
    }
    if (!window.crypto || !crypto.subtle) {
      setStatus("Checked in this browser:", "not checked", "neutral",
        "This browser offers no WebCrypto here (it needs https or localhost).");
      return;
    }
    try {
      let proof = [];
      if (prev.size > 0 && prev.size < cp.size) {
        const r = await api(`/v1/proof/consistency?first=${prev.size}&second=${cp.size}`);
        if (r.first !== prev.size || r.second !== cp.size) throw new Error("proof is for other sizes");
        proof = r.proof;
      }
      await verifyConsistency(prev.size, cp.size, fromHex(prev.root), fromHex(cp.root), proof);
      if (!matches) throw new Error("the note text does not match the checkpoint");
      const how = prev.size === cp.size
        ? `Same tree size (${cp.size}) and root as the checkpoint seen at ${iso(prev.timestamp)}.`
        : `Consistency proof from size ${prev.size} (seen at ${iso(prev.timestamp)}) to size ` +
          `${cp.size} recomputed with SHA-256 in this browser: the latest tree extends the earlier one.`;
      failing = null;
      setStatus("Checked in this browser:", "verified", "ok", how + openFailureNote());
      sessionStorage.setItem(CHECKPOINT_KEY, JSON.stringify(cp));
    } catch (err) {
      if (err instanceof AuthError) throw err;
      // The baseline is kept, so the failure stays visible on every later check.
      let declared = "";
      try {
        const restores = (await api("/v1/restores")).items;
        if (restores.length) {
          const last = restores[restores.length - 1];
          const before = last.previous_size === null ? "a lost database" : `${last.previous_size} entries`;
          declared = ` The ledger declares restore ${last.seq}: back to ${last.restored_size} ` +
            `entries from ${before} (its signature is checked by agents and nrm audit verify, ` +
            "not in this browser).";
        }
      } catch (e) {
        if (e instanceof AuthError) throw e;
      }
      recordFailure(prev, cp, err.message, declared);
      setStatus("Checked in this browser:", "FAILED", "bad",
        `The latest checkpoint (size ${cp.size}) does not extend the one seen at ` +
        `${iso(prev.timestamp)} (size ${prev.size}): ${err.message}.${declared}`);
    }
  }

  // ---- events table -------------------------------------------------------------------

  const events = { q: "", cursor: null, previous: [], next: null, seq: 0 };

  async function loadEvents() {
    const seq = ++events.seq;
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (events.q) params.set("q", events.q);
    if (events.cursor) params.set("cursor", events.cursor);
    $("events-table").setAttribute("aria-busy", "true");
    const page = await api(`/v1/events?${params}`);
    if (seq !== events.seq) return; // a newer search has started
    events.next = page.next_cursor || null;
    const body = $("events-table").tBodies[0];
    body.replaceChildren(...page.items.map(eventRow));
    if (!page.items.length) {
      body.append(el("tr", { class: "empty" }, el("td", { colspan: 8 }, "No events match.")));
    }
    $("next-page").disabled = !events.next;
    $("first-page").disabled = !events.cursor;
    const pageNo = events.previous.length + 1;
    $("events-info").textContent =
      `${page.items.length} shown, page ${pageNo}` + (events.q ? `, matching “${events.q}”` : "");
    $("events-table").setAttribute("aria-busy", "false");
  }

  function eventRow(e) {
    const ref = e.referral_id
      ? el("button", { type: "button", class: "referral-link", "data-referral-id": e.referral_id,
          title: `Show the timeline of referral ${e.referral_id}`,
          "aria-label": `Show the timeline of referral ${e.referral_id}` }, shortId(e.referral_id))
      : "—";
    return el("tr", { "data-index": e.index, "data-kind": e.kind, "data-agency": e.agency },
      el("td", { class: "num" }, String(e.index)),
      el("td", { class: "time" }, iso(e.time)),
      el("td", {}, e.agency || ""),
      el("td", { class: "kind-cell" }, kindChip(e.kind)),
      el("td", { class: "labels" }, ...labelChips(e.labels)),
      el("td", { class: "counterpart" }, counterpart(e)),
      el("td", { class: "ref" }, ref),
      el("td", { class: "reason" }, e.reason || ""));
  }

  function counterpart(e) {
    if (!e.counterpart) return "—";
    const [arrow, how] = direction(e);
    return el("span", { "data-direction": arrow === "←" ? "in" : "out", title: how },
      `${arrow} ${e.counterpart}`);
  }

  function kindClass(kind) {
    const k = (kind || "").toLowerCase();
    if (/reject|refus|fail|revok|withdraw/.test(k)) return "kind-bad";
    if (/accept|ack|deliver|confirm/.test(k)) return "kind-ok";
    return "kind-plain";
  }

  let searchTimer = null;
  function onSearch() {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      events.q = $("search").value.trim();
      events.cursor = null;
      events.previous = [];
      loadEvents().catch(failed);
    }, 250);
  }

  // ---- referral timeline --------------------------------------------------------------

  async function openTimeline(referralId) {
    const data = await api(`/v1/referrals/${encodeURIComponent(referralId)}/timeline`);
    const items = data.items.slice().sort((a, b) => (a.time - b.time) || (a.index - b.index));
    const start = items.length ? toDate(items[0].time) : null;
    $("timeline-referral").textContent = data.referral_id || referralId;
    $("timeline-list").replaceChildren(...items.map((e) => {
      const d = toDate(e.time);
      const offset = start && d ? `+${duration((d - start) / 1000)}` : "";
      return el("li", { class: "timeline-item", "data-kind": e.kind, "data-index": e.index },
        kindChip(e.kind),
        route(e),
        el("span", { class: "labels" }, ...labelChips(e.labels)),
        el("time", { datetime: iso(e.time) }, iso(e.time)),
        el("span", { class: "offset muted" }, offset),
        e.reason ? el("span", { class: "reason" }, `reason: ${e.reason}`) : "",
        el("span", { class: "muted idx" }, `#${e.index}`));
    }));
    if (!items.length) $("timeline-list").append(el("li", { class: "muted" }, "No events."));
    $("timeline").hidden = false;
    $("timeline").scrollIntoView({ block: "nearest" });
  }

  // ---- charts (inline SVG) ------------------------------------------------------------

  let chartSeq = 0;

  function niceMax(v) {
    if (v <= 0) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // categories: x-axis groups; series: [{key, name}]; cell(cat, key) -> row or undefined,
  // where row has `value` (number|null) and `suppressed` (bool).
  //
  // A suppressed cell has no value to draw, so it gets no bar on the value scale: a marker
  // of one fixed size in the strip below the zero line, hatched in its series' colour (so
  // the series stay apart) and labelled "<k" ("n<k" on a chart of times, where k bounds the
  // cases, not the value). Its height means nothing and no two differ.
  function barChart(container, { categories, series, cell, format, threshold, unit }) {
    const id = `c${++chartSeq}`;
    const rotate = categories.some((c) => c.length > 8);
    const groupW = Math.max(rotate ? 44 : 60, series.length * 20 + 14);
    const labelW = Math.max(0, ...categories.map((c) => c.length * 6.2));
    const strip = 30; // below the zero line: suppressed markers and their labels
    const m = {
      top: 22, right: 12,
      bottom: strip + (rotate ? 24 + 0.58 * labelW : 34),
      left: rotate ? Math.max(56, 0.82 * labelW - groupW / 2 + 12) : 56,
    };
    const W = Math.max(460, m.left + m.right + categories.length * groupW);
    const H = 216 + m.bottom;
    const innerH = H - m.top - m.bottom;
    const values = [];
    for (const c of categories) for (const s of series) {
      const r = cell(c, s.key);
      if (r && !r.suppressed && typeof r.value === "number") values.push(r.value);
    }
    const top = Math.max(0, ...values);
    let max = niceMax(top);
    let ticks = 4;
    if (unit === "count") { // whole numbers on every tick
      max = Math.max(5, max);
      ticks = max % 5 === 0 ? 5 : 4;
    } else if (unit === "seconds") { // ticks on whole minutes, hours or days
      const u = top >= 2 * 86400 ? 86400 : top >= 2 * 3600 ? 3600 : top >= 120 ? 60 : 1;
      max = niceMax(top / u) * u;
    }
    const y = (v) => m.top + innerH - (v / max) * innerH;
    const zero = y(0);
    const small = unit === "count" ? `<${threshold}` : `n<${threshold}`;

    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
      class: W <= 760 ? "bar-chart fit" : "bar-chart", "aria-label": container.closest("figure")?.querySelector("figcaption")?.textContent || "" });
    // One hatch per series, drawn in the series' colour (the pattern's class sets `color`).
    root.append(svg("defs", {}, ...series.map((s, si) =>
      svg("pattern", { id: `hatch-${id}-${si}`, class: `hatch s${si % 8}`, width: 5, height: 5,
        patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" },
        svg("rect", { width: 5, height: 5, fill: "#fff" }),
        svg("line", { x1: 0, y1: 0, x2: 0, y2: 5, stroke: "currentColor", "stroke-width": 2.5 })))));

    for (let i = 0; i <= ticks; i++) {
      const v = (max / ticks) * i;
      root.append(svg("line", { class: "grid", x1: m.left, x2: W - m.right, y1: y(v), y2: y(v) }));
      root.append(svg("text", { class: "tick", x: m.left - 6, y: y(v) + 4, "text-anchor": "end" },
        format(v, true)));
    }

    categories.forEach((c, ci) => {
      const gx = m.left + ci * groupW + 7;
      const bw = (groupW - 14) / series.length;
      series.forEach((s, si) => {
        const r = cell(c, s.key);
        if (!r) return;
        const x = gx + si * bw + 1;
        const w = Math.max(2, bw - 2);
        const label = `${c} — ${s.name}: `;
        if (r.suppressed || r.value === null || r.value === undefined) {
          // The group carries the series' colour (inherited `color`); a class on the rect
          // itself would set its `fill` over the hatch.
          root.append(svg("g", { class: `s${si % 8}` }, svg("rect", { class: "bar suppressed",
            "data-series": si, x, y: zero + 4, width: w, height: 10, fill: `url(#hatch-${id}-${si})` },
            svg("title", {}, `${label}suppressed (fewer than ${threshold} cases)`))));
          root.append(svg("text", { class: "bar-label suppressed-label", "data-series": si,
            x: x + w / 2, y: zero + 25, "text-anchor": "middle" }, small));
        } else {
          const t = y(r.value);
          root.append(svg("rect", { class: `bar s${si % 8}`, "data-series": si, x, y: t, width: w,
            height: zero - t }, svg("title", {}, label + format(r.value, false))));
          root.append(svg("text", { class: "bar-label", x: x + w / 2, y: t - 4,
            "text-anchor": "middle" }, format(r.value, false)));
        }
      });
      const lx = gx + (groupW - 14) / 2;
      const ly = zero + strip + 16;
      root.append(svg("text", { class: "axis-label", x: lx, y: ly,
        "text-anchor": rotate ? "end" : "middle",
        transform: rotate ? `rotate(-35 ${lx} ${ly})` : undefined }, c));
    });
    root.append(svg("line", { class: "axis", x1: m.left, x2: W - m.right, y1: zero, y2: zero }));

    const legend = el("ul", { class: "legend" }, ...series.map((s, si) => el("li", { "data-series": si },
      el("span", { class: `swatch s${si % 8}` }), s.name)));
    legend.append(el("li", { class: "legend-suppressed" }, el("span", { class: "swatch hatched" }),
      `hatched below the line, in the series' colour: suppressed (fewer than ${threshold} cases; ` +
      "no value shown)"));
    container.replaceChildren(el("div", { class: "chart-scroll" }, root), legend);
    if (!categories.length) {
      root.append(svg("text", { class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle" }, "No data yet"));
    }
  }

  const uniq = (xs) => Array.from(new Set(xs));
  const countFmt = (v, tick) => (tick && !Number.isInteger(v) ? v.toFixed(1) : String(Math.round(v)));
  const byKey = (rows, keyOf) => {
    const map = new Map();
    for (const r of rows) map.set(keyOf(r), { value: r.count ?? r.seconds ?? null, suppressed: !!r.suppressed });
    return map;
  };

  async function loadStats() {
    const s = await api("/v1/stats");
    const threshold = s.threshold ?? 5;
    $("stats-threshold").textContent = String(threshold);
    $("stats-threshold-2").textContent = String(threshold);

    const refs = s.referrals_per_month || [];
    const refKey = (r) => `${r.referral_type} · ${r.urgency}`;
    const refCells = byKey(refs, (r) => `${r.month}|${refKey(r)}`);
    barChart($("chart-referrals"), {
      categories: uniq(refs.map((r) => r.month)).sort(),
      series: uniq(refs.map(refKey)).sort().map((k) => {
        const [type, urgency] = k.split(" · ");
        return { key: k, name: `${labelWords("referral_type", type)} · ${labelWords("urgency", urgency)}` };
      }),
      cell: (c, k) => refCells.get(`${c}|${k}`), format: countFmt, threshold, unit: "count",
    });

    const med = s.median_seconds || [];
    const medCells = byKey(med, (r) => `${r.month}|${r.to}`);
    barChart($("median-times"), {
      categories: uniq(med.map((r) => r.month)).sort(),
      series: [{ key: "acknowledged", name: "to acknowledgement" }, { key: "accepted", name: "to acceptance" }]
        .filter((x) => med.some((r) => r.to === x.key)),
      cell: (c, k) => medCells.get(`${c}|${k}`),
      format: (v) => (v === 0 ? "0" : duration(v)), threshold, unit: "seconds",
    });

    const rej = s.rejections_by_reason || [];
    const rejCells = byKey(rej, (r) => r.reason);
    barChart($("chart-rejections"), {
      categories: rej.map((r) => r.reason),
      series: [{ key: "n", name: "rejections" }],
      cell: (c) => rejCells.get(c), format: countFmt, threshold, unit: "count",
    });

    const wd = s.withdrawals_per_month || [];
    const wdCells = byKey(wd, (r) => r.month);
    barChart($("chart-withdrawals"), {
      categories: uniq(wd.map((r) => r.month)).sort(),
      series: [{ key: "n", name: "consent withdrawals" }],
      cell: (c) => wdCells.get(c), format: countFmt, threshold, unit: "count",
    });

    const od = (s.overdue_per_month || []).filter((r) => r.clock === "respond");
    const odCells = byKey(od, (r) => `${r.month}|${r.urgency}`);
    barChart($("chart-overdue"), {
      categories: uniq(od.map((r) => r.month)).sort(),
      series: uniq(od.map((r) => r.urgency)).sort()
        .map((u) => ({ key: u, name: labelWords("urgency", u) })),
      cell: (c, k) => odCells.get(`${c}|${k}`), format: countFmt, threshold, unit: "count",
    });

    // One series per stage and outcome, a negative one per reason: the ledger publishes no
    // total of them (a total less its parts would give away a suppressed one).
    const dec = s.decisions_per_month || [];
    const decKey = (r) => [r.stage, r.outcome, r.reason || ""].join(" · ");
    const decCells = byKey(dec, (r) => `${r.month}|${decKey(r)}`);
    barChart($("chart-decisions"), {
      categories: uniq(dec.map((r) => r.month)).sort(),
      series: uniq(dec.map(decKey)).sort().map((k) => {
        const [stage, outcome, reason] = k.split(" · ");
        const name = `${labelWords("stage", stage)} · ${labelWords("outcome", outcome)}`;
        return { key: k, name: reason ? `${name} · ${words(reason)}` : name };
      }),
      cell: (c, k) => decCells.get(`${c}|${k}`), format: countFmt, threshold, unit: "count",
    });

    const bg = s.break_glass_per_month || [];
    const bgKey = (r) => `${r.outcome} · ${r.reason}`;
    const bgCells = byKey(bg, (r) => `${r.month}|${bgKey(r)}`);
    barChart($("chart-break-glass"), {
      categories: uniq(bg.map((r) => r.month)).sort(),
      series: uniq(bg.map(bgKey)).sort().map((k) => {
        const [outcome, reason] = k.split(" · ");
        return { key: k, name: `${words(outcome)} · ${words(reason)}` };
      }),
      cell: (c, k) => bgCells.get(`${c}|${k}`), format: countFmt, threshold, unit: "count",
    });

    const idm = s.identification_median_seconds || [];
    const idmCells = byKey(idm, (r) => `${r.month}|${r.interval}`);
    barChart($("median-identification"), {
      categories: uniq(idm.map((r) => r.month)).sort(),
      series: [
        { key: "referral-to-first", name: "referral to first stage" },
        { key: "first-to-second", name: "first to second stage" },
      ].filter((x) => idm.some((r) => r.interval === x.key)),
      cell: (c, k) => idmCells.get(`${c}|${k}`),
      format: (v) => (v === 0 ? "0" : duration(v)), threshold, unit: "seconds",
    });
  }

  // ---- the rapporteur's report (PROTOCOL §8.12) ----------------------------------------

  function reportCount(c) {
    if (c.suppressed) {
      return el("td", { class: "num suppressed-cell", title: "suppressed (no count released)" },
        el("span", { class: "swatch hatched", "aria-hidden": "true" }), "suppressed");
    }
    const text = c.rounded ? `≈ ${countFmt(c.count)}` : countFmt(c.count);
    return el("td", { class: "num", title: c.rounded ? "rounded" : null }, text);
  }

  async function loadReport() {
    const [latest] = (await api("/v1/reports")).items;
    $("report-none").hidden = !!latest;
    $("report-body").hidden = !latest;
    if (!latest) return;
    const r = (await api(`/v1/reports/${encodeURIComponent(latest.report_id)}`)).report;
    $("report-rapporteur").textContent = r.rapporteur;
    $("report-months").textContent = r.from === r.to ? r.from : `${r.from} to ${r.to}`;
    $("report-signed").textContent = iso(r.signed_at);
    $("report-control").textContent = `k = ${r.k}, rounding to ${r.round_to}`;
    $("report-contributions").textContent = `${r.contributions.length} contribution(s)`;
    $("report-id").textContent = latest.report_id;
    $("report-unreleased").hidden = r.released;
    const body = $("report-table").querySelector("tbody");
    body.replaceChildren(...r.cells.map((c) => el("tr", { class: c.suppressed ? "suppressed" : null },
      ...["stage", "outcome", "sex", "age_group", "form"].map((d) =>
        el("td", {}, c[d] === "total" ? "all" : labelWords(d, c[d]))),
      reportCount(c))));
  }

  // ---- session ------------------------------------------------------------------------

  let recheckTimer = null;

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    clearInterval(recheckTimer);
    $("token-form").hidden = false;
    $("session").hidden = true;
    $("content").hidden = true;
  }

  async function start() {
    showError("");
    $("token-form").hidden = true;
    $("session").hidden = false;
    $("content").hidden = false;
    renderFailures();
    try {
      await loadCheckpoint();
      await Promise.all([loadEvents(), loadStats(), loadReport()]);
      clearInterval(recheckTimer);
      recheckTimer = setInterval(() => loadCheckpoint().catch(failed), RECHECK_MS);
    } catch (err) {
      failed(err);
    }
  }

  function init() {
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const token = $("token").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token").value = "";
      start();
    });
    $("logout").addEventListener("click", () => { signOut(); showError(""); });
    $("refresh-checkpoint").addEventListener("click", () => loadCheckpoint().catch(failed));
    $("search").addEventListener("input", onSearch);
    $("next-page").addEventListener("click", () => {
      if (!events.next) return;
      events.previous.push(events.cursor);
      events.cursor = events.next;
      loadEvents().catch(failed);
    });
    $("first-page").addEventListener("click", () => {
      events.cursor = null;
      events.previous = [];
      loadEvents().catch(failed);
    });
    $("events-table").addEventListener("click", (ev) => {
      const btn = ev.target.closest(".referral-link");
      if (btn) openTimeline(btn.dataset.referralId).catch(failed);
    });
    $("failures-list").addEventListener("click", (ev) => {
      const btn = ev.target.closest(".acknowledge");
      if (btn) acknowledge(Number(btn.dataset.id));
    });
    $("timeline-close").addEventListener("click", () => { $("timeline").hidden = true; });
    if (sessionStorage.getItem(TOKEN_KEY)) start();
    else signOut();
  }

  init();
})();
