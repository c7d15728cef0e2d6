// Keyboard shortcuts and time spent on the labeling page. No other script, nothing remote.
(function () {
  "use strict";
  var shown = Date.now();
  var form = document.getElementById("vote-form");
  if (form) {
    form.addEventListener("submit", function () {
      document.getElementById("time-spent").value = String(Date.now() - shown);
    });
  }
  var keys = { a: "choose-a", b: "choose-b", t: "choose-tie", n: "choose-both-bad", s: "skip", u: "undo" };
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT" && target.type !== "radio")) return;
    var key = event.key.toLowerCase();
    if (key >= "1" && key <= "5") {
      var level = document.getElementById("confidence-" + key);
      if (level) { level.checked = true; event.preventDefault(); }
      return;
    }
    var button = keys[key] && document.getElementById(keys[key]);
    if (button) { event.preventDefault(); button.click(); }
  });
})();
