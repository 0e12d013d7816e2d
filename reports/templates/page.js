// The page's only script: legend hover highlights a chart's series; the page records what it drew
// (each chart's rendered size and number of marks), which the browser test reads.
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
    document.body.setAttribute("data-tables", String(document.querySelectorAll("table").length));
    document.body.setAttribute("data-ready", "1");
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", ready);
  } else {
    ready();
  }
})();
