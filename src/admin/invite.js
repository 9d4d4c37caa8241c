// The invite page: makes the device's WireGuard key pair here, in the browser, sends only
// the public key with the invite code, and shows the config (with the private key filled in
// here) as text, a download and a QR code. The private key never leaves this page.
"use strict";

// --- QR code (ISO/IEC 18004): byte mode, error correction level L, versions 1 to 20. ---
// Per version: [error correction bytes per block, [blocks, data bytes each], ...].
const QR_L = [null,
  [7, [1, 19]], [10, [1, 34]], [15, [1, 55]], [20, [1, 80]], [26, [1, 108]],
  [18, [2, 68]], [20, [2, 78]], [24, [2, 97]], [30, [2, 116]], [18, [2, 68], [2, 69]],
  [20, [4, 81]], [24, [2, 92], [2, 93]], [26, [4, 107]], [30, [3, 115], [1, 116]],
  [22, [5, 87], [1, 88]], [24, [5, 98], [1, 99]], [28, [1, 107], [5, 108]],
  [30, [5, 120], [1, 121]], [28, [3, 113], [4, 114]], [28, [3, 107], [5, 108]]];
const QR_ALIGN = [null, [], [6, 18], [6, 22], [6, 26], [6, 30], [6, 34], [6, 22, 38],
  [6, 24, 42], [6, 26, 46], [6, 28, 50], [6, 30, 54], [6, 32, 58], [6, 34, 62],
  [6, 26, 46, 66], [6, 26, 48, 70], [6, 26, 50, 74], [6, 30, 54, 78], [6, 30, 56, 82],
  [6, 30, 58, 86], [6, 34, 62, 90]];

const GF_EXP = new Uint8Array(512);
const GF_LOG = new Uint8Array(256);
for (let i = 0, x = 1; i < 255; i++) {
  GF_EXP[i] = x;
  GF_LOG[x] = i;
  x <<= 1;
  if (x & 256) x ^= 0x11d;
}
for (let i = 255; i < 512; i++) GF_EXP[i] = GF_EXP[i - 255];
const gfMul = (a, b) => (a && b ? GF_EXP[GF_LOG[a] + GF_LOG[b]] : 0);

// Reed-Solomon error correction bytes of `data` (n of them).
function rsEcc(data, n) {
  let g = [1];
  for (let i = 0; i < n; i++) {
    const ng = new Array(g.length + 1).fill(0);
    for (let j = 0; j < g.length; j++) {
      ng[j] ^= g[j];
      ng[j + 1] ^= gfMul(g[j], GF_EXP[i]);
    }
    g = ng;
  }
  const r = new Array(n).fill(0);
  for (const d of data) {
    const f = d ^ r.shift();
    r.push(0);
    for (let i = 0; i < n; i++) r[i] ^= gfMul(g[i + 1], f);
  }
  return r;
}

