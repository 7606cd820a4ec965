/* satapi's map page: pick a provider, layer and date, draw an area, fetch, analyse (streamed),
   compare two dates (change mask) and chart a time series. Talks only to this service. */
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const KEY_STORAGE = "satapi.apiKey";
  const LONG_EDGE = 512; // pixels of the longer side of analysed images
  const MAX_SERIES = 24; // the service's default max_timeseries_dates
  const SERIES = ["vegetation", "water", "bare", "built", "cloud"];

  const state = {
    apiKey: sessionStorage.getItem(KEY_STORAGE) || "",
    providers: [],
    layers: [],
    tiles: null,
    overlay: null,
    overlayUrl: null,
    drawing: false,
    // A polygon drawn with "Draw polygon": its GeoJSON (sent as `geometry` instead of the bbox).
    geometry: null,
    polygonDrawing: false,
    busy: false,
    pendingKey: null,
  };

  // --- HTTP ------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(message, code, status) {
      super(message);
      this.code = code;
      this.status = status;
    }
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (state.apiKey) h["Authorization"] = "Bearer " + state.apiKey;
    return h;
  }

  async function errorFrom(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    if (body && body.error) return new ApiError(body.error, body.code, response.status);
    return new ApiError("HTTP " + response.status + " from " + response.url, "http_" + response.status, response.status);
  }

  // fetch() with the API key; a 401 asks for a key, then tries once more.
  async function call(path, options) {
    options = options || {};
    for (let attempt = 0; attempt < 2; attempt++) {
      const response = await fetch(path, Object.assign({}, options, { headers: headers(options.headers) }));
      if (response.ok) return response;
      const error = await errorFrom(response);
      if (response.status === 401 && attempt === 0) {
        await askForKey(error.message);
        continue;
      }
      throw error;
    }
    throw new ApiError("The API key was not accepted.", "unauthorized", 401);
  }

  async function getJson(path) {
    return (await call(path)).json();
  }

  async function postJson(path, body, accept) {
    const response = await call(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: accept || "application/json" },
      body: JSON.stringify(body),
    });
    return response;
  }

  // Writes a sentence whose `backticked` parts are code (the service's messages use them).
  function withCode(element, text) {
    element.textContent = "";
    text.split("`").forEach((part, i) => {
      if (!part) return;
      if (i % 2) {
        const code = document.createElement("code");
        code.textContent = part;
        element.appendChild(code);
      } else {
        element.appendChild(document.createTextNode(part));
      }
    });
  }

  function askForKey(message) {
    const form = $("key-form");
    form.hidden = false;
    withCode(form.querySelector("p"), message || "This service needs an API key.");
    $("api-key").focus();
    if (!state.pendingKey) {
      state.pendingKey = new Promise((resolve) => {
        form.onsubmit = (event) => {
          event.preventDefault();
          state.apiKey = $("api-key").value.trim();
          sessionStorage.setItem(KEY_STORAGE, state.apiKey);
          form.hidden = true;
          state.pendingKey = null;
          if (state.tiles) state.tiles.redraw();
          resolve();
        };
      });
    }
    return state.pendingKey;
  }

  // Reads a POST's text/event-stream body (EventSource cannot POST or send a key).
  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") name = value;
          else if (field === "data") data.push(value);
        }
        if (data.length) yield { name: name, data: JSON.parse(data.join("\n")) };
      }
    }
  }

  // --- UI helpers ------------------------------------------------------------------------------

  // The results card over the map shows the text, the legend and the chart, when there are any.
  function updateResults() {
    $("results").hidden = !($("text").textContent || !$("legend").hidden || $("chart").firstChild);
  }

  function setStatus(text) {
    $("status").textContent = text || "";
  }

  // Results of an earlier request go when a new one starts or fails: they answer another question.
  function clearResults() {
    $("text").textContent = "";
    $("chart").textContent = "";
    if (state.overlay) map.removeLayer(state.overlay);
    state.overlay = null;
    hideLegend();
  }

  function showError(error) {
    const box = $("error");
    if (!error) {
      box.hidden = true;
      box.textContent = "";
      return;
    }
    clearResults();
    box.hidden = false;
    withCode(box, error.message + " ");
    if (error.code) {
      const code = document.createElement("code");
      code.textContent = "(" + error.code + ")";
      box.appendChild(code);
    }
    setStatus("");
  }

  function option(select, value, label) {
    const o = document.createElement("option");
    o.value = value;
    o.textContent = label || value;
    select.appendChild(o);
    return o;
  }

  function busy(flag) {
    state.busy = flag;
    for (const id of ["fetch", "analyze", "compare", "series"]) $(id).disabled = flag;
  }

  async function run(label, work) {
    if (state.busy) return;
    busy(true);
    showError(null);
    clearResults();
    setStatus(label + "…");
    try {
      await work();
    } catch (error) {
      showError(error instanceof ApiError ? error : new ApiError(String(error.message || error), "", 0));
    } finally {
      busy(false);
    }
  }

  // --- map -------------------------------------------------------------------------------------

  const map = L.map("map", { worldCopyJump: true }).setView([30, 0], 2);
  const area = L.rectangle([[0, 0], [0, 0]], { color: "#ff7800", weight: 2, fill: false });

  // Tiles come from satapi's XYZ endpoint; fetched with the key (an <img> cannot send one).
  const KeyedTiles = L.GridLayer.extend({
    createTile: function (coords, done) {
      const tile = document.createElement("img");
      tile.alt = "";
      const url = L.Util.template(this.options.url, coords);
      fetch(url, { headers: headers() })
        .then(async (response) => {
          if (!response.ok) throw await errorFrom(response);
          return response.blob();
        })
        .then((blob) => {
          tile.onload = () => {
            URL.revokeObjectURL(tile.src);
            done(null, tile);
          };
          tile.src = URL.createObjectURL(blob);
          tile.classList.add("satapi-tile");
        })
        .catch((error) => {
          if (error.status === 401) askForKey(error.message);
          else setStatus("Tile: " + error.message);
          done(error, tile);
        });
      return tile;
    },
  });

  function tileUrl() {
    const provider = $("provider").value;
    const params = new URLSearchParams();
    if ($("layer").value) params.set("layer", $("layer").value);
    const time = currentTime();
    if (time) params.set("time", time);
    return "/api/tiles/" + encodeURIComponent(provider) + "/{z}/{x}/{y}.png?" + params.toString();
  }

  function refreshTiles() {
    if (state.tiles) map.removeLayer(state.tiles);
    if (!$("provider").value) return;
    state.tiles = new KeyedTiles({ url: tileUrl(), tileSize: 256, maxZoom: 18 });
    state.tiles.addTo(map);
  }

  function bbox() {
    const values = ["west", "south", "east", "north"].map((id) => parseFloat($(id).value));
    if (values.some((v) => !isFinite(v))) {
      throw new ApiError("Draw an area on the map, or type its west, south, east and north.", "no_area", 0);
    }
    const [west, south, east, north] = values;
    if (!(west < east)) throw new ApiError("West must be less than East (both in degrees of longitude).", "invalid_bbox", 0);
    if (!(south < north)) throw new ApiError("South must be less than North (both in degrees of latitude).", "invalid_bbox", 0);
    if (west < -180 || east > 180) throw new ApiError("West and East are longitudes, from -180 to 180.", "invalid_bbox", 0);
    if (south < -90 || north > 90) throw new ApiError("South and North are latitudes, from -90 to 90.", "invalid_bbox", 0);
    return values;
  }

  function setBbox(values, fit) {
    ["west", "south", "east", "north"].forEach((id, i) => {
      $(id).value = Number(values[i]).toFixed(5).replace(/\.?0+$/, "");
    });
    showArea(fit);
  }

  function showArea(fit) {
    let b;
    try {
      b = bbox();
    } catch (e) {
      return;
    }
    area.setBounds([[b[1], b[0]], [b[3], b[2]]]);
    if (!map.hasLayer(area)) area.addTo(map);
    if (fit) map.fitBounds(area.getBounds(), { padding: [30, 30] });
  }

  function size(b) {
    const dx = b[2] - b[0];
    const dy = b[3] - b[1];
    if (dx >= dy) return { width: LONG_EDGE, height: Math.max(16, Math.round((LONG_EDGE * dy) / dx)) };
    return { width: Math.max(16, Math.round((LONG_EDGE * dx) / dy)), height: LONG_EDGE };
  }

  // Drawing: press "Draw on map", then drag a box.
  let drawStart = null;
  $("draw").addEventListener("click", () => {
    state.drawing = !state.drawing;
    $("draw").classList.toggle("active", state.drawing);
    map.getContainer().classList.toggle("drawing", state.drawing);
    if (state.drawing) map.dragging.disable();
    else map.dragging.enable();
  });
  map.on("mousedown", (e) => {
    if (!state.drawing) return;
    drawStart = e.latlng;
    area.setBounds(L.latLngBounds(drawStart, drawStart));
    if (!map.hasLayer(area)) area.addTo(map);
  });
  map.on("mousemove", (e) => {
    if (drawStart) area.setBounds(L.latLngBounds(drawStart, e.latlng));
  });
  map.on("mouseup", (e) => {
    if (!drawStart) return;
    const b = L.latLngBounds(drawStart, e.latlng);
    drawStart = null;
    state.drawing = false;
    $("draw").classList.remove("active");
    map.getContainer().classList.remove("drawing");
    map.dragging.enable();
    clearPolygon();
    const wrap = (lon) => Math.max(-180, Math.min(180, lon));
    const clampLat = (lat) => Math.max(-90, Math.min(90, lat));
    setBbox([wrap(b.getWest()), clampLat(b.getSouth()), wrap(b.getEast()), clampLat(b.getNorth())], false);
  });
  for (const id of ["west", "south", "east", "north"]) {
    $(id).addEventListener("change", () => {
      clearPolygon();
      showArea(true);
    });
  }

  // Polygon: press "Draw polygon", click each corner, double-click (or click the first corner)
  // to close it. Requests then send it as `geometry`; the box fields show its bounds.
  const polygon = L.polygon([], { color: "#ff7800", weight: 2, fillOpacity: 0.08 });
  let corners = [];
  function clearPolygon() {
    state.geometry = null;
    corners = [];
    if (map.hasLayer(polygon)) map.removeLayer(polygon);
    $("clear-polygon").hidden = true;
  }
  function stopPolygonDrawing() {
    state.polygonDrawing = false;
    $("draw-polygon").classList.remove("active");
    map.getContainer().classList.remove("drawing");
    map.doubleClickZoom.enable();
  }
  function finishPolygon() {
    stopPolygonDrawing();
    if (corners.length < 3) {
      clearPolygon();
      showError(new ApiError("A polygon needs at least three corners.", "invalid_geometry", 0));
      return;
    }
    const ring = corners.map((c) => [Number(c.lng.toFixed(6)), Number(c.lat.toFixed(6))]);
    ring.push(ring[0]);
    state.geometry = { type: "Polygon", coordinates: [ring] };
    const b = polygon.getBounds();
    setBbox([b.getWest(), b.getSouth(), b.getEast(), b.getNorth()], false);
    if (map.hasLayer(area)) map.removeLayer(area);
    $("clear-polygon").hidden = false;
    setStatus("Polygon of " + corners.length + " corners: fetch, analyse, compare or chart it.");
  }
  $("draw-polygon").addEventListener("click", () => {
    if (state.polygonDrawing) return finishPolygon();
    clearPolygon();
    state.polygonDrawing = true;
    $("draw-polygon").classList.add("active");
    map.getContainer().classList.add("drawing");
    map.doubleClickZoom.disable();
    polygon.setLatLngs([]).addTo(map);
    setStatus("Click each corner; double-click, or click the first corner, to close the polygon.");
  });
  $("clear-polygon").addEventListener("click", () => {
    clearPolygon();
    showArea(false);
  });
  map.on("click", (e) => {
    if (!state.polygonDrawing) return;
    if (corners.length >= 3 && map.latLngToContainerPoint(corners[0]).distanceTo(e.containerPoint) < 8) {
      return finishPolygon();
    }
    corners.push(e.latlng);
    polygon.setLatLngs(corners);
  });
  map.on("dblclick", () => {
    if (state.polygonDrawing) finishPolygon();
  });

  async function showOverlay(imageId, b) {
    const response = await call("/api/images/" + imageId);
    const blob = await response.blob();
    if (state.overlay) map.removeLayer(state.overlay);
    if (state.overlayUrl) URL.revokeObjectURL(state.overlayUrl);
    state.overlayUrl = URL.createObjectURL(blob);
    state.overlay = L.imageOverlay(state.overlayUrl, [[b[1], b[0]], [b[3], b[2]]], {
      opacity: 0.9,
      className: "satapi-overlay",
    }).addTo(map);
    state.overlay.getElement().dataset.imageId = imageId;
  }

  // --- pickers ---------------------------------------------------------------------------------

  function currentLayer() {
    return state.layers.find((l) => l.name === $("layer").value) || null;
  }

  function currentTime() {
    const layer = currentLayer();
    if (layer && layer.times.length) return $("time").value;
    return $("time-free").value.trim();
  }

  async function loadProviders() {
    const answer = await getJson("/api/providers");
    state.providers = answer.providers;
    const select = $("provider");
    select.textContent = "";
    for (const p of answer.providers) {
      const o = option(select, p.name, p.title ? p.title + " (" + p.name + ")" : p.name);
      if (p.default) o.selected = true;
    }
    await loadLayers();
  }

  async function loadLayers() {
    const provider = state.providers.find((p) => p.name === $("provider").value);
    $("attribution").textContent = provider && provider.attribution ? "Imagery: " + provider.attribution : "";
    const select = $("layer");
    select.textContent = "";
    state.layers = [];
    try {
      const answer = await getJson("/api/providers/" + encodeURIComponent(provider.name) + "/layers");
      state.layers = answer.layers;
    } catch (error) {
      showError(error);
    }
    for (const layer of state.layers) {
      const o = option(select, layer.name, layer.title ? layer.title : layer.name);
      if (layer.name === provider.default_layer) o.selected = true;
    }
    if (!state.layers.length && provider) option(select, provider.default_layer);
    layerChanged(true);
  }

  function layerChanged(fit) {
    const layer = currentLayer();
    const times = layer ? layer.times.slice() : [];
    for (const id of ["time", "before", "after"]) {
      const select = $(id);
      select.textContent = "";
      for (const t of times.slice().reverse()) option(select, t);
      select.hidden = !times.length;
    }
    $("time-free").hidden = times.length > 0;
    if (times.length) {
      $("time").value = layer.default_time && times.includes(layer.default_time) ? layer.default_time : times[times.length - 1];
      $("after").value = times[times.length - 1];
      $("before").value = times[0];
    }
    if (fit && layer && layer.bbox) {
      const b = layer.bbox;
      // Room on the right for the results card.
      map.fitBounds([[b[1], b[0]], [b[3], b[2]]], { paddingTopLeft: [20, 20], paddingBottomRight: [400, 20] });
      // A small layer (a scene) is a sensible first area; a global one is not.
      if ((b[2] - b[0]) * (b[3] - b[1]) <= 100) setBbox(b, false);
    }
    refreshTiles();
  }

  $("provider").addEventListener("change", () => loadLayers());
  $("layer").addEventListener("change", () => layerChanged(true));
  $("time").addEventListener("change", refreshTiles);
  $("time-free").addEventListener("change", refreshTiles);

  // --- actions ---------------------------------------------------------------------------------

  // The request's area: the drawn polygon (`geometry`) or the box; `bounds` is where its
  // image goes on the map (not sent).
  function imageFields() {
    const b = bbox();
    const where = state.geometry ? { geometry: state.geometry } : { bbox: b };
    const fields = Object.assign({ provider: $("provider").value, layer: $("layer").value }, where, size(b));
    Object.defineProperty(fields, "bounds", { value: b, enumerable: false });
    return fields;
  }

  // "area 12.3 km², 4,567 px inside, 4 tiles" for an answer's image with an `area`.
  function areaText(image) {
    const a = image && image.area;
    if (!a) return "";
    const tiles = a.tiles > 1 ? ", " + a.tiles + " tiles" : "";
    return "; area " + a.area_km2.toLocaleString() + " km², " + a.pixels.toLocaleString() + " px inside" + tiles;
  }

  // The date of Fetch and Analyse: the picked one, or the clearest in a window when asked.
  function addWhen(fields) {
    if ($("clearest-on").checked) {
      const start = $("clearest-start").value;
      const end = $("clearest-end").value;
      if (!start || !end) throw new ApiError("Give the first and last day of the window for the clearest date.", "no_window", 0);
      const spec = { window: start + "/" + end };
      const maxCloud = parseFloat($("clearest-max-cloud").value);
      if (isFinite(maxCloud)) spec.max_cloud = maxCloud / 100;
      fields.clearest = spec;
    } else {
      const time = currentTime();
      if (time) fields.time = time;
    }
    return fields;
  }

  function chosenText(answer) {
    return answer.selection && answer.selection.chosen ? ", clearest date " + answer.selection.chosen : "";
  }

  $("clearest-on").addEventListener("change", () => {
    $("clearest").hidden = !$("clearest-on").checked;
  });

  function analysisFields(fields) {
    fields.analyzer = $("analyzer").value;
    const prompt = $("prompt").value.trim();
    if (prompt) fields.prompt = prompt;
    return fields;
  }

  $("fetch").addEventListener("click", () =>
    run("Fetching", async () => {
      const fields = addWhen(imageFields());
      const answer = await (await postJson("/api/images", fields)).json();
      await showOverlay(answer.image.id, fields.bounds);
      hideLegend();
      setStatus(
        "Image " + answer.image.width + "×" + answer.image.height + chosenText(answer) + areaText(answer.image) + (answer.image.cached ? " (from the store)" : "") + "."
      );
    })
  );

  // Streams an analysis: status stages, then the text as it is written, then the result.
  async function stream(path, body, onResult) {
    const response = await postJson(path, body, "text/event-stream");
    const text = $("text");
    text.textContent = "";
    $("chart").textContent = "";
    hideLegend();
    let result = null;
    for await (const event of events(response)) {
      if (event.name === "status") {
        const retry = event.data.attempt ? ", attempt " + event.data.attempt + " of " + event.data.attempts : "";
        setStatus(event.data.stage + (event.data.side ? " (" + event.data.side + ")" : "") + retry + "…");
      } else if (event.name === "progress") {
        setStatus("tiles " + event.data.done + " of " + event.data.total + (event.data.side ? " (" + event.data.side + ")" : "") + "…");
      } else if (event.name === "selection") {
        setStatus("chose " + (event.data.chosen || "the clearest date") + (event.data.side ? " (" + event.data.side + ")" : ""));
      } else if (event.name === "delta") {
        text.textContent += event.data.text;
        text.scrollTop = text.scrollHeight;
        updateResults();
      } else if (event.name === "result") {
        result = event.data;
      } else if (event.name === "error") {
        throw new ApiError(event.data.error, event.data.code, 0);
      }
    }
    if (!result) throw new ApiError("The stream ended without a result.", "stream_ended", 0);
    await onResult(result);
  }

  $("analyze").addEventListener("click", () =>
    run("Analysing", async () => {
      const fields = addWhen(analysisFields(imageFields()));
      await stream("/api/vision/analyze_satellite_stream", fields, async (result) => {
        await showOverlay(result.image.id, fields.bounds);
        hideLegend();
        setStatus("Analysed by " + result.analysis.analyzer + (result.analysis.model ? " (" + result.analysis.model + ")" : "") + chosenText(result) + areaText(result.image) + ".");
      });
    })
  );

  $("compare").addEventListener("click", () =>
    run("Comparing", async () => {
      const fields = analysisFields(imageFields());
      const layer = currentLayer();
      if (!layer || !layer.times.length) {
        throw new ApiError("This layer has no dates to compare.", "no_dates", 0);
      }
      fields.before = { time: $("before").value };
      fields.after = { time: $("after").value };
      await stream("/api/comparison/analyze_stream", fields, async (result) => {
        const mask = result.images.change_mask;
        if (mask) {
          await showOverlay(mask.id, fields.bounds);
          showLegend(result.analysis.metrics);
        } else {
          await showOverlay(result.images.after.id, fields.bounds);
          hideLegend();
        }
        setStatus("Compared " + fields.before.time + " → " + fields.after.time + ".");
      });
    })
  );

  function hideLegend() {
    $("legend").hidden = true;
    updateResults();
  }

  function showLegend(metrics) {
    const legend = $("legend");
    legend.textContent = "";
    const title = document.createElement("strong");
    const changed = metrics && typeof metrics.changed_fraction === "number" ? metrics.changed_fraction : null;
    title.textContent = "Change mask" + (changed === null ? "" : ": " + (changed * 100).toFixed(1) + " % changed");
    legend.appendChild(title);
    for (const [css, label] of [
      ["green", "became vegetation"],
      ["magenta", "lost vegetation"],
      ["blue", "became water"],
      ["yellow", "other change"],
      ["grey", "unchanged (dimmed)"],
      ["stripes", "cloud or no data"],
    ]) {
      const row = document.createElement("div");
      const swatch = document.createElement("span");
      swatch.className = "swatch " + css;
      row.appendChild(swatch);
      row.appendChild(document.createTextNode(label));
      legend.appendChild(row);
    }
    legend.hidden = false;
    updateResults();
  }

  $("series").addEventListener("click", () =>
    run("Building the time series", async () => {
      const fields = imageFields();
      const layer = currentLayer();
      if (!layer || !layer.times.length) {
        throw new ApiError("This layer has no dates for a time series.", "no_dates", 0);
      }
      fields.times = layer.times.slice(-MAX_SERIES);
      fields.width = Math.min(fields.width, 256);
      fields.height = Math.min(fields.height, 256);
      const answer = await (await postJson("/api/timeseries", fields)).json();
      drawChart(answer.points);
      const failed = answer.points.filter((p) => p.error).length;
      setStatus(answer.points.length + " dates" + (failed ? ", " + failed + " failed" : "") + ".");
    })
  );

  // A small SVG line chart of the class fractions over time.
  function drawChart(points) {
    const NS = "http://www.w3.org/2000/svg";
    const W = 340, H = 170, L0 = 34, R0 = 8, T0 = 8, B0 = 28;
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "class fractions over time");
    const el = (name, attrs, text) => {
      const node = document.createElementNS(NS, name);
      for (const k in attrs) node.setAttribute(k, attrs[k]);
      if (text !== undefined) node.textContent = text;
      svg.appendChild(node);
      return node;
    };
    const n = points.length;
    const x = (i) => L0 + (n === 1 ? (W - L0 - R0) / 2 : (i * (W - L0 - R0)) / (n - 1));
    const y = (v) => T0 + (1 - v) * (H - T0 - B0);
    el("line", { class: "axis", x1: L0, y1: y(0), x2: W - R0, y2: y(0) });
    el("line", { class: "axis", x1: L0, y1: y(0), x2: L0, y2: y(1) });
    for (const v of [0, 0.5, 1]) {
      el("text", { x: L0 - 4, y: y(v) + 3, "text-anchor": "end" }, (v * 100).toFixed(0) + "%");
    }
    points.forEach((p, i) => {
      if (i === 0 || i === n - 1 || n <= 4) {
        const anchor = n === 1 ? "middle" : i === 0 ? "start" : i === n - 1 ? "end" : "middle";
        el("text", { x: x(i), y: H - 10, "text-anchor": anchor }, p.time.slice(0, 10));
      }
    });
    for (const name of SERIES) {
      const coords = [];
      points.forEach((p, i) => {
        const v = p.metrics ? p.metrics[name + "_fraction"] : undefined;
        if (typeof v === "number") coords.push(x(i).toFixed(1) + "," + y(v).toFixed(1));
      });
      if (!coords.length) continue;
      el("polyline", { class: "line c-" + name, points: coords.join(" ") });
      for (const c of coords) {
        const [cx, cy] = c.split(",");
        el("circle", { class: "c-" + name, cx: cx, cy: cy, r: 2.5, fill: "white", "stroke-width": 1.5 });
      }
    }
    points.forEach((p, i) => {
      if (p.error) el("text", { x: x(i) - 3, y: y(0.5), fill: "#b00020" }, "×");
    });
    const chart = $("chart");
    chart.textContent = "";
    const title = document.createElement("strong");
    title.textContent = "Share of the area by class, per date";
    chart.appendChild(title);
    chart.appendChild(svg);
    const key = document.createElement("div");
    key.className = "key";
    for (const name of SERIES) {
      const item = document.createElement("span");
      item.className = "c-" + name;
      item.textContent = name;
      key.appendChild(item);
    }
    chart.appendChild(key);
    updateResults();
  }

  // --- start -----------------------------------------------------------------------------------

  run("Loading providers", async () => {
    await loadProviders();
    setStatus("Draw an area, then fetch, analyse, compare or chart it.");
  });

  window.satapiViewer = { map: map, state: state };
})();
