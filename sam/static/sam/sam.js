// Progressive enhancement only: pages work without it.
// The Content-Security-Policy (sam/settings.py) allows no inline script and no on*= attribute:
// behaviour goes here, attached to data-* attributes of the templates.
// Elements with data-refresh="<seconds>" reload their own content from the same URL while the
// page says it is still working (e.g. a report whose job is running).
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-refresh]").forEach(function (el) {
    var seconds = parseInt(el.getAttribute("data-refresh"), 10) || 3;
    var timer = setInterval(function () {
      fetch(window.location.href, {headers: {"X-Requested-With": "fetch"}})
        .then(function (r) { return r.text(); })
        .then(function (html) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById(el.id);
          if (!fresh) { return; }
          el.innerHTML = fresh.innerHTML;
          if (!fresh.hasAttribute("data-refresh")) { clearInterval(timer); el.removeAttribute("data-refresh"); }
        })
        .catch(function () {});
    }, seconds * 1000);
  });

  // data-select-on-focus: a read-only field whose whole text is selected on focus (copying).
  document.querySelectorAll("[data-select-on-focus]").forEach(function (el) {
    el.addEventListener("focus", function () { el.select(); });
  });
});
