// The history page: query-log entries are fetched still encrypted and decrypted here, in the
// browser, with the owner's age identity read from a file the owner picks. The identity is
// never sent anywhere; the hub cannot read the history.
//
// age v1 (https://age-encryption.org/v1), X25519 recipients only: WebCrypto does X25519, HKDF
// and HMAC; it has no ChaCha20-Poly1305, so that (RFC 8439) is written out below.
"use strict";

const enc = new TextEncoder();
const dec = new TextDecoder();

// --- bech32 (BIP 173) for AGE-SECRET-KEY-1... -------------------------------------------
const CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l";
function bech32Bytes(s) {
  const lower = s.toLowerCase();
  const sep = lower.lastIndexOf("1");
  if (sep < 1) throw new Error("not a bech32 string");
  const data = [];
  for (const c of lower.slice(sep + 1)) {
    const v = CHARSET.indexOf(c);
    if (v < 0) throw new Error("bad bech32 character");
    data.push(v);
  }
  const words = data.slice(0, -6); // the checksum is not checked: a wrong key simply fails
  let acc = 0, bits = 0;
  const out = [];
  for (const w of words) {
    acc = (acc << 5) | w;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out.push((acc >> bits) & 0xff);
    }
  }
  return new Uint8Array(out);
}

// --- ChaCha20-Poly1305 (RFC 8439) ---------------------------------------------------------
function rotl(v, n) { return (v << n) | (v >>> (32 - n)); }
function chachaBlock(key, counter, nonce) {
  const s = new Uint32Array(16);
  s[0] = 0x61707865; s[1] = 0x3320646e; s[2] = 0x79622d32; s[3] = 0x6b206574;
  const kv = new DataView(key.buffer, key.byteOffset, 32);
  for (let i = 0; i < 8; i++) s[4 + i] = kv.getUint32(i * 4, true);
  s[12] = counter;
  const nv = new DataView(nonce.buffer, nonce.byteOffset, 12);
  for (let i = 0; i < 3; i++) s[13 + i] = nv.getUint32(i * 4, true);
  const x = s.slice();
  const qr = (a, b, c, d) => {
    x[a] += x[b]; x[d] = rotl(x[d] ^ x[a], 16);
    x[c] += x[d]; x[b] = rotl(x[b] ^ x[c], 12);
    x[a] += x[b]; x[d] = rotl(x[d] ^ x[a], 8);
    x[c] += x[d]; x[b] = rotl(x[b] ^ x[c], 7);
  };
  for (let i = 0; i < 10; i++) {
    qr(0, 4, 8, 12); qr(1, 5, 9, 13); qr(2, 6, 10, 14); qr(3, 7, 11, 15);
    qr(0, 5, 10, 15); qr(1, 6, 11, 12); qr(2, 7, 8, 13); qr(3, 4, 9, 14);
  }
  const out = new Uint8Array(64);
  const ov = new DataView(out.buffer);
  for (let i = 0; i < 16; i++) ov.setUint32(i * 4, (x[i] + s[i]) >>> 0, true);
  return out;
}
function chachaXor(key, nonce, counter, data) {
  const out = new Uint8Array(data.length);
  for (let off = 0; off < data.length; off += 64, counter++) {
    const ks = chachaBlock(key, counter, nonce);
    for (let i = 0; i < 64 && off + i < data.length; i++) out[off + i] = data[off + i] ^ ks[i];
  }
  return out;
}
function le(bytes) {
  let v = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[i]);
  return v;
}
function poly1305(key, msg) {
  const r = le(key.subarray(0, 16)) & 0x0ffffffc0ffffffc0ffffffc0fffffffn;
  const s = le(key.subarray(16, 32));
  const p = (1n << 130n) - 5n;
  let a = 0n;
  for (let off = 0; off < msg.length; off += 16) {
    const block = msg.subarray(off, Math.min(off + 16, msg.length));
    a = ((a + le(block) + (1n << BigInt(8 * block.length))) * r) % p;
  }
  a = (a + s) & ((1n << 128n) - 1n);
  const tag = new Uint8Array(16);
  for (let i = 0; i < 16; i++) { tag[i] = Number(a & 0xffn); a >>= 8n; }
  return tag;
}
function aeadOpen(key, nonce, sealed) {
  if (sealed.length < 16) return null;
  const ct = sealed.subarray(0, sealed.length - 16);
  const tag = sealed.subarray(sealed.length - 16);
  const polyKey = chachaBlock(key, 0, nonce).subarray(0, 32);
  const padded = Math.ceil(ct.length / 16) * 16;
  const mac = new Uint8Array(padded + 16);
  mac.set(ct, 0);
  new DataView(mac.buffer).setUint32(padded + 8, ct.length, true); // aad is empty
  const want = poly1305(polyKey, mac);
  let diff = 0;
  for (let i = 0; i < 16; i++) diff |= want[i] ^ tag[i];
  return diff === 0 ? chachaXor(key, nonce, 1, ct) : null;
}

