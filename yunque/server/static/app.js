// yunque web chat: plain JavaScript over the server's Ollama API (/api/tags, /api/chat NDJSON).
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  model: $("model"), system: $("system"), messages: $("messages"), empty: $("empty"),
  composer: $("composer"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
  newChat: $("new-chat"), status: $("status"), temperature: $("temperature"),
  temperatureValue: $("temperature-value"), numPredict: $("num-predict"),
  apiKeyField: $("api-key-field"), apiKey: $("api-key"),
};

const state = { history: [], controller: null };

function setStatus(text, isError = false) {
  els.status.textContent = text;
  els.status.classList.toggle("error", isError);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = els.apiKey.value || localStorage.getItem("yunque-api-key");
  if (key) h["Authorization"] = `Bearer ${key}`;
  return h;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return typeof body.error === "string" ? body.error : (body.error && body.error.message) || response.statusText;
  } catch {
    return response.statusText;
  }
}

async function loadModels() {
  const response = await fetch("/api/tags", { headers: headers() });
  if (response.status === 401) {
    els.apiKeyField.hidden = false;
    setStatus("This server needs an API key.", true);
    return;
  }
  if (!response.ok) {
    setStatus(await errorText(response), true);
    return;
  }
  const { models } = await response.json();
  const previous = els.model.value || localStorage.getItem("yunque-model");
  els.model.replaceChildren(...models.map((m) => new Option(`${m.name}  ·  ${m.details.parameter_size || ""}`, m.name)));
  if (models.some((m) => m.name === previous)) els.model.value = previous;
  if (!models.length) setStatus("No models in the store yet: add one with `yunque import DIR NAME`.", true);
  else setStatus(`${models.length} model${models.length > 1 ? "s" : ""} available`);
}

function addMessage(role, text) {
  els.empty.hidden = true;
  const wrap = document.createElement("div");
  wrap.className = `message ${role}`;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role === "user" ? "You" : role === "assistant" ? els.model.value : "Error";
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  bubble.textContent = text;
  wrap.append(label, bubble);
  els.messages.append(wrap);
  els.messages.scrollTop = els.messages.scrollHeight;
  return wrap;
}

function setBusy(busy) {
  els.send.hidden = busy;
  els.stop.hidden = !busy;
  els.prompt.disabled = busy;
  els.model.disabled = busy;
}

// Read an NDJSON body line by line, calling onEvent for each parsed object.
async function readNdjson(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).trim();
      buffer = buffer.slice(newline + 1);
      if (line) onEvent(JSON.parse(line));
    }
  }
  if (buffer.trim()) onEvent(JSON.parse(buffer));
}

async function send(text) {
  const model = els.model.value;
  if (!model) {
    setStatus("Pick a model first.", true);
    return;
  }
  state.history.push({ role: "user", content: text });
  addMessage("user", text);
  const reply = addMessage("assistant", "");
  reply.classList.add("streaming");
  const bubble = reply.querySelector(".bubble");
  const system = els.system.value.trim();
  const messages = system ? [{ role: "system", content: system }, ...state.history] : [...state.history];
  state.controller = new AbortController();
  setBusy(true);
  setStatus("Generating…");
  let answer = "";
  try {
    const response = await fetch("/api/chat", {
      method: "POST",
      headers: headers(),
      signal: state.controller.signal,
      body: JSON.stringify({
        model, messages, stream: true,
        options: { temperature: Number(els.temperature.value), num_predict: Number(els.numPredict.value) },
      }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    await readNdjson(response.body, (event) => {
      if (event.error) throw new Error(event.error);
      if (event.message && event.message.content) {
        answer += event.message.content;
        bubble.textContent = answer;
        els.messages.scrollTop = els.messages.scrollHeight;
      }
      if (event.done) {
        const seconds = event.eval_duration / 1e9;
        const rate = seconds > 0 ? (event.eval_count / seconds).toFixed(1) : "–";
        const meta = document.createElement("div");
        meta.className = "meta";
        meta.textContent = `${event.eval_count} tokens · ${rate} tok/s · ${event.done_reason}`;
        reply.append(meta);
        setStatus("Ready");
      }
    });
  } catch (err) {
    if (err.name === "AbortError") {
      setStatus("Stopped");
      const meta = document.createElement("div");
      meta.className = "meta";
      meta.textContent = "stopped";
      reply.append(meta);
    } else {
      reply.classList.add("error");
      bubble.textContent = answer ? `${answer}\n\n${err.message}` : err.message;
      setStatus(err.message, true);
    }
  } finally {
    reply.classList.remove("streaming");
    state.history.push({ role: "assistant", content: answer });
    state.controller = null;
    setBusy(false);
    els.prompt.focus();
  }
}

els.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = els.prompt.value.trim();
  if (!text || state.controller) return;
  els.prompt.value = "";
  els.prompt.style.height = "";
  send(text);
});

els.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    els.composer.requestSubmit();
  }
});

els.prompt.addEventListener("input", () => {
  els.prompt.style.height = "auto";
  els.prompt.style.height = `${Math.min(els.prompt.scrollHeight, 200)}px`;
});

els.stop.addEventListener("click", () => state.controller && state.controller.abort());

els.newChat.addEventListener("click", () => {
  if (state.controller) state.controller.abort();
  state.history = [];
  els.messages.querySelectorAll(".message").forEach((m) => m.remove());
  els.empty.hidden = false;
  setStatus("New chat");
  els.prompt.focus();
});

els.model.addEventListener("change", () => localStorage.setItem("yunque-model", els.model.value));
els.temperature.addEventListener("input", () => { els.temperatureValue.textContent = els.temperature.value; });
els.apiKey.addEventListener("change", () => {
  localStorage.setItem("yunque-api-key", els.apiKey.value);
  loadModels();
});

loadModels().catch((err) => setStatus(`Cannot reach the server: ${err.message}`, true));
