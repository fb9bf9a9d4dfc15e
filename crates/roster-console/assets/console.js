// Roster console: live updates. The page is complete without this file;
// it follows /ui/events (server-sent events, id = revision) and re-fetches
// the live part of the page (#live) when an area the page shows changed.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  function say(text) { if (status) status.textContent = text; }

  // Lease TTLs count down between updates.
  function arm(root) {
    var now = Date.now();
    root.querySelectorAll("[data-ttl]").forEach(function (el) {
      el.setAttribute("data-deadline", String(now + 1000 * Number(el.getAttribute("data-ttl"))));
    });
  }
  setInterval(function () {
    var now = Date.now();
    document.querySelectorAll("[data-deadline]").forEach(function (el) {
      var s = Math.max(0, Math.round((Number(el.getAttribute("data-deadline")) - now) / 1000));
      el.textContent = s + " s";
    });
  }, 1000);
  if (live) arm(live);

  if (!live || !window.EventSource) return;
  var areas = (live.getAttribute("data-areas") || "").split(" ").filter(Boolean);
  if (areas.length === 0) return;

  say("connecting…");
  var busy = false, again = false, rev = 0;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, { headers: { "X-Roster-Live": "1", "X-Roster-Rev": String(rev) }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        // Keep keyboard focus on the control that had it, if it is still there.
        var focused = document.activeElement && document.activeElement.id;
        live.innerHTML = html;
        arm(live);
        if (focused && live.contains(document.getElementById(focused))) document.getElementById(focused).focus();
        live.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () { say("update failed; retrying"); })
      .then(function () { busy = false; if (again) { again = false; refresh(); } });
  }

  // From the revision the page was read at; a reconnect resumes from the
  // last event's id (Last-Event-ID), which the browser sends by itself.
  var es = new EventSource("/ui/events?since=" + encodeURIComponent(live.getAttribute("data-since") || ""));
  es.addEventListener("hello", function (e) {
    say("live · revision " + e.lastEventId);
    // Something changed between reading the page and opening the stream.
    var since = Number(live.getAttribute("data-since") || 0);
    if (Number(e.lastEventId) > since) { rev = Number(e.lastEventId); refresh(); }
  });
  es.addEventListener("change", function (e) {
    var d = JSON.parse(e.data);
    rev = Math.max(rev, d.rev);
    say("live · revision " + d.rev);
    if (areas.indexOf("all") >= 0 || d.areas.some(function (a) { return areas.indexOf(a) >= 0; })) refresh();
  });
  es.addEventListener("resync", function () { say("live · resynced"); refresh(); });
  es.onerror = function () { say("reconnecting…"); };
  // A page left for another keeps no stream open: over HTTP/1.1 a browser
  // allows six connections per host, and streams of pages it keeps for
  // "back" would hold them, stalling the next page's load. Coming back to
  // such a page re-reads it.
  window.addEventListener("pagehide", function () { es.close(); });
  window.addEventListener("pageshow", function (e) { if (e.persisted) location.reload(); });
  if (areas.indexOf("all") >= 0) setInterval(refresh, 2000);
})();