// --- WebCrypto pieces ---------------------------------------------------------------------
async function hkdf(ikm, salt, info, len) {
  const k = await crypto.subtle.importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
  const bits = await crypto.subtle.deriveBits(
    { name: "HKDF", hash: "SHA-256", salt, info: enc.encode(info) }, k, len * 8);
  return new Uint8Array(bits);
}
async function hmac(key, data) {
  const k = await crypto.subtle.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await crypto.subtle.sign("HMAC", k, data));
}
const PKCS8_X25519 = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20];
async function identity(secret) {
  const der = new Uint8Array(48);
  der.set(PKCS8_X25519, 0);
  der.set(secret, 16);
  const sk = await crypto.subtle.importKey("pkcs8", der, { name: "X25519" }, true, ["deriveBits"]);
  const jwk = await crypto.subtle.exportKey("jwk", sk);
  return { sk, pk: b64(jwk.x) };
}
async function x25519(sk, pkBytes) {
  const pk = await crypto.subtle.importKey("raw", pkBytes, { name: "X25519" }, false, []);
  return new Uint8Array(await crypto.subtle.deriveBits({ name: "X25519", public: pk }, sk, 256));
}
function b64(s) {
  const t = s.replace(/-/g, "+").replace(/_/g, "/");
  const bin = atob(t + "=".repeat((4 - (t.length % 4)) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}
function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) { out.set(p, off); off += p.length; }
  return out;
}

// --- age v1 -------------------------------------------------------------------------------
async function ageDecrypt(file, id) {
  let pos = 0;
  const line = () => {
    const end = file.indexOf(10, pos);
    if (end < 0) throw new Error("truncated header");
    const l = dec.decode(file.subarray(pos, end));
    pos = end + 1;
    return l;
  };
  if (line() !== "age-encryption.org/v1") throw new Error("not an age file");
  const stanzas = [];
  let macLine, macStart;
  for (;;) {
    const start = pos;
    const l = line();
    if (l.startsWith("---")) { macLine = l; macStart = start; break; }
    if (!l.startsWith("-> ")) throw new Error("bad stanza");
    const args = l.slice(3).split(" ");
    let body = "";
    for (;;) { const b = line(); body += b; if (b.length < 64) break; }
    stanzas.push({ args, body: b64(body) });
  }
  let fileKey = null;
  for (const st of stanzas) {
    if (st.args[0] !== "X25519" || st.args.length !== 2) continue;
    const eph = b64(st.args[1]);
    const shared = await x25519(id.sk, eph);
    const wrap = await hkdf(shared, concat(eph, id.pk), "age-encryption.org/v1/X25519", 32);
    fileKey = aeadOpen(wrap, new Uint8Array(12), st.body);
    if (fileKey) break;
  }
  if (!fileKey) return null; // not for this identity
  const headerMac = await hmac(await hkdf(fileKey, new Uint8Array(0), "header", 32),
    file.subarray(0, macStart + 3));
  const given = b64(macLine.slice(4));
  if (headerMac.some((b, i) => b !== given[i])) throw new Error("header MAC mismatch");
  const nonce = file.subarray(pos, pos + 16);
  const key = await hkdf(fileKey, nonce, "payload", 32);
  const chunks = [];
  let counter = 0;
  for (let off = pos + 16; off < file.length; counter++) {
    const end = Math.min(off + 65536 + 16, file.length);
    const n = new Uint8Array(12);
    new DataView(n.buffer).setUint32(7, counter, false);
    if (end === file.length) n[11] = 1;
    const plain = aeadOpen(key, n, file.subarray(off, end));
    if (!plain) throw new Error("damaged entry");
    chunks.push(plain);
    off = end;
  }
  return concat(...chunks);
}

