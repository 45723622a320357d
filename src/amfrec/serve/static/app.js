// The page: search titles (GET /items), pick watched movies, ask POST /recommend, show the top 10 with
// posters and a bar of the gate's modality weights. No framework, no external files.
"use strict";
const $ = (id) => document.getElementById(id);
const watched = []; // [{item_id, title}], oldest first

function el(tag, props = {}, children = []) {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
}

function gateBar(gate) {
  const bar = el("span", { className: "bar", title: "gate weights" });
  for (const [modality, weight] of Object.entries(gate || {})) {
    const part = el("span", { className: modality, title: `${modality} ${weight.toFixed(2)}` });
    part.style.width = `${(100 * weight).toFixed(1)}%`;
    bar.append(part);
  }
  return bar;
}

function renderHistory() {
  $("history").replaceChildren(...watched.map((it) => el("li", { textContent: it.title })));
  $("recommend").disabled = watched.length === 0;
}

async function search() {
  const query = $("search").value.trim();
  if (!query) { $("results").replaceChildren(); return; }
  const res = await fetch(`/items?per_page=15&query=${encodeURIComponent(query)}`);
  const page = await res.json();
  if (!res.ok) { $("status").textContent = page.error; return; }
  $("results").replaceChildren(...page.items.map((it) => {
    const li = el("li", { textContent: `${it.title}` });
    li.dataset.itemId = it.item_id;
    li.addEventListener("click", () => { watched.push(it); renderHistory(); });
    return li;
  }));
}

async function recommend() {
  $("status").textContent = "ranking…";
  const res = await fetch("/recommend", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ history: watched.map((it) => it.item_id), k: 10 }),
  });
  const body = await res.json();
  if (!res.ok) { $("status").textContent = `error: ${body.error}`; return; }
  $("status").textContent = `${body.model}: top ${body.items.length}`;
  const rows = await Promise.all(body.items.map(async (it) => {
    const detail = await (await fetch(`/items/${encodeURIComponent(it.item_id)}`)).json();
    const picture = detail.poster_url
      ? el("img", { src: detail.poster_url, alt: `poster of ${it.title}` })
      : el("span", { className: "noposter", textContent: "no poster" });
    return el("li", { className: "rec" }, [picture, el("span", { className: "title", textContent: it.title }),
      el("span", { className: "score", textContent: it.score.toFixed(2) }), gateBar(it.gate)]);
  }));
  $("recs").replaceChildren(...rows);
}

async function init() {
  const info = await (await fetch("/info")).json();
  $("info").textContent = `${info.model} on ${info.items} items` +
    (info.metrics && info.metrics["hr@1"] !== undefined ? ` — test hr@1 ${info.metrics["hr@1"].toFixed(3)}` : "");
  let timer = null;
  $("search").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(search, 200); });
  $("recommend").addEventListener("click", recommend);
  $("clear").addEventListener("click", () => { watched.length = 0; renderHistory(); $("recs").replaceChildren(); });
}

init();
