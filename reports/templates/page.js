// The page's only script: legend hover highlights a chart's series; the page records what it drew
// (each chart's rendered size and number of marks) and anything cut off at the window's width
// (a table or code block wider than its box, text outside its chart), which the browser test reads.
(function () {
  "use strict";
  var errors = [];
  window.addEventListener("error", function (event) {
    errors.push(String(event.message));
    document.body.setAttribute("data-errors", String(errors.length));
  });
  function highlight(figure) {
    var items = figure.querySelectorAll(".legend li[data-series]");
    items.forEach(function (item) {
      item.addEventListener("mouseenter", function () {
        var name = item.getAttribute("data-series");
        figure.classList.add("focus");
        figure.querySelectorAll("svg [data-series]").forEach(function (el) {
          if (el.getAttribute("data-series") === name) { el.classList.add("on"); }
        });
      });
      item.addEventListener("mouseleave", function () {
        figure.classList.remove("focus");
        figure.querySelectorAll(".on").forEach(function (el) { el.classList.remove("on"); });
      });
    });
  }
  function ready() {
    var drawn = 0;
    document.querySelectorAll("figure.chart").forEach(function (figure) {
      highlight(figure);
      var svg = figure.querySelector("svg.chart-svg");
      if (!svg) { return; }
      var box = svg.getBoundingClientRect();
      var marks = svg.querySelectorAll(".mark, polyline.line").length;
      svg.setAttribute("data-rendered", Math.round(box.width) + "x" + Math.round(box.height));
      svg.setAttribute("data-marks", String(marks));
      if (box.width > 0 && box.height > 0 && marks > 0) { drawn += 1; }
    });
    document.body.setAttribute("data-charts-drawn", String(drawn));
    document.body.setAttribute("data-cut-off", cutOff().join(" | "));
    document.body.setAttribute("data-tables", String(document.querySelectorAll("table").length));
    document.body.setAttribute("data-ready", "1");
  }
  function describe(el) {
    var chart = el.closest("figure.chart");
    return (chart ? "chart " + chart.getAttribute("data-chart") + ": " : "") + el.tagName.toLowerCase() +
      (el.className && typeof el.className === "string" ? "." + el.className.split(" ").join(".") : "");
  }
  function cutOff() {
    var found = [];
    var root = document.documentElement;
    if (root.scrollWidth > root.clientWidth + 1) {
      found.push("page " + root.scrollWidth + "px wide in a " + root.clientWidth + "px window");
    }
    document.querySelectorAll(".table-wrap, pre, .legend, .recommend").forEach(function (el) {
      var shown = el.getClientRects().length > 0 && !el.closest("details:not([open])");
      if (shown && el.scrollWidth > el.clientWidth + 1) {
        found.push(describe(el) + " " + el.scrollWidth + "px in " + el.clientWidth + "px");
      }
    });
    document.querySelectorAll("svg.chart-svg").forEach(function (svg) {
      var frame = svg.getBoundingClientRect();
      svg.querySelectorAll("text").forEach(function (text) {
        var box = text.getBoundingClientRect();  // after transforms (rotated axis labels)
        if (box.left < frame.left - 1 || box.top < frame.top - 1 || box.right > frame.right + 1 ||
            box.bottom > frame.bottom + 1) {
          found.push(describe(text) + " '" + text.textContent + "' outside its chart");
        }
      });
    });
    return found;
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", ready);
  } else {
    ready();
  }
})();
