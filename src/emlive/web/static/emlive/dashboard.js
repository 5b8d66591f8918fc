// emlive dashboard: draw the Plotly figures the server sends as JSON (#plot-figures) into the
// .plot divs, again whenever htmx swaps in new figures (the divs stay, so zoom is kept). On the
// session page the figures decide the plots: a figure without a div (a step's first results
// arrived) gets one in #plots, a div whose figure is gone is removed.
(function () {
  "use strict";
  var drawnMarker = null;

  function draw() {
    var node = document.getElementById("plot-figures");
    if (!node || !window.Plotly) return;
    var holder = document.getElementById("plot-data");
    var marker = holder ? holder.getAttribute("data-marker") : "static";
    if (marker === drawnMarker) return;
    var figures = JSON.parse(node.textContent);
    var linkTemplate = document.body.getAttribute("data-exposure-url");
    var container = document.getElementById("plots");
    if (container) {
      Array.from(container.querySelectorAll(".plot[data-plot]")).forEach(function (div) {
        if (!(div.getAttribute("data-plot") in figures)) { window.Plotly.purge(div); div.remove(); }
      });
    }
    Object.keys(figures).forEach(function (key) {
      var div = document.getElementById("plot-" + key);
      if (!div && container) {
        div = document.createElement("div");
        div.className = "plot";
        div.id = "plot-" + key;
        div.setAttribute("data-plot", key);
        container.appendChild(div);
      }
      if (!div) return;
      var figure = figures[key];
      Plotly.react(div, figure.data, figure.layout, { responsive: true, displaylogo: false });
      if (linkTemplate && !div.getAttribute("data-linked")) {
        div.setAttribute("data-linked", "1");
        div.on("plotly_click", function (event) {
          var id = event.points && event.points[0] && event.points[0].customdata;
          if (Number.isInteger(id)) window.location.href = linkTemplate.replace("/0/", "/" + id + "/");
        });
      }
    });
    drawnMarker = marker;
    document.body.setAttribute("data-plots-drawn", String(Number(document.body.getAttribute("data-plots-drawn") || 0) + 1));
  }

  document.addEventListener("DOMContentLoaded", draw);
  document.addEventListener("htmx:afterSettle", draw);
})();
