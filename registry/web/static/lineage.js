// The lineage graph's pan and zoom: drag to pan, the wheel or the buttons to zoom, "fit" for the whole graph.
// Without this file the graph is shown at full size in a scrolling box, and every node is still a link.
"use strict";

(function () {
  var ZOOM_STEP = 1.25;
  var DRAG_THRESHOLD = 4; // pixels a pointer moves before a press becomes a drag (and no longer a click)

  function numbers(text) {
    return text.trim().split(/[\s,]+/).map(Number);
  }

  function setUp(frame) {
    var svg = frame.querySelector("svg");
    if (!svg) return;
    var full = numbers(svg.getAttribute("viewBox")); // x, y, w, h of the whole graph
    var rootX = Number(svg.dataset.rootX) || full[2] / 2;
    var rootY = Number(svg.dataset.rootY) || full[3] / 2;
    var tools = document.querySelector("[data-lineage-tools]");
    var view = null; // {x, y, w, h}: the viewBox, always of the frame's aspect ratio (so no letterboxing)

    frame.classList.add("pannable");
    svg.setAttribute("width", "100%");
    svg.setAttribute("height", "100%");
    if (tools) tools.hidden = false;

    function frameSize() {
      return { w: Math.max(frame.clientWidth, 1), h: Math.max(frame.clientHeight, 1) };
    }

    function apply() {
      svg.setAttribute("viewBox", [view.x, view.y, view.w, view.h].map(function (v) {
        return Math.round(v * 10) / 10;
      }).join(" "));
    }

    // Full size (one graph pixel per screen pixel), centred on (cx, cy).
    function atFullSize(cx, cy) {
      var size = frameSize();
      view = { x: cx - size.w / 2, y: cy - size.h / 2, w: size.w, h: size.h };
      apply();
    }

    // The whole graph, never magnified beyond full size.
    function fit() {
      var size = frameSize();
      var w = Math.max(size.w, full[2], full[3] * size.w / size.h);
      var h = w * size.h / size.w;
      view = { x: full[0] + full[2] / 2 - w / 2, y: full[1] + full[3] / 2 - h / 2, w: w, h: h };
      apply();
    }

    // Zoom by ``factor`` (> 1: out) keeping the graph point under (fx, fy) (fractions of the frame) in place.
    function zoom(factor, fx, fy) {
      var size = frameSize();
      var most = Math.max(full[2], full[3] * size.w / size.h, size.w) * 4;
      var least = size.w / 8;
      var w = Math.min(most, Math.max(least, view.w * factor));
      var scale = w / view.w;
      var px = view.x + fx * view.w, py = view.y + fy * view.h;
      view = { x: px - fx * w, y: py - fy * view.h * scale, w: w, h: view.h * scale };
      apply();
    }

    function start() {
      var size = frameSize();
      if (full[2] <= size.w && full[3] <= size.h) fit();
      else atFullSize(rootX, rootY);
    }

    if (tools) {
      tools.addEventListener("click", function (event) {
        var button = event.target.closest("[data-zoom]");
        if (!button) return;
        var action = button.dataset.zoom;
        if (action === "in") zoom(1 / ZOOM_STEP, 0.5, 0.5);
        else if (action === "out") zoom(ZOOM_STEP, 0.5, 0.5);
        else if (action === "fit") fit();
        else if (action === "root") atFullSize(rootX, rootY);
      });
    }

    svg.addEventListener("wheel", function (event) {
      event.preventDefault();
      var rect = svg.getBoundingClientRect();
      var delta = event.deltaMode === 1 ? event.deltaY * 16 : event.deltaY;
      zoom(Math.exp(delta * 0.0015), (event.clientX - rect.left) / rect.width, (event.clientY - rect.top) / rect.height);
    }, { passive: false });

    var press = null; // {id, x, y, view, dragging}
    var justDragged = false;
    svg.addEventListener("pointerdown", function (event) {
      if (event.button !== 0) return;
      justDragged = false;
      press = { id: event.pointerId, x: event.clientX, y: event.clientY, view: view, dragging: false };
    });
    svg.addEventListener("pointermove", function (event) {
      if (!press || event.pointerId !== press.id) return;
      var dx = event.clientX - press.x, dy = event.clientY - press.y;
      if (!press.dragging) {
        if (Math.abs(dx) < DRAG_THRESHOLD && Math.abs(dy) < DRAG_THRESHOLD) return;
        press.dragging = true;
        frame.classList.add("dragging");
        svg.setPointerCapture(event.pointerId);
      }
      var rect = svg.getBoundingClientRect();
      view = { x: press.view.x - dx * press.view.w / rect.width, y: press.view.y - dy * press.view.h / rect.height,
               w: press.view.w, h: press.view.h };
      apply();
    });
    function release(event) {
      if (!press || event.pointerId !== press.id) return;
      justDragged = press.dragging;
      press = null;
      frame.classList.remove("dragging");
    }
    svg.addEventListener("pointerup", release);
    svg.addEventListener("pointercancel", release);
    // A drag that ends on a node is not a click on it.
    svg.addEventListener("click", function (event) {
      if (justDragged) {
        event.preventDefault();
        event.stopPropagation();
        justDragged = false;
      }
    }, true);

    window.addEventListener("resize", function () {
      var size = frameSize();
      view = { x: view.x, y: view.y, w: view.w, h: view.w * size.h / size.w };
      apply();
    });
    start();
  }

  function init() {
    document.querySelectorAll("[data-lineage]").forEach(setUp);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
