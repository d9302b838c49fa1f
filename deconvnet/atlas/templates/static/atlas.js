// deconvnet atlas: the arrow keys move between channels, Escape closes an enlarged image, and a form
// jumps to a channel by its number. No network requests: the pages work from disk (file://).
(function () {
  "use strict";

  function typing(target) {
    var tag = target && target.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (target && target.isContentEditable);
  }

  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey || typing(event.target)) {
      return;
    }
    var rel = event.key === "ArrowRight" ? "next" : event.key === "ArrowLeft" ? "prev" : null;
    if (rel) {
      var link = document.querySelector("a[rel~='" + rel + "']");
      if (link) {
        event.preventDefault();
        window.location.href = link.href;
      }
    } else if (event.key === "Escape" && window.location.hash.indexOf("#view-") === 0) {
      window.location.hash = "#e" + window.location.hash.slice(6);
    } else if (event.key === "/") {
      var input = document.querySelector("form.jump input");
      if (input) {
        event.preventDefault();
        input.focus();
      }
    }
  });

  Array.prototype.forEach.call(document.querySelectorAll("form.jump"), function (form) {
    // the channels that have a page, as ranges: "0-255" or "3,17-19"
    var ranges = form.getAttribute("data-channels").split(",").map(function (part) {
      var ends = part.split("-");
      return [parseInt(ends[0], 10), parseInt(ends[ends.length - 1], 10)];
    });
    function has(n) {
      return ranges.some(function (r) { return n >= r[0] && n <= r[1]; });
    }
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var value = form.querySelector("input").value.trim();
      var message = form.querySelector("output");
      if (/^\d+$/.test(value) && has(parseInt(value, 10))) {
        window.location.href = form.getAttribute("data-base") + parseInt(value, 10) + ".html";
      } else {
        message.textContent = value === "" ? "" : "channel " + value + " is not in this atlas";
      }
    });
  });
})();
