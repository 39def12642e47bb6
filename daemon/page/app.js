// app.js - the page of blip2d's --http (index.html): the photo goes to
// POST /v1/chat/completions as a data: URL with stream: true; the caption
// and the answers are read from the server-sent events as they arrive.
// Questions carry the conversation (the daemon builds the prompt the way
// blip2ctl chat does).
"use strict";

const $ = (id) => document.getElementById(id);
let imageUrl = null;      // the photo as a data: URL
let history = [];         // [{q, a}]
let busy = false;

function headers() {
  const h = { "Content-Type": "application/json" };
  const t = $("token").value.trim();
  if (t) h.Authorization = "Bearer " + t;
  return h;
}

function messages(question) {
  const m = [{ role: "user", content: [{ type: "image_url", image_url: { url: imageUrl } }] }];
  for (const t of history) {
    m.push({ role: "user", content: t.q });
    m.push({ role: "assistant", content: t.a });
  }
  if (question) m.push({ role: "user", content: question });
  return m;
}

// Streams a completion; calls onText with each piece; resolves to the whole text.
async function complete(question, onText) {
  const body = JSON.stringify({ model: "blip2", messages: messages(question), stream: true,
                                stream_options: { include_usage: true } });
  const rsp = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body });
  if (!rsp.ok) {
    let msg = rsp.status + " " + rsp.statusText;
    try { msg = (await rsp.json()).error.message; } catch (e) { /* not JSON */ }
    if (rsp.status === 401) $("auth").hidden = false;
    throw new Error(msg);
  }
  const reader = rsp.body.getReader();
  const dec = new TextDecoder();
  let buf = "", text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (!ev.startsWith("data: ")) continue;
      const data = ev.slice(6);
      if (data === "[DONE]") return text;
      const obj = JSON.parse(data);
      if (obj.error) throw new Error(obj.error.message);
      if (obj.usage) $("status").textContent = obj.usage.completion_tokens + " tokens";
      for (const c of obj.choices || []) {
        if (c.index === 0 && c.delta && c.delta.content) {
          text += c.delta.content;
          onText(c.delta.content);
        }
      }
    }
  }
  return text;
}

function setBusy(b) {
  busy = b;
  document.body.dataset.busy = b ? "1" : "0";
  $("question").disabled = b;
}

async function load(file) {
  if (!file || busy) return;
  $("error").textContent = "";
  $("caption").textContent = "";
  $("turns").textContent = "";
  $("caption").dataset.done = "0";
  history = [];
  const preview = $("preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-text").hidden = true;
  imageUrl = await new Promise((ok, bad) => {
    const r = new FileReader();
    r.onload = () => ok(r.result);
    r.onerror = () => bad(r.error);
    r.readAsDataURL(file);
  });
  setBusy(true);
  try {
    let pieces = 0;  // how many streamed pieces built the caption (data-pieces)
    await complete(null, (piece) => {
      $("caption").textContent += piece;
      $("caption").dataset.pieces = String(++pieces);
    });
    $("caption").dataset.done = "1";
    $("ask").hidden = false;
    $("question").focus();
  } catch (e) {
    $("error").textContent = e.message;
  } finally {
    setBusy(false);
  }
}

async function ask(ev) {
  ev.preventDefault();
  const q = $("question").value.trim();
  if (!q || busy || !imageUrl) return;
  $("question").value = "";
  const li = document.createElement("li");
  const qs = document.createElement("span");
  qs.className = "q";
  qs.textContent = q + " ";
  const as = document.createElement("span");
  as.className = "a";
  li.append(qs, as);
  $("turns").append(li);
  setBusy(true);
  try {
    const a = await complete(q, (piece) => { as.textContent += piece; });
    history.push({ q, a: a.trim() });
    li.dataset.done = "1";
  } catch (e) {
    $("error").textContent = e.message;
  } finally {
    setBusy(false);
  }
}

$("file").addEventListener("change", () => load($("file").files[0]));
$("ask").addEventListener("submit", ask);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  load(e.dataTransfer.files[0]);
});
