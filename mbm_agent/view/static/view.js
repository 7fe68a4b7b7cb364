// mbm-agent view: the page. One websocket; every command returns the new state of
// every panel, which render() draws. Plain browser JavaScript, no build step.
"use strict";

const view = {
  runs: [],
  state: null,
  playing: false,
  takeover: false,
  sound: false,
  steps: 0,
  pending: false,
  audio: [], // per panel: {buffer: AudioBuffer, samples: Float32Array[], exact}
  finished: [], // episodes that ended: {panel, run, seed, steps, return, success}
  ready: false,
  error: null,
};
window.mbmView = view;

const $ = (sel, root = document) => root.querySelector(sel);
let socket = null;
let audioCtx = null;
let playingSource = null;
let timer = null;
let nextId = 1;

function status(text, isError = false) {
  const el = $("#status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function send(message) {
  if (!socket || socket.readyState !== WebSocket.OPEN) return;
  view.pending = true;
  message.id = nextId++;
  socket.send(JSON.stringify(message));
}

function scheduleNext() {
  clearTimeout(timer);
  if (!view.playing || view.takeover) return;
  const speed = Number($("#speed").value);
  // Hold an episode's last frame a moment, so its outcome can be seen.
  const ended = view.state && view.state.panels.some((p) => p.done);
  const delay = ended ? Math.max(800, 1000 / speed) : 1000 / speed;
  timer = setTimeout(() => { if (!view.pending) send({ op: "step" }); }, delay);
}

function setPlaying(on) {
  view.playing = on;
  $("#play").textContent = on ? "Pause" : "Play";
  $("#play").classList.toggle("on", on);
  if (on && !view.pending) scheduleNext();
  else clearTimeout(timer);
}

// ---------------------------------------------------------------- audio
function ensureAudioContext() {
  if (!audioCtx) {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return null;
    audioCtx = new Ctx();
  }
  return audioCtx;
}

function decodeSound(sound) {
  const bytes = Uint8Array.from(atob(sound.pcm16), (c) => c.charCodeAt(0));
  const pcm = new Int16Array(bytes.buffer);
  const channels = sound.channels;
  const n = pcm.length / channels;
  const samples = [];
  for (let c = 0; c < channels; c++) {
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = pcm[i * channels + c] / 32767;
    samples.push(data);
  }
  const ctx = ensureAudioContext();
  let buffer = null;
  if (ctx) {
    buffer = ctx.createBuffer(channels, n, sound.sample_rate);
    samples.forEach((data, c) => buffer.copyToChannel(data, c));
  }
  return { buffer, samples, exact: sound.exact, sampleRate: sound.sample_rate };
}

function playBuffer(buffer) {
  const ctx = ensureAudioContext();
  if (!ctx || !buffer) return;
  if (ctx.state === "suspended") ctx.resume();
  if (playingSource) { try { playingSource.stop(); } catch (e) { /* already stopped */ } }
  const src = ctx.createBufferSource();
  src.buffer = buffer;
  src.connect(ctx.destination);
  src.start();
  playingSource = src;
}

// ---------------------------------------------------------------- drawing
function colour(v) {
  // v in [0, 1] -> a dark-blue / teal / yellow ramp (viridis-like).
  const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const x = Math.min(0.9999, Math.max(0, v)) * (stops.length - 1);
  const i = Math.floor(x), f = x - i;
  return stops[i].map((a, k) => Math.round(a + f * (stops[i + 1][k] - a)));
}

function drawSpectrogram(canvas, mel) {
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (!mel) return;
  const channels = mel.length, bands = mel[0].length, frames = mel[0][0].length;
  const gap = 4;
  const w = (canvas.width - gap * (channels - 1)) / channels;
  const cw = w / frames, ch = canvas.height / bands;
  const lo = -13.8, hi = 6.0;
  for (let c = 0; c < channels; c++) {
    for (let m = 0; m < bands; m++) {
      for (let t = 0; t < frames; t++) {
        const [r, g, b] = colour((mel[c][m][t] - lo) / (hi - lo));
        ctx.fillStyle = `rgb(${r},${g},${b})`;
        ctx.fillRect(c * (w + gap) + t * cw, canvas.height - (m + 1) * ch, Math.ceil(cw), Math.ceil(ch));
      }
    }
  }
  if (channels === 2) {
    ctx.fillStyle = "#fff";
    ctx.font = "10px sans-serif";
    ctx.fillText("L", 3, 11);
    ctx.fillText("R", w + gap + 3, 11);
  }
}

function bar(fraction) {
  const b = document.createElement("div");
  b.className = "bar";
  const s = document.createElement("span");
  s.style.width = `${Math.round(100 * Math.max(0, Math.min(1, fraction)))}%`;
  b.appendChild(s);
  return b;
}

function ensurePanels(n) {
  const root = $("#panels");
  while (root.children.length < n) {
    const node = $("#panel-template").content.firstElementChild.cloneNode(true);
    node.dataset.index = String(root.children.length);
    $(".play-sound", node).addEventListener("click", () => {
      const a = view.audio[Number(node.dataset.index)];
      if (a) playBuffer(a.buffer);
    });
    root.appendChild(node);
  }
}

function renderPanel(node, p, index) {
  $(".run-title", node).textContent = `${p.run} · ${p.env_id} · ${p.fusion} fusion`;
  const outcome = p.done
    ? (p.success === null ? "<span class='badge'>ended</span>"
      : p.success ? "<span class='badge success'>success</span>"
        : "<span class='badge failure'>failure</span>")
    : "";
  const pose = p.pose ? ` · cell (${p.pose.row}, ${p.pose.col}) heading ${p.pose.heading}` : "";
  const last = p.last_action ? ` · last: ${p.actions[p.last_action.index]} (${p.last_action.by})` : "";
  const ep = $(".episode", node);
  ep.innerHTML = `seed <b class="seed-v">${p.seed}</b> · step <b class="t-v">${p.t}</b> · return ${p.return.toFixed(3)}${pose}${last} ${outcome}`;
  node.dataset.t = String(p.t);
  node.dataset.done = String(p.done);
  node.dataset.success = String(p.success);

  const frameKey = Object.keys(p.frames)[0];
  $(".ego-fig", node).classList.toggle("hidden", !frameKey);
  if (frameKey) $(".ego", node).src = p.frames[frameKey];
  $(".top-fig", node).classList.toggle("hidden", !p.topdown);
  if (p.topdown) $(".topdown", node).src = p.topdown;

  const textKeys = Object.keys(p.text);
  $(".instruction-box", node).classList.toggle("hidden", textKeys.length === 0);
  const instr = $(".instruction", node);
  instr.innerHTML = "";
  for (const key of textKeys) {
    const words = p.text[key];
    const top = Math.max(0.05, ...words.map((w) => w.score));
    for (const w of words) {
      const span = document.createElement("span");
      span.className = "word";
      span.textContent = w.word;
      span.dataset.score = String(w.score);
      const alpha = w.score / top;
      span.style.background = `rgba(255, 196, 0, ${(0.85 * alpha).toFixed(3)})`;
      span.style.color = alpha > 0.5 ? "#000" : "";
      span.title = `replacing "${w.word}" by padding changes the action probabilities by ${w.score.toFixed(3)} (total variation)`;
      instr.appendChild(span);
    }
  }

  const audioKeys = Object.keys(p.audio);
  $(".audio-box", node).classList.toggle("hidden", audioKeys.length === 0);
  if (audioKeys.length) {
    const a = p.audio[audioKeys[0]];
    drawSpectrogram($(".spectrogram", node), a.mel);
    if (a.sound) {
      view.audio[index] = decodeSound(a.sound);
      $(".sound-note", node).textContent = a.sound.exact
        ? `the game's waveform at this pose (${a.sound.sample_rate} Hz, peak ${a.sound.peak})`
        : "approximate: resynthesised from the features (Griffin-Lim)";
      if (view.sound && index === 0) playBuffer(view.audio[index].buffer);
    } else {
      view.audio[index] = null;
      $(".sound-note", node).textContent = "no waveform for these features";
    }
  }

  const q = p.kind === "q";
  $(".value", node).textContent = `${q ? "max Q" : "value"} ${p.value.toFixed(3)}`;
  const probs = $(".probs", node);
  probs.innerHTML = "";
  p.probs.forEach((v, i) => {
    const row = document.createElement("div");
    row.className = "row" + (i === p.next_action ? " chosen" : "");
    row.dataset.action = p.actions[i];
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = p.actions[i];
    const num = document.createElement("span");
    num.className = "prob";
    num.textContent = v.toFixed(3);
    row.append(name, bar(v), num);
    probs.appendChild(row);
  });
  if (q) probs.title = "softmax of the Q-values";

  const buttons = $(".buttons", node);
  if (index === 0 && buttons.children.length !== p.actions.length) {
    buttons.innerHTML = "";
    p.actions.forEach((name, i) => {
      const b = document.createElement("button");
      b.textContent = name;
      b.className = "act";
      b.addEventListener("click", () => send({ op: "step", action: i }));
      buttons.appendChild(b);
    });
  }
  buttons.classList.toggle("hidden", !view.takeover || index !== 0);

  const tbody = $(".senses tbody", node);
  tbody.innerHTML = "";
  const hasWeights = p.senses.some((s) => s.weight !== null);
  $(".weight-h", node).textContent = hasWeights ? (p.fusion_weights === "gate" ? "gate" : "attention") : "";
  for (const s of p.senses) {
    const tr = document.createElement("tr");
    tr.dataset.key = s.key;
    if (s.masked) tr.className = "masked-sense";
    const name = document.createElement("td");
    name.textContent = s.modality === s.key ? s.key : `${s.key} (${s.modality})`;
    const shift = document.createElement("td");
    shift.append(bar(s.shift), ` ${s.shift.toFixed(3)}`);
    const weight = document.createElement("td");
    weight.textContent = s.weight === null ? "" : s.weight.toFixed(3);
    const without = document.createElement("td");
    const best = s.probs_without.indexOf(Math.max(...s.probs_without));
    without.textContent = s.masked ? "masked" : `→ ${p.actions[best]} ${s.probs_without[best].toFixed(2)}`;
    tr.append(name, shift, weight, without);
    tbody.appendChild(tr);
  }
}

function renderMasks(panels) {
  const root = $("#masks");
  const senses = new Map();
  for (const p of panels) for (const s of p.senses) if (!senses.has(s.key)) senses.set(s.key, s);
  const masked = new Set(panels.flatMap((p) => p.masked));
  if (root.dataset.keys !== [...senses.keys()].join(",")) {
    root.dataset.keys = [...senses.keys()].join(",");
    root.innerHTML = "mask:";
    for (const key of senses.keys()) {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.className = "mask";
      box.dataset.key = key;
      box.addEventListener("change", () => send({ op: "mask", key, masked: box.checked }));
      label.append(box, ` ${key}`);
      root.appendChild(label);
    }
  }
  root.querySelectorAll("input.mask").forEach((box) => { box.checked = masked.has(box.dataset.key); });
}

function recordFinished(panels) {
  panels.forEach((p, i) => {
    if (!p.done) return;
    const last = view.finished.find((f) => f.panel === i && f.seed === p.seed && f.episode === p.episode);
    if (!last) view.finished.push({ panel: i, run: p.run, seed: p.seed, episode: p.episode, steps: p.t, return: p.return, success: p.success });
  });
}

function render(state) {
  view.state = state;
  recordFinished(state.panels);
  ensurePanels(state.panels.length);
  state.panels.forEach((p, i) => renderPanel($("#panels").children[i], p, i));
  renderMasks(state.panels);
  $("#seed").value = String(state.seed);
  const p0 = state.panels[0];
  const mode = view.takeover ? "you are playing" : view.playing ? "playing" : "paused";
  status(`${mode} · episode ${p0.episode + 1} · step ${p0.t}` + (p0.done ? " · episode over (next step starts the next seed)" : ""));
}

// ---------------------------------------------------------------- input
function actionForKey(key) {
  if (!view.state) return null;
  const actions = view.state.panels[0].actions;
  const info = view.runs[0];
  if (info) {
    for (const [name, keys] of Object.entries(info.keys)) {
      if (keys.includes(key)) return actions.indexOf(name);
    }
  }
  const digit = Number(key);
  if (Number.isInteger(digit) && digit >= 1 && digit <= actions.length) return digit - 1;
  return null;
}

document.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLInputElement && event.target.type === "number") return;
  if (view.takeover) {
    const a = actionForKey(event.key);
    if (a !== null && a >= 0) {
      event.preventDefault();
      send({ op: "step", action: a });
      return;
    }
  }
  if (event.key === " ") { event.preventDefault(); setPlaying(!view.playing); }
  else if (event.key === "." || event.key === "n") send({ op: "step" });
});

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws`);
  socket.addEventListener("open", () => send({ op: "state" }));
  socket.addEventListener("message", (event) => {
    view.pending = false;
    const msg = JSON.parse(event.data);
    if (msg.error) {
      view.error = msg.error;
      status(msg.error, true);
      return;
    }
    view.steps += 1;
    render(msg);
    view.ready = true;
    scheduleNext();
  });
  socket.addEventListener("close", () => { status("disconnected: is mbm-agent view still running?", true); view.ready = false; });
}

async function main() {
  const info = await (await fetch("/api/runs")).json();
  view.runs = info.runs;
  document.title = `mbm-agent view · ${info.runs.map((r) => r.name).join(" vs ")}`;
  $("#seed").value = String(info.seed);
  $("#play").addEventListener("click", () => setPlaying(!view.playing));
  $("#step").addEventListener("click", () => send({ op: "step" }));
  $("#speed").addEventListener("input", () => { $("#speed-value").textContent = $("#speed").value; });
  $("#new-seed").addEventListener("click", () => send({ op: "reset", seed: Number($("#seed").value) + 1 }));
  $("#seed").addEventListener("change", () => send({ op: "reset", seed: Number($("#seed").value) }));
  $("#takeover").addEventListener("change", (e) => {
    view.takeover = e.target.checked;
    if (view.takeover) setPlaying(false);
    if (view.state) render(view.state);
  });
  $("#sample").addEventListener("change", (e) => send({ op: "sample", on: e.target.checked }));
  $("#sound").addEventListener("change", (e) => {
    view.sound = e.target.checked;
    if (view.sound) { const ctx = ensureAudioContext(); if (ctx) ctx.resume(); }
  });
  connect();
}

main().catch((err) => { view.error = String(err); status(String(err), true); });