// The modules of a QR code of `text`: rows of booleans (true = dark).
function qrMatrix(text) {
  const bytes = new TextEncoder().encode(text);
  let v = 1;
  let cap = 0;
  for (; v <= 20; v++) {
    cap = QR_L[v].slice(1).reduce((s, [c, d]) => s + c * d, 0);
    if (4 + (v < 10 ? 8 : 16) + bytes.length * 8 <= cap * 8) break;
  }
  if (v > 20) throw new Error("the config is too long for a QR code");
  const bits = [];
  const put = (val, len) => { for (let i = len - 1; i >= 0; i--) bits.push((val >>> i) & 1); };
  put(4, 4);
  put(bytes.length, v < 10 ? 8 : 16);
  for (const b of bytes) put(b, 8);
  put(0, Math.min(4, cap * 8 - bits.length));
  while (bits.length % 8) bits.push(0);
  const data = [];
  for (let i = 0; i < bits.length; i += 8) data.push(parseInt(bits.slice(i, i + 8).join(""), 2));
  for (let pad = 0xec; data.length < cap; pad ^= 0xec ^ 0x11) data.push(pad);
  // Split into blocks, add error correction, interleave.
  const [ecc, ...groups] = QR_L[v];
  const blocks = [];
  let at = 0;
  for (const [count, len] of groups) {
    for (let i = 0; i < count; i++) {
      const d = data.slice(at, at + len);
      at += len;
      blocks.push([d, rsEcc(d, ecc)]);
    }
  }
  const words = [];
  const longest = Math.max(...blocks.map(([d]) => d.length));
  for (let i = 0; i < longest; i++) for (const [d] of blocks) if (i < d.length) words.push(d[i]);
  for (let i = 0; i < ecc; i++) for (const [, e] of blocks) words.push(e[i]);

  const size = 17 + 4 * v;
  const mod = Array.from({ length: size }, () => new Array(size).fill(false));
  const fn = Array.from({ length: size }, () => new Array(size).fill(false));
  const set = (x, y, dark) => { mod[y][x] = dark; fn[y][x] = true; };
  for (let i = 0; i < size; i++) {
    set(6, i, i % 2 === 0);
    set(i, 6, i % 2 === 0);
  }
  for (const [cx, cy] of [[3, 3], [size - 4, 3], [3, size - 4]]) {
    for (let dy = -4; dy <= 4; dy++) {
      for (let dx = -4; dx <= 4; dx++) {
        const x = cx + dx;
        const y = cy + dy;
        const dist = Math.max(Math.abs(dx), Math.abs(dy));
        if (x >= 0 && x < size && y >= 0 && y < size) set(x, y, dist !== 2 && dist !== 4);
      }
    }
  }
  const al = QR_ALIGN[v];
  for (let i = 0; i < al.length; i++) {
    for (let j = 0; j < al.length; j++) {
      const last = al.length - 1;
      if ((i === 0 && j === 0) || (i === 0 && j === last) || (i === last && j === 0)) continue;
      for (let dy = -2; dy <= 2; dy++) {
        for (let dx = -2; dx <= 2; dx++) {
          set(al[i] + dx, al[j] + dy, Math.max(Math.abs(dx), Math.abs(dy)) !== 1);
        }
      }
    }
  }
  const drawFormat = (mask) => {
    const d = (1 << 3) | mask; // level L = 01
    let r = d;
    for (let i = 0; i < 10; i++) r = (r << 1) ^ ((r >>> 9) * 0x537);
    const f = ((d << 10) | r) ^ 0x5412;
    const bit = (i) => ((f >>> i) & 1) === 1;
    for (let i = 0; i <= 5; i++) set(8, i, bit(i));
    set(8, 7, bit(6));
    set(8, 8, bit(7));
    set(7, 8, bit(8));
    for (let i = 9; i < 15; i++) set(14 - i, 8, bit(i));
    for (let i = 0; i < 8; i++) set(size - 1 - i, 8, bit(i));
    for (let i = 8; i < 15; i++) set(8, size - 15 + i, bit(i));
    set(8, size - 8, true);
  };
  drawFormat(0);
  if (v >= 7) {
    let r = v;
    for (let i = 0; i < 12; i++) r = (r << 1) ^ ((r >>> 11) * 0x1f25);
    const vb = (v << 12) | r;
    for (let i = 0; i < 18; i++) {
      const dark = ((vb >>> i) & 1) === 1;
      const a = size - 11 + (i % 3);
      const b = Math.floor(i / 3);
      set(a, b, dark);
      set(b, a, dark);
    }
  }
  let i = 0;
  for (let right = size - 1; right >= 1; right -= 2) {
    if (right === 6) right = 5;
    for (let vert = 0; vert < size; vert++) {
      for (let j = 0; j < 2; j++) {
        const x = right - j;
        const y = ((right + 1) & 2) === 0 ? size - 1 - vert : vert;
        if (!fn[y][x] && i < words.length * 8) {
          mod[y][x] = ((words[i >>> 3] >>> (7 - (i & 7))) & 1) === 1;
          i++;
        }
      }
    }
  }
  const masks = [
    (x, y) => (x + y) % 2 === 0, (x, y) => y % 2 === 0, (x) => x % 3 === 0,
    (x, y) => (x + y) % 3 === 0, (x, y) => (Math.floor(x / 3) + Math.floor(y / 2)) % 2 === 0,
    (x, y) => ((x * y) % 2) + ((x * y) % 3) === 0,
    (x, y) => (((x * y) % 2) + ((x * y) % 3)) % 2 === 0,
    (x, y) => (((x + y) % 2) + ((x * y) % 3)) % 2 === 0];
  const applyMask = (m) => {
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) if (!fn[y][x] && masks[m](x, y)) mod[y][x] = !mod[y][x];
    }
  };
  // Long runs, 2x2 blocks and an uneven balance make a code harder to read.
  const penalty = () => {
    let p = 0;
    let dark = 0;
    for (let a = 0; a < size; a++) {
      let runH = 1;
      let runV = 1;
      for (let b = 1; b <= size; b++) {
        if (b < size && mod[a][b] === mod[a][b - 1]) runH++;
        else { if (runH >= 5) p += runH - 2; runH = 1; }
        if (b < size && mod[b][a] === mod[b - 1][a]) runV++;
        else { if (runV >= 5) p += runV - 2; runV = 1; }
      }
    }
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        if (mod[y][x]) dark++;
        if (x && y && mod[y][x] === mod[y - 1][x] && mod[y][x] === mod[y][x - 1] &&
          mod[y][x] === mod[y - 1][x - 1]) p += 3;
      }
    }
    return p + 10 * Math.floor(Math.abs(dark * 20 - size * size * 10) / (size * size));
  };
  let best = 0;
  let bestP = Infinity;
  for (let m = 0; m < 8; m++) {
    applyMask(m);
    drawFormat(m);
    const p = penalty();
    if (p < bestP) { best = m; bestP = p; }
    applyMask(m);
  }
  applyMask(best);
  drawFormat(best);
  return mod;
}

