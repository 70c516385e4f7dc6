// Custody web UI: live regions.
//
// A page names its topic in <body data-live="…">. Each "refresh" message from
// /live/<topic> makes this script fetch the page again and swap its [data-region]
// elements (matched by id). Nothing from the event stream itself is ever inserted:
// all markup comes from the server, which escapes what sensors report.
(function () {
  'use strict';
  var topic = document.body && document.body.getAttribute('data-live');
  if (!topic || !window.EventSource || !window.fetch || !window.DOMParser) return;
  var indicator = document.getElementById('live-state');
  var busy = false;
  var again = false;

  function mark(state) {
    if (!indicator) return;
    indicator.textContent = state;
    indicator.setAttribute('data-state', state);
  }

  function focusedIn(el) {
    var a = document.activeElement;
    return a && a !== document.body && el.contains(a);
  }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, { credentials: 'same-origin', headers: { 'X-Custody-Refresh': '1' } })
      .then(function (r) {
        if (r.redirected || !r.ok) throw new Error('status ' + r.status);
        return r.text();
      })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, 'text/html');
        var regions = document.querySelectorAll('[data-region]');
        for (var i = 0; i < regions.length; i++) {
          var old = regions[i];
          if (!old.id) continue;
          // Never pull a form out from under someone typing in it.
          if (focusedIn(old)) { again = true; continue; }
          var fresh = doc.getElementById(old.id);
          if (fresh) old.replaceWith(document.importNode(fresh, true));
        }
        document.body.setAttribute('data-refreshed', String(Date.now()));
        mark('live');
      })
      .catch(function () { mark('stale'); })
      .then(function () {
        busy = false;
        if (again) { again = false; setTimeout(refresh, 1000); }
      });
  }

  // The digest the page was rendered at: a change since then refreshes at once.
  var version = document.body.getAttribute('data-live-version') || '';
  var source = new EventSource('/live/' + topic + (version ? '?v=' + version : ''));
  source.addEventListener('refresh', refresh);
  source.onopen = function () { mark('live'); };
  source.onerror = function () {
    mark(source.readyState === EventSource.CLOSED ? 'offline' : 'reconnecting');
  };
})();
