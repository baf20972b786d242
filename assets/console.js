// dbtape review: the session player. Served by the console itself; no inline script, and
// every recorded text goes into the page through textContent, never as markup.
"use strict";

(function () {
  const player = document.getElementById("player");
  if (!player) return;
  const sid = player.dataset.sid;
  const total = Number(player.dataset.events) || 0;
  const screen = document.getElementById("screen");
  const json = document.getElementById("event-json");
  const scrubber = document.getElementById("scrubber");
  const position = document.getElementById("position");
  const speed = document.getElementById("speed");
  const follow = document.getElementById("follow");
  const PAGE = 200;

  let steps = [];        // fetched steps, in order
  let shown = 0;         // how many are on screen
  let next = null;       // `from` of the next page, null at the end
  let timer = null;
  let source = null;

  async function fetchPage(from) {
    const response = await fetch(`/api/sessions/${encodeURIComponent(sid)}/steps?from=${from}&limit=${PAGE}`, { credentials: "same-origin" });
    if (!response.ok) throw new Error(await response.text());
    const page = await response.json();
    steps = steps.concat(page.steps);
    next = page.next;
  }

  function show(step) {
    const line = document.createElement("div");
    line.className = "step";
    line.dataset.ei = String(step.ei);
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = new Date(step.time_ms).toISOString().replace("T", " ").slice(0, 23);
    const text = document.createElement("pre");
    text.className = "text";
    text.textContent = step.text;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "json-button";
    button.textContent = "JSON";
    button.addEventListener("click", () => showJson(step.ei));
    line.append(time, button, text);
    screen.append(line);
    line.scrollIntoView({ block: "nearest" });
    scrubber.value = String(step.ei);
    position.textContent = `event ${step.ei} of ${total}`;
  }

  async function showJson(ei) {
    const response = await fetch(`/api/sessions/${encodeURIComponent(sid)}/events/${ei}`, { credentials: "same-origin" });
    const text = await response.text();
    let shown;
    try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { shown = text; }
    // JSON.stringify leaves bidirectional overrides and C1 controls as they are: escape them,
    // so what the reviewer reads is what was recorded, in the order it was recorded.
    json.textContent = shown.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]/g,
      (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
    json.hidden = false;
  }

  async function stepOnce() {
    if (shown >= steps.length && next !== null) await fetchPage(next);
    if (shown >= steps.length) { pause(); startFollow(); return false; }
    show(steps[shown]);
    shown += 1;
    return true;
  }

  function delayTo(i) {
    if (i <= 0 || i >= steps.length) return 0;
    const gap = steps[i].time_ms - steps[i - 1].time_ms;
    return Math.min(Math.max(gap, 0), 2000) / Number(speed.value);
  }

  function play() {
    if (timer) return;
    const tick = async () => {
      const more = await stepOnce();
      if (!more) return;
      timer = setTimeout(tick, delayTo(shown));
    };
    timer = setTimeout(tick, 0);
  }

  function pause() {
    if (timer) clearTimeout(timer);
    timer = null;
  }

  async function seek(from) {
    pause();
    steps = []; shown = 0; next = null;
    screen.replaceChildren();
    await fetchPage(from);
    // The first screen at once: as many steps as the page holds.
    while (shown < steps.length && shown < 40) { show(steps[shown]); shown += 1; }
    if (shown === 0) position.textContent = `no steps from event ${from}`;
  }

  function startFollow() {
    if (!follow || !follow.checked || source) return;
    const from = steps.length ? steps[steps.length - 1].ei + 1 : Number(scrubber.value) || 0;
    source = new EventSource(`/api/sessions/${encodeURIComponent(sid)}/follow?from=${from}`);
    source.addEventListener("step", (e) => {
      const step = JSON.parse(e.data);
      steps.push(step);
      show(step);
      shown = steps.length;
    });
    source.addEventListener("end", () => { source.close(); source = null; position.textContent += " (session ended)"; });
  }

  document.getElementById("play").addEventListener("click", play);
  document.getElementById("pause").addEventListener("click", pause);
  document.getElementById("step").addEventListener("click", () => { pause(); stepOnce(); });
  scrubber.addEventListener("change", () => seek(Number(scrubber.value)));
  if (follow) follow.addEventListener("change", () => { if (follow.checked) startFollow(); else if (source) { source.close(); source = null; } });

  seek(Number(player.dataset.at) || 0).then(() => { if (next === null) startFollow(); }).catch((e) => { position.textContent = String(e); });
})();
