// The review queue's keyboard and next-item flow. Without this script the page still
// works: every item is a form that posts its decision and comes back to the queue.
"use strict";
(function () {
  document.documentElement.classList.add("js");
  const notice = document.getElementById("notice");
  const count = document.getElementById("count");
  const items = () => Array.from(document.querySelectorAll("article.item"));
  const current = () => document.querySelector("article.item.current");

  function open(item) {
    const was = current();
    if (was) was.classList.remove("current");
    if (!item) return;
    item.classList.add("current");
    item.focus({ preventScroll: true });
    item.scrollIntoView({ block: "nearest" });
  }

  function step(by) {
    const all = items();
    const at = all.indexOf(current());
    open(all[Math.min(all.length - 1, Math.max(0, at + by))]);
  }

  function say(text) {
    notice.textContent = text; // text, never markup
  }

  async function decide(form, decision) {
    const item = form.closest("article.item");
    const data = new URLSearchParams(new FormData(form));
    data.set("decision", decision);
    let response;
    try {
      response = await fetch(form.action, {
        method: "POST",
        body: data,
        headers: { accept: "application/json" },
        credentials: "same-origin",
      });
    } catch (error) {
      say("Could not reach the gateway; nothing was decided. Try again.");
      return;
    }
    const body = await response.json().catch(() => ({}));
    if (response.ok) {
      say(`Decided (${body.state}): ${item.dataset.reply}. The next item is open.`);
    } else if (response.status === 409) {
      say(body.error ? body.error.message : "Already decided.");
    } else {
      say(body.error ? body.error.message : `The gateway answered ${response.status}.`);
      return;
    }
    const next = item.nextElementSibling && item.nextElementSibling.matches("article.item")
      ? item.nextElementSibling
      : item.previousElementSibling;
    item.remove();
    count.textContent = String(items().length);
    open(next && next.matches("article.item") ? next : null);
  }

  document.addEventListener("submit", (event) => {
    const form = event.target.closest("form.decide");
    if (!form) return;
    event.preventDefault();
    const button = event.submitter;
    decide(form, button ? button.value : "approve");
  });

  document.addEventListener("click", (event) => {
    const item = event.target.closest("article.item");
    if (item && !item.classList.contains("current")) open(item);
  });

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const typing = event.target.closest("textarea, select, input");
    if (event.key === "Escape" && typing) {
      typing.blur();
      current() && current().focus();
      return;
    }
    if (typing) return;
    const item = current();
    const form = item && item.querySelector("form.decide");
    switch (event.key) {
      case "j": step(1); break;
      case "k": step(-1); break;
      case "a": if (form) decide(form, "approve"); break;
      case "r": if (form) { form.querySelector("select").focus(); say("Pick a reason, then press Enter or click Reject."); } break;
      case "c": if (form) form.querySelector("textarea").focus(); break;
      default: return;
    }
    event.preventDefault();
  });

  // Enter in the reason list rejects; Ctrl+Enter in the correction corrects.
  document.addEventListener("keydown", (event) => {
    const form = event.target.closest && event.target.closest("form.decide");
    if (!form || event.key !== "Enter") return;
    if (event.target.matches("select")) { event.preventDefault(); decide(form, "reject"); }
    if (event.target.matches("textarea") && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      decide(form, "correct");
    }
  });

  open(current() || items()[0]);
})();
