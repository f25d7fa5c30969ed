/*! Sluice tracker: page views, views and clicks of [data-sluice-object]. docs/tracker.md */
(() => {
  'use strict';
  const w = window, d = document, n = navigator;
  let ls;
  try { ls = w.localStorage; } catch (e) { /* blocked: the queue lives in memory only */ }
  const tag = d.currentScript;
  if (!tag || !tag.dataset.key || w.__sluice) return;
  w.__sluice = 1;
  const cfg = tag.dataset;
  // Everything in localStorage lives under these keys.
  const QUEUE = 'sluice.q', VISITOR = 'sluice.v', SESSION = 'sluice.s', WAIT = 'sluice.w', CONSENT = 'sluice.c';
  const CAP = 1000, TTL = 7 * 864e5, BATCH = 10, DELAY = 2e3, IDLE = 18e5, SEEN_MS = 1e3;
  let base = cfg.endpoint || new URL(tag.src).origin;
  if (base.endsWith('/')) base = base.slice(0, -1);
  const url = base + '/v1/events/batch?key=' + encodeURIComponent(cfg.key);
  const dnt = cfg.respectDnt !== 'false' && (n.doNotTrack === '1' || w.doNotTrack === '1' || n.globalPrivacyControl === true);

  const get = (k) => { try { return JSON.parse(ls.getItem(k)); } catch (e) { return null; } };
  const put = (k, v) => { try { v == null ? ls.removeItem(k) : ls.setItem(k, JSON.stringify(v)); } catch (e) { /* full or blocked: memory only */ } };
  const warned = {};
  const warn = (why, text) => { if (!warned[why]) { warned[why] = 1; console.warn('sluice: ' + text); } };

  // Consent: stored choice, else the tag's data-consent ("pending" waits for sluice('consent', true)).
  const consented = () => { const c = get(CONSENT); return c == null ? cfg.consent !== 'pending' : c; };
  const on = () => !dnt && consented();

  // UUIDv7: 48 bits of Unix milliseconds, then random bits (RFC 9562 section 5.7).
  const uuid = () => {
    const b = crypto.getRandomValues(new Uint8Array(16));
    let t = Date.now();
    for (let i = 5; i >= 0; i--) { b[i] = t % 256; t = Math.floor(t / 256); }
    b[6] = b[6] & 15 | 112; b[8] = b[8] & 63 | 128;
    const h = Array.from(b, (x) => (x + 256).toString(16).slice(1)).join('');
    return h.slice(0, 8) + '-' + h.slice(8, 12) + '-' + h.slice(12, 16) + '-' + h.slice(16, 20) + '-' + h.slice(20);
  };
  const visitor = () => { let v = get(VISITOR); if (!v) put(VISITOR, v = uuid()); return v; };
  const session = () => {
    const now = Date.now();
    let s = get(SESSION);
    if (!s || now - s.t > IDLE) s = { id: uuid() };
    s.t = now;
    put(SESSION, s);
    return s.id;
  };

  // The queue: every event until the gateway took it or refused it for good; shared by the
  // site's tabs and kept across reloads. `busy` holds the ids this tab is sending now.
  let mem = [], busy = new Set(), alive = new Set(), timer = 0, due = 0, failures = 0, trusty = true;
  const load = () => { const q = get(QUEUE); return Array.isArray(q) ? q : mem; };
  const save = (q) => {
    const old = Date.now() - TTL;
    q = q.filter((e) => e.t > old);
    if (q.length > CAP) { warn('cap', 'queue full: dropped the ' + (q.length - CAP) + ' oldest events'); q = q.slice(-CAP); }
    mem = q;
    put(QUEUE, q);
  };
  const forget = (ids) => save(load().filter((e) => !ids.has(e.e.event_id)));

  const schedule = (ms) => {
    ms = Math.max(ms, (get(WAIT) || 0) - Date.now(), 0);
    if (timer && due <= Date.now() + ms) return;
    clearTimeout(timer);
    due = Date.now() + ms;
    timer = setTimeout(() => { timer = 0; flush(); }, ms);
  };
  const body = (list) => {
    const at = new Date().toISOString();
    return JSON.stringify(list.map((e) => Object.assign({}, e.e, { sent_at: at })));
  };

  function flush() {
    if (!on()) return;
    const wait = (get(WAIT) || 0) - Date.now();
    if (wait > 0) return schedule(wait);
    const list = load().filter((e) => !busy.has(e.e.event_id)).slice(0, BATCH);
    if (!list.length) return;
    const ids = new Set(list.map((e) => e.e.event_id));
    ids.forEach((i) => busy.add(i));
    const text = body(list), keep = text.length < 6e4;
    if (keep) ids.forEach((i) => alive.add(i));
    const done = (retry, after) => {
      ids.forEach((i) => { busy.delete(i); alive.delete(i); });
      if (retry) {
        // Back-off with jitter, never sooner than the gateway's Retry-After (seconds).
        trusty = false;
        const ms = Math.max(Math.min(6e4, 1e3 * 2 ** failures++) * (0.5 + Math.random() / 2), after * 1e3 || 0);
        put(WAIT, after ? Date.now() + ms : null);
        return schedule(ms);
      }
      failures = 0;
      trusty = true;
      put(WAIT, null);
      forget(ids);
      if (load().some((e) => !busy.has(e.e.event_id))) schedule(0);
    };
    fetch(url, {
      method: 'POST', body: text, keepalive: keep, credentials: 'omit',
      headers: { 'Content-Type': 'text/plain' },
    }).then((r) => {
      const s = r.status;
      if (s === 408 || s === 429 || s >= 500) return done(1, parseFloat(r.headers.get('Retry-After')));
      if (s >= 300 && s !== 207) warn(s, 'the gateway refused ' + list.length + ' events with ' + s + '; they are dropped (not retried)');
      if (s === 207) warn(s, 'the gateway refused some events as invalid; see the answer of POST /v1/events/batch');
      done(0);
    }, () => done(1));
  }

  // When the page hides or goes away: what is queued goes by sendBeacon (text/plain: no
  // preflight), unless the last send failed or the browser is offline; then it stays for the
  // next page. A page that goes away leaves its keepalive fetches to the browser, always: the
  // next page must not send them a second time.
  const leave = (gone) => {
    if (!on()) return;
    const q = load(), sent = new Set(gone ? alive : []);
    if (trusty && n.onLine !== false && (get(WAIT) || 0) <= Date.now()) {
      for (let i = 0; i < q.length; i += BATCH * 5) {
        const part = q.slice(i, i + BATCH * 5).filter((e) => !busy.has(e.e.event_id));
        if (part.length && n.sendBeacon && n.sendBeacon(url, body(part))) part.forEach((e) => sent.add(e.e.event_id));
      }
    }
    if (sent.size) forget(sent);
  };

  let page = location.href, ref = d.referrer, seen = new Set();
  const props = (el) => {
    const p = {};
    let any = 0;
    for (const k in el.dataset) {
      if (k.indexOf('sluiceProp') === 0 && k.length > 10) {
        // data-sluice-prop-item-id arrives as dataset.sluicePropItemId: back to item_id.
        let name = '';
        for (const c of k.slice(10)) name += c >= 'A' && c <= 'Z' ? '_' + c.toLowerCase() : c;
        p[name.slice(1)] = el.dataset[k];
        any = 1;
      }
    }
    return any ? p : undefined;
  };
  const track = (action, el) => {
    if (!on()) return;
    const e = {
      event_id: uuid(), action, anonymous_id: visitor(), session_id: session(), page,
      timestamp: new Date().toISOString(),
    };
    if (ref) e.referrer = ref;
    if (el) { e.object = el.dataset.sluiceObject; const p = props(el); if (p) e.properties = p; }
    const q = load();
    q.push({ e, t: Date.now() });
    save(q);
    schedule(q.length - busy.size >= BATCH ? 0 : DELAY);
  };

  // Views: at least half of the element visible for a second, once per object per page view.
  const timers = new Map();
  const io = w.IntersectionObserver && new IntersectionObserver((entries) => {
    for (const x of entries) {
      const el = x.target;
      clearTimeout(timers.get(el));
      timers.delete(el);
      if (x.isIntersecting && x.intersectionRatio >= 0.5) {
        timers.set(el, setTimeout(() => {
          timers.delete(el);
          const o = el.dataset.sluiceObject;
          if (o && el.isConnected && !seen.has(o)) { seen.add(o); track('view', el); }
        }, SEEN_MS));
      }
    }
  }, { threshold: 0.5 });
  const observe = (root) => {
    if (!io || root.nodeType !== 1) return;
    if (root.matches('[data-sluice-object]')) io.observe(root);
    root.querySelectorAll('[data-sluice-object]').forEach((el) => io.observe(el));
  };

  const pageView = () => {
    if (io) { io.disconnect(); timers.forEach(clearTimeout); timers.clear(); }
    seen = new Set();
    track('page_view');
    observe(d.documentElement);
  };
  const moved = () => {
    if (location.href === page) return;
    ref = page;
    page = location.href;
    pageView();
  };
  for (const m of ['pushState', 'replaceState']) {
    const f = history[m];
    history[m] = function () { const r = f.apply(this, arguments); moved(); return r; };
  }
  w.addEventListener('popstate', moved);
  d.addEventListener('click', (e) => {
    const el = e.target.closest && e.target.closest('[data-sluice-object]');
    if (el) track('click', el);
  }, true);
  w.addEventListener('pagehide', () => leave(1));
  d.addEventListener('visibilitychange', () => { if (d.visibilityState === 'hidden') leave(0); });
  w.addEventListener('offline', () => { trusty = false; });
  w.addEventListener('online', () => { failures = 0; flush(); });
  if (w.MutationObserver) {
    new MutationObserver((list) => list.forEach((m) => m.addedNodes.forEach(observe)))
      .observe(d.documentElement, { childList: true, subtree: true });
  }

  // sluice('consent', true|false): false stops tracking and erases the queue and the ids.
  const api = (cmd, value) => {
    if (cmd !== 'consent') return;
    const was = on();
    put(CONSENT, !!value);
    if (value) { if (!was && on()) pageView(); return flush(); }
    [QUEUE, VISITOR, SESSION, WAIT].forEach((k) => put(k, null));
    mem = [];
  };
  const early = (w.sluice && w.sluice.q) || [];
  w.sluice = api;
  early.forEach((a) => api.apply(null, a));
  pageView();
  flush();
})();