// A PNG (data URL) of the QR code of `text`.
function qrPng(text) {
  const m = qrMatrix(text);
  const scale = 6;
  const quiet = 4;
  const c = document.createElement("canvas");
  c.width = c.height = (m.length + 2 * quiet) * scale;
  const g = c.getContext("2d");
  g.fillStyle = "#fff";
  g.fillRect(0, 0, c.width, c.height);
  g.fillStyle = "#000";
  m.forEach((row, y) => row.forEach((dark, x) => {
    if (dark) g.fillRect((x + quiet) * scale, (y + quiet) * scale, scale, scale);
  }));
  return c.toDataURL("image/png");
}

// --- The page. ---
const b64 = (u) => btoa(String.fromCharCode(...u));
const $ = (id) => document.getElementById(id);

async function join(ev) {
  ev.preventDefault();
  const status = $("status");
  status.textContent = "Making this device's key…";
  let pair;
  try {
    pair = await crypto.subtle.generateKey({ name: "X25519" }, true, ["deriveBits"]);
  } catch (e) {
    status.textContent = "This browser cannot make a WireGuard key (" + e.message +
      "). Open the link in a current browser, or run `cloudpc connect --invite` on Linux.";
    return;
  }
  const pub = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  const jwk = await crypto.subtle.exportKey("jwk", pair.privateKey);
  const body = { code: $("code").value.trim(), public_key: b64(pub) };
  const name = $("name").value.trim();
  if (name) body.name = name;
  status.textContent = "Joining…";
  let r;
  try {
    r = await fetch("/invite/redeem", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (e) {
    status.textContent = "The Cloud PC did not answer: " + e.message;
    return;
  }
  const j = await r.json().catch(() => ({ error: "the Cloud PC's answer did not read" }));
  if (!r.ok) {
    status.textContent = j.error;
    return;
  }
  // The JWK's `d` is the X25519 private key (base64url): WireGuard writes it in base64.
  const d = jwk.d.replace(/-/g, "+").replace(/_/g, "/");
  const priv = d + "=".repeat((4 - (d.length % 4)) % 4);
  const config = j.config.replace(/^# PrivateKey = .*$/m, "PrivateKey = " + priv);
  $("config").textContent = config;
  $("qr").src = qrPng(config);
  const dl = $("download");
  dl.href = "data:application/octet-stream;base64," + btoa(config);
  dl.download = j.device.name + ".conf";
  $("device").textContent = j.device.name;
  $("join").hidden = true;
  $("done").hidden = false;
  status.textContent = "";
}

const fromLink = new URLSearchParams(location.hash.slice(1)).get("code");
if (fromLink) $("code").value = fromLink;
$("join").addEventListener("submit", join);
