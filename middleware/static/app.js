// The chat page: a reference client of the public API, no build step, no dependencies.
//   POST /v1/chat/completions (stream: true)  the answer, streamed as server-sent events
//   POST /v1/feedback                         a thumbs up or down, with a reason
//   GET  /v1/replies/{id}                     a held reply's review, and a person's late answer
//
// A held reply (header X-HITL-Decision: hold) sends no text while a person decides, only
// SSE comments as heartbeats; then the released text (the approved original, the
// correction, or the fallback) and a final hitl chunk saying which ("released"). The page
// shows nothing of a held reply until that chunk says it was released.
"use strict";

(() => {
  const MODEL = "local";
  const POLL_MS = 2000;
  const POLL_LIMIT_MS = 10 * 60 * 1000;
  const DECIDED = ["approved", "rejected", "corrected", "expired", "failed"];

  const $ = (id) => document.getElementById(id);
  const form = $("ask");
  const question = $("question");
  const send = $("send");
  const messages = $("messages");
  const status = $("status");
  const keyBox = $("key-box");
  const keyInput = $("api-key");

  const history = [];
  const user = endUserId();
  let answers = 0;

  // The page follows the conversation as it grows (a streamed answer, its notice, its
  // thumbs), as chat apps do, while the reader is at the bottom. Scrolling up to read
  // stops following; scrolling back to the bottom, or asking again, resumes it.
  const NEAR_BOTTOM_PX = 24;
  let following = true;
  let followedTo = 0;
  const bottom = () => document.documentElement.scrollHeight - window.innerHeight;
  window.addEventListener(
    "scroll",
    () => {
      // At the bottom first: a page that got shorter clamps the scroll upward, which is
      // no reader scrolling up.
      if (window.scrollY >= bottom() - NEAR_BOTTOM_PX) {
        following = true;
        followedTo = window.scrollY;
      } else if (window.scrollY < followedTo - 2) {
        following = false;
      }
    },
    { passive: true },
  );
  // Every change to the conversation (text, notices, thumbs, late answers) is one place
  // to follow from, rather than a scroll call beside each of them.
  new MutationObserver(() => follow()).observe(messages, {
    subtree: true,
    childList: true,
    characterData: true,
    attributes: true,
    attributeFilter: ["hidden"],
  });

  function follow() {
    if (!following) return;
    // Instant: a smooth scroll's own steps would read as the reader scrolling up.
    if (bottom() > window.scrollY) window.scrollTo({ top: bottom(), behavior: "instant" });
    followedTo = window.scrollY;
  }

  keyInput.value = sessionStorage.getItem("hitl-api-key") || "";
  keyInput.addEventListener("change", () => {
    sessionStorage.setItem("hitl-api-key", keyInput.value.trim());
  });

  question.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = question.value.trim();
    if (!text || send.disabled) return;
    question.value = "";
    following = true;
    await ask(text);
    question.focus();
  });

  // -- asking ------------------------------------------------------------------------

  async function ask(text) {
    $("empty").hidden = true;
    addUserTurn(text);
    const turn = addAnswerTurn();
    history.push({ role: "user", content: text });
    setBusy(true);
    try {
      const reply = await streamAnswer(turn);
      if (reply === null) {
        history.pop();
        return;
      }
      // Only what the user was shown goes back as the conversation so far.
      if (reply.text) history.push({ role: "assistant", content: reply.text });
      else history.pop();
      finish(turn, reply);
    } finally {
      setBusy(false);
    }
  }

  async function streamAnswer(turn) {
    const headers = { "content-type": "application/json", accept: "text/event-stream" };
    const key = keyInput.value.trim();
    if (key) headers.authorization = `Bearer ${key}`;
    let response;
    try {
      response = await fetch("/v1/chat/completions", {
        method: "POST",
        headers,
        body: JSON.stringify({ model: MODEL, stream: true, messages: history, user }),
      });
    } catch {
      fail(turn, "The gateway could not be reached. Check the connection and try again.");
      return null;
    }
    if (!response.ok) {
      if (response.status === 401) {
        keyBox.hidden = false;
        keyInput.focus();
      }
      fail(turn, await errorText(response));
      return null;
    }
    const reply = {
      id: response.headers.get("x-hitl-reply-id"),
      token: response.headers.get("x-hitl-feedback-token"),
      text: "",
      hitl: null,
      held: response.headers.get("x-hitl-decision") === "hold",
    };
    const textBox = turn.querySelector(".text");
    // A held reply's text is kept here, unseen, until the final chunk says it was released.
    let kept = "";
    if (reply.held) waiting(turn);
    try {
      for await (const { data, comment } of serverSentEvents(response.body)) {
        if (data === null) {
          // A heartbeat: the reply waits for a person, so nothing sent so far was released.
          if (comment) {
            if (!reply.held) waiting(turn);
            reply.held = true;
            reply.text = "";
            kept = "";
          }
          continue;
        }
        if (data === "[DONE]") break;
        let chunk;
        try {
          chunk = JSON.parse(data);
        } catch {
          continue;
        }
        if (chunk.error) {
          fail(turn, chunk.error.message || "The answer broke off.");
          return null;
        }
        if (chunk.hitl) reply.hitl = chunk.hitl;
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && typeof delta.content === "string" && delta.content) {
          if (reply.held) {
            kept += delta.content;
          } else {
            reply.text += delta.content;
            render(textBox, reply.text);
          }
        }
      }
    } catch {
      fail(turn, "The answer broke off before it was complete. Please ask again.");
      return null;
    }
    if (reply.hitl) {
      reply.id = reply.hitl.reply_id || reply.id;
      reply.token = reply.hitl.feedback_token || reply.token;
      if (reply.hitl.decision === "hold" && !reply.held) {
        // Held after all (no header, no heartbeat): what streamed is unconfirmed.
        reply.held = true;
        kept = reply.text;
        waiting(turn);
      }
    }
    if (reply.held) {
      reply.released = (reply.hitl && reply.hitl.released) || null;
      reply.text = reply.released ? kept : "";
    }
    return reply;
  }

  // Server-sent events from a fetch body: yields each event's data field (null when it
  // has none) and whether it carried a comment line (a heartbeat).
  async function* serverSentEvents(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      let boundary;
      while ((boundary = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const lines = buffer.slice(0, boundary).split(/\r?\n/);
        buffer = buffer.slice(boundary).replace(/^\r?\n\r?\n/, "");
        const data = lines.filter((line) => line.startsWith("data:")).map((line) => line.slice(5).replace(/^ /, ""));
        const comment = lines.some((line) => line.startsWith(":"));
        if (data.length || comment) yield { data: data.length ? data.join("\n") : null, comment };
      }
      if (done) return;
    }
  }

  // -- after the answer --------------------------------------------------------------

  function finish(turn, reply) {
    const textBox = turn.querySelector(".text");
    const decision = reply.hitl ? reply.hitl.decision : null;
    if (reply.held || decision === "hold") {
      released(turn, reply);
      return;
    }
    if (!reply.text) render(textBox, "(The model sent an empty answer.)");
    textBox.setAttribute("aria-busy", "false");
    if (decision === "escalate") {
      notice(turn, "review", "This answer was sent to a person for review.");
      announce("Answer received. It was also sent to a person for review.");
    } else {
      announce("Answer received.");
    }
    if (reply.id && reply.token) enableVotes(turn, reply);
  }

  // While a held reply waits: a notice, no text, no thumbs (nobody has seen an answer yet).
  function waiting(turn) {
    const textBox = turn.querySelector(".text");
    textBox.hidden = true;
    textBox.replaceChildren();
    notice(turn, "hold waiting", "A person is checking this answer before you see it…");
    announce("A person is checking this answer before you see it.");
  }

  function released(turn, reply) {
    const how = reply.released;
    if (how === "original" || how === "correction") {
      const message =
        how === "original"
          ? "A person checked and approved this answer."
          : "A person checked this answer and corrected it.";
      show(turn, reply.text || "(The model sent an empty answer.)");
      notice(turn, "done", message);
      announce(message);
      if (reply.id && reply.token) enableVotes(turn, reply);
    } else if (how === "fallback") {
      const timedOut = Boolean(reply.hitl && reply.hitl.timed_out);
      const message = timedOut ? "Nobody could check this answer in time." : "A person could not confirm this answer.";
      show(turn, reply.text || "Please try again or contact support.");
      notice(turn, "hold", message);
      announce(message);
      // No thumbs on the fallback: it is not an answer. A person may still answer later.
      if (reply.id && reply.token) awaitLateAnswer(turn, reply, timedOut);
    } else if (reply.id && reply.token) {
      // The stream ended without a release (an older gateway): keep waiting, by polling.
      awaitDecision(turn, reply);
    } else {
      notice(turn, "hold", "A person could not confirm this answer. Please ask again later.");
      announce("A person could not confirm this answer.");
    }
  }

  // After the fallback: a person's answer that came later is shown below it, with thumbs.
  async function awaitLateAnswer(turn, reply, hint) {
    const late = turn.querySelector(".late");
    const title = late.querySelector(".late-title");
    const box = late.querySelector(".late-text");
    if (hint) {
      title.textContent = "If a specialist answers later, the answer appears here.";
      late.classList.add("pending");
      late.hidden = false;
    }
    const { answer } = await decisionOf(reply);
    if (!answer) {
      late.hidden = true;
      return;
    }
    title.textContent = "A specialist answered later:";
    render(box, answer.text);
    box.hidden = false;
    late.classList.remove("pending");
    late.hidden = false;
    announce(`A specialist answered later: ${answer.text}`);
    enableVotes(turn, reply);
  }

  // No release was streamed: the answer is shown only once the server says a person decided.
  async function awaitDecision(turn, reply) {
    const { answer, review } = await decisionOf(reply);
    if (answer) {
      const message =
        answer.source === "corrected"
          ? "A person checked this answer and corrected it."
          : "A person checked and approved this answer.";
      show(turn, answer.text);
      notice(turn, "done", message);
      announce(message);
      enableVotes(turn, reply);
    } else if (review && review.state !== "expired") {
      notice(turn, "hold", "A person could not confirm this answer. Please try again or contact support.");
      announce("A person could not confirm this answer.");
    } else {
      notice(turn, "hold", "Nobody could check this answer in time. Please ask again later.");
      announce("Nobody could check this answer in time.");
    }
  }

  // Polls GET /v1/replies/{id} (bounded) until a person's answer is there, or the review
  // ended without one. Resolves to {answer, review}; answer is null if none came.
  async function decisionOf(reply) {
    const started = Date.now();
    for (;;) {
      const view = await replyOf(reply);
      if (view && view.answer && typeof view.answer.text === "string") return view;
      if (view && view.review && DECIDED.includes(view.review.state)) return { answer: null, review: view.review };
      if (Date.now() - started >= POLL_LIMIT_MS) return { answer: null, review: null };
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }

  async function replyOf(reply) {
    try {
      const response = await fetch(`/v1/replies/${encodeURIComponent(reply.id)}`, {
        headers: { "x-hitl-feedback-token": reply.token, accept: "application/json" },
      });
      if (!response.ok) return null;
      return await response.json();
    } catch {
      return null;
    }
  }

  function show(turn, text) {
    const textBox = turn.querySelector(".text");
    render(textBox, text);
    textBox.hidden = false;
    textBox.setAttribute("aria-busy", "false");
  }

  // -- voting --------------------------------------------------------------------------

  function enableVotes(turn, reply) {
    const box = turn.querySelector(".feedback");
    const up = box.querySelector(".vote.up");
    const down = box.querySelector(".vote.down");
    const reasons = box.querySelector(".reasons");
    const thanks = box.querySelector(".thanks");
    const formId = `reasons-${turn.dataset.turn}`;
    reasons.id = formId;
    down.setAttribute("aria-controls", formId);
    for (const radio of reasons.querySelectorAll('input[type="radio"]')) {
      radio.name = `reason-${turn.dataset.turn}`;
    }
    if (reply.hitl && reply.hitl.ask_feedback) {
      box.querySelector(".prompt").textContent = "Did this answer help? Your vote teaches the gateway.";
    }
    box.hidden = false;

    const openReasons = (open) => {
      reasons.hidden = !open;
      down.setAttribute("aria-expanded", String(open));
    };

    up.addEventListener("click", async () => {
      openReasons(false);
      if (await vote(reply, { rating: "up" }, thanks)) {
        press(up, down);
        thanks.textContent = "Thanks! Glad it helped.";
      }
    });
    down.addEventListener("click", async () => {
      // The vote counts at once; a reason and a comment can follow.
      if (await vote(reply, { rating: "down" }, thanks)) {
        press(down, up);
        thanks.textContent = "Thanks. Tell us what was wrong, if you like.";
        openReasons(true);
        reasons.scrollIntoView({ block: "nearest", behavior: "smooth" });
        const first = reasons.querySelector('input[type="radio"]');
        if (first) first.focus({ preventScroll: true });
      }
    });
    reasons.addEventListener("submit", async (event) => {
      event.preventDefault();
      const chosen = reasons.querySelector('input[type="radio"]:checked');
      const comment = reasons.querySelector("textarea").value.trim();
      const body = { rating: "down" };
      if (chosen) body.reason = chosen.value;
      if (comment) body.comment = comment;
      if (await vote(reply, body, thanks)) {
        openReasons(false);
        thanks.textContent = "Thanks, your feedback was sent. It helps the gateway improve.";
        down.focus();
      }
    });
    reasons.querySelector(".cancel").addEventListener("click", () => {
      openReasons(false);
      down.focus();
    });
    reasons.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        openReasons(false);
        down.focus();
      }
    });
  }

  async function vote(reply, fields, thanks) {
    try {
      const response = await fetch("/v1/feedback", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ reply_id: reply.id, token: reply.token, ...fields }),
      });
      if (response.ok) return true;
      thanks.textContent = `Your vote was not saved: ${await errorText(response)}`;
    } catch {
      thanks.textContent = "Your vote was not saved: the gateway could not be reached.";
    }
    return false;
  }

  function press(on, off) {
    on.setAttribute("aria-pressed", "true");
    off.setAttribute("aria-pressed", "false");
  }

  // -- the page ------------------------------------------------------------------------

  function addUserTurn(text) {
    const item = $("user-turn").content.firstElementChild.cloneNode(true);
    item.querySelector(".text").textContent = text;
    messages.append(item);
  }

  function addAnswerTurn() {
    answers += 1;
    const item = $("answer-turn").content.firstElementChild.cloneNode(true);
    item.dataset.turn = String(answers);
    messages.append(item);
    return item;
  }

  // Plain text with `code` spans; built from text nodes, never from HTML.
  function render(box, text) {
    const parts = text.split("`");
    box.replaceChildren(
      ...parts.map((part, i) => {
        if (i % 2 === 0 || i === parts.length - 1) return document.createTextNode(i % 2 ? `\`${part}` : part);
        const code = document.createElement("code");
        code.textContent = part;
        return code;
      }),
    );
  }

  function notice(turn, kind, text) {
    const box = turn.querySelector(".notice");
    box.className = `notice ${kind}`;
    box.textContent = text;
    box.hidden = false;
  }

  function fail(turn, message) {
    const textBox = turn.querySelector(".text");
    textBox.setAttribute("aria-busy", "false");
    textBox.textContent = "";
    notice(turn, "error", message);
    announce(message);
  }

  function announce(text) {
    status.textContent = text;
  }

  function setBusy(busy) {
    send.disabled = busy;
    send.textContent = busy ? "Answering…" : "Send";
    form.setAttribute("aria-busy", String(busy));
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch {
      // not JSON: fall through to the status line
    }
    return `the gateway answered HTTP ${response.status}.`;
  }

  function endUserId() {
    // One anonymous id per browser, so the gateway can tell easy-to-please users apart.
    try {
      let id = localStorage.getItem("hitl-user");
      if (!id) {
        const random = crypto.randomUUID
          ? crypto.randomUUID()
          : Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
        id = `web-${random}`;
        localStorage.setItem("hitl-user", id);
      }
      return id;
    } catch {
      return undefined;
    }
  }
})();