// --- the page -----------------------------------------------------------------------------
const VERDICTS = ["forwarded", "cached", "blocked", "local", "refused"];
let entries = [];

function render() {
  const dev = document.getElementById("f-device").value;
  const verdict = document.getElementById("f-verdict").value;
  const since = Number(document.getElementById("f-since").value) || 0;
  const cut = since ? Date.now() - since * 3600 * 1000 : 0;
  const rows = entries.filter((e) =>
    (!dev || (e.device || "") === dev) && (!verdict || e.verdict === verdict) && e.time_ms >= cut);
  const tbody = document.getElementById("h-rows");
  tbody.textContent = "";
  for (const e of rows.slice().reverse()) {
    const tr = document.createElement("tr");
    tr.className = "entry";
    for (const v of [new Date(e.time_ms).toISOString().replace("T", " ").slice(0, 19),
      e.device || e.client, e.name, String(e.qtype), e.verdict, String(e.rcode)]) {
      const td = document.createElement("td");
      td.textContent = v; // text, never markup
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
  document.getElementById("h-count").textContent = rows.length + " of " + entries.length + " entries";
  const devices = [...new Set(entries.map((e) => e.device || ""))].filter(Boolean).sort();
  const sel = document.getElementById("f-device");
  const keep = sel.value;
  sel.textContent = "";
  for (const d of ["", ...devices]) {
    const o = document.createElement("option");
    o.value = d; o.textContent = d || "every device";
    sel.appendChild(o);
  }
  sel.value = keep;
}

async function load(file) {
  const status = document.getElementById("h-status");
  const text = await file.text();
  const m = text.match(/AGE-SECRET-KEY-1[0-9A-Za-z]+/);
  if (!m) { status.textContent = "No AGE-SECRET-KEY-1... in that file."; return; }
  let id;
  try { id = await identity(bech32Bytes(m[0])); } catch (e) {
    status.textContent = "That identity cannot be used: " + e.message; return;
  }
  entries = [];
  let since = 0, skipped = 0;
  for (;;) {
    const r = await fetch("/history/entries?since=" + since, { credentials: "same-origin" });
    if (!r.ok) { status.textContent = "The hub refused: " + r.status; return; }
    const page = await r.json();
    for (const row of page.rows) {
      try {
        const plain = await ageDecrypt(b64(row.data), id);
        if (plain) entries.push(JSON.parse(dec.decode(plain))); else skipped++;
      } catch (e) { skipped++; }
      since = row.seq;
    }
    if (page.rows.length === 0 || since >= page.last_seq) break;
  }
  status.textContent = "Decrypted in this browser" + (skipped ? "; " + skipped + " entries not for this key" : "") + ".";
  render();
}

document.getElementById("h-identity").addEventListener("change", (ev) => {
  const f = ev.target.files[0];
  if (f) load(f);
});
for (const id of ["f-device", "f-verdict", "f-since"]) {
  document.getElementById(id).addEventListener("change", render);
}
for (const v of VERDICTS) {
  const o = document.createElement("option");
  o.value = v; o.textContent = v;
  document.getElementById("f-verdict").appendChild(o);
}
