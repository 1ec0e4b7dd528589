// slidemap map page: discovers layers from /layers, shows them with Leaflet (served locally).
// The one map of slidemap: the dashboard shows this page in an iframe, pinning model versions with
// ?lsm=<version>&unet=<version> (each computed layer then comes from its TileJSON for that model,
// and /point asks for the same models). Tile counts, the layers and the last /point answer are on
// window.slidemapStatus / slidemapLayers / slidemapPoint for the browser tests.
(function () {
  "use strict";
  var root = document.location.pathname.replace(/\/(map)?$/, "");
  var map = L.map("map", { zoomControl: true });
  var overlays = {}, bases = {}, byId = {};
  var status = { loaded: 0, errors: 0, layers: {} };
  window.slidemapStatus = status;
  window.slidemapLayers = [];
  var query = new URLSearchParams(document.location.search);
  var SPEC = /^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$/;  // a model name or version, as the server takes it
  var pins = {};  // model kind -> the pinned name or version
  ["lsm", "unet"].forEach(function (k) { var v = query.get(k); if (v && SPEC.test(v)) { pins[k] = v; } });
  var KIND_OF = { detection: "unet", susceptibility: "lsm" };  // a computed layer's model kind
  var opacity = 0.75;
  var legendBox = document.getElementById("legend");
  var legends = {};  // legend URL -> its HTML, fetched once
  var shown = [];    // visible layers, in the order they were switched on (the last is drawn on top)

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  function legendHtml(lg) {
    var html = "<b>" + esc(lg.title) + "</b>" + (lg.units ? " (" + esc(lg.units) + ")" : "") + "<br>";
    if (lg.type === "categorical") {
      // susceptibility classes carry the model's upper breaks: "high (<= 0.62)", the last "(> ...)"
      var breaks = (lg.breaks && lg.breaks.length >= lg.classes.length - 1) ? lg.breaks : null;
      lg.classes.forEach(function (c, i) {
        var range = !breaks ? "" : (i < lg.classes.length - 1 ? " (\u2264 " + Number(breaks[i]).toPrecision(2) + ")"
                                                               : " (> " + Number(breaks[i - 1]).toPrecision(2) + ")");
        html += '<span class="swatch" style="background:' + esc(c.color) + '"></span>' + esc(c.label) + range + "<br>";
      });
    } else if (lg.type === "continuous") {
      var stops = lg.stops.map(function (s) { return s[1]; }).join(",");
      html += '<div class="ramp" style="background:linear-gradient(to right,' + esc(stops) + ')"></div>' +
        lg.min.toPrecision(3) + " &ndash; " + lg.max.toPrecision(3);
    }
    return html;
  }

  // One legend per visible layer, the top-most first.
  function drawLegends() {
    var parts = shown.slice().reverse().map(function (t) { return legends[t.legendUrl]; })
      .filter(function (h) { return h; });
    legendBox.innerHTML = parts.join('<hr class="sep">');
    legendBox.style.display = parts.length ? "block" : "none";
  }

  function show(t) {
    shown = shown.filter(function (x) { return x !== t; }).concat([t]);
    if (legends[t.legendUrl] === undefined && t.legendUrl) {
      legends[t.legendUrl] = null;
      fetch(t.legendUrl).then(function (r) { return r.json(); })
        .then(function (lg) { legends[t.legendUrl] = legendHtml(lg); drawLegends(); });
    }
    drawLegends();
  }

  function hide(t) {
    shown = shown.filter(function (x) { return x !== t; });
    drawLegends();
  }

  // A computed layer pinned to a model: its tiles and legend from the TileJSON of that model.
  function resolve(lyr) {
    var pin = lyr.computed ? pins[KIND_OF[lyr.kind]] : null;
    if (!pin || !lyr.tilejson) { return Promise.resolve(lyr); }
    return fetch(lyr.tilejson + "?model=" + encodeURIComponent(pin)).then(function (r) {
      if (!r.ok) { return Object.assign({}, lyr, { available: false }); }
      return r.json().then(function (tj) { return Object.assign({}, lyr, { tiles: tj.tiles[0], legend: tj.legend }); });
    }).catch(function () { return Object.assign({}, lyr, { available: false }); });
  }

  fetch(root + "/layers").then(function (r) { return r.json(); }).then(function (data) {
    return Promise.all(data.layers.map(resolve)).then(function (layers) { return { data: data, layers: layers }; });
  }).then(function (got) {
    var data = got.data, first = null, bounds = null;
    got.layers.forEach(function (lyr) {
      if (lyr.available === false || !lyr.tiles) { return; }  // e.g. no trained model, unreadable input
      // Continuous layers are upsampled by the browser past their native zoom; class layers are
      // asked from the server at every zoom (it renders them with nearest-neighbour cells), so
      // their class edges stay sharp instead of being smeared.
      var base = lyr.kind === "imagery" || lyr.kind === "basemap";
      var options = {
        minZoom: 0, maxZoom: Math.max(lyr.maxzoom + 3, 18),
        attribution: data.synthetic ? "SYNTHETIC data" : "slidemap",
        opacity: base ? 1 : opacity
      };
      if (!lyr.categorical) { options.maxNativeZoom = lyr.maxzoom; }
      var t = L.tileLayer(lyr.tiles, options);
      t.on("tileload", function () { status.loaded += 1; status.layers[lyr.id] = (status.layers[lyr.id] || 0) + 1; });
      t.on("tileerror", function () { status.errors += 1; });
      t.legendUrl = lyr.legend;
      window.slidemapLayers.push({ id: lyr.id, title: lyr.title, kind: lyr.kind, tiles: lyr.tiles, base: base });
      // bases: the imagery first, else the hillshade made from the DEM
      if (lyr.kind === "imagery") { bases[lyr.title] = t; if (!first || first.isHillshade) { first = t; } }
      else if (lyr.kind === "basemap") { bases[lyr.title] = t; t.isHillshade = true; if (!first) { first = t; } }
      else { overlays[lyr.title] = t; byId[lyr.id] = t; }
      if (!bounds) { bounds = [[lyr.bounds[1], lyr.bounds[0]], [lyr.bounds[3], lyr.bounds[2]]]; }
    });
    if (!first) {  // no imagery and no DEM: start with the first overlay rather than a blank map
      var names = Object.keys(overlays);
      if (names.length) { first = overlays[names[0]]; }
    }
    if (first) { first.addTo(map); show(first); }
    // and the layer people open: the susceptibility classes, else its probability, else detection
    var opened = ["susceptibility/classes", "susceptibility", "detection"].filter(function (id) { return byId[id]; })[0];
    if (opened && byId[opened] !== first) { byId[opened].addTo(map); show(byId[opened]); }
    // collapsed on small screens, so the list does not cover the map and its popups
    var control = L.control.layers(bases, overlays, { collapsed: window.innerWidth < 900 }).addTo(map);
    addInventories(control);
    addTools(bounds);
    map.on("overlayadd baselayerchange", function (e) { show(e.layer); });
    map.on("overlayremove", function (e) { hide(e.layer); });
    map.on("baselayerchange", function (e) {
      Object.keys(bases).forEach(function (k) { if (bases[k] !== e.layer) { hide(bases[k]); } });
    });
    if (bounds) { map.fitBounds(bounds); } else { map.setView([0, 0], 2); }
  });

  // Overlay opacity (the base stays opaque underneath), back to the region, and the tile count.
  function addTools(bounds) {
    var Tools = L.Control.extend({
      onAdd: function () {
        var div = L.DomUtil.create("div", "tools");
        div.innerHTML = '<label>Overlay opacity <input type="range" min="0" max="100" value="' +
          Math.round(opacity * 100) + '"></label> <button type="button">Fit to region</button>';
        L.DomEvent.disableClickPropagation(div);
        L.DomEvent.disableScrollPropagation(div);
        div.querySelector("input").addEventListener("input", function (e) {
          opacity = Number(e.target.value) / 100;
          Object.keys(overlays).forEach(function (k) { overlays[k].setOpacity(opacity); });
        });
        div.querySelector("button").addEventListener("click", function () { if (bounds) { map.fitBounds(bounds); } });
        return div;
      }
    });
    new Tools({ position: "bottomright" }).addTo(map);
    L.control.scale({ imperial: false, position: "bottomright" }).addTo(map);
  }

  // The inventories as vectors (sharp at every zoom): known landslides red, known non-landslides
  // blue points, detected landslides orange outlines; their legend is the layer names' swatches.
  var STYLE = {
    landslide: { color: "#e41a1c", weight: 1.5, fillOpacity: 0.25 },
    other: { color: "#377eb8", weight: 1.5, fillOpacity: 0.25 },
    detected: { color: "#ff7f00", weight: 2, fill: false }
  };
  function swatch(colour) { return '<span class="swatch" style="background:' + colour + '"></span>'; }
  function addInventories(control) {
    var asked = {};  // one request per source
    function get(source) {
      if (!asked[source]) {
        asked[source] = fetch(root + "/inventory/" + source + ".geojson")
          .then(function (r) { return r.ok ? r.json() : null; });
      }
      return asked[source];
    }
    [["known", true, "Known landslides"], ["known", false, "Known non-landslides"],
     ["detected", null, "Detected landslides"]].forEach(function (spec) {
      get(spec[0]).then(function (gj) {
          if (!gj) { return; }
          var feats = gj.features.filter(function (f) { return spec[1] === null || f.properties.label === spec[1]; });
          if (!feats.length) { return; }
          var style = spec[1] === null ? STYLE.detected : (spec[1] ? STYLE.landslide : STYLE.other);
          var lyr = L.geoJSON({ type: "FeatureCollection", features: feats }, {
            style: function () { return style; },
            pointToLayer: function (f, latlng) {
              return L.circleMarker(latlng, { radius: 4, color: "#222", weight: 1, fillColor: style.color, fillOpacity: 0.9 });
            }
          });
          control.addOverlay(lyr, swatch(style.color) + spec[2] + (gj.synthetic ? " (SYNTHETIC)" : "") +
                             " (" + feats.length + ")");
        });
    });
  }

  map.on("click", function (e) {
    var url = root + "/point?lon=" + e.latlng.lng.toFixed(6) + "&lat=" + e.latlng.lat.toFixed(6) +
      (pins.unet ? "&detection_model=" + encodeURIComponent(pins.unet) : "") +
      (pins.lsm ? "&susceptibility_model=" + encodeURIComponent(pins.lsm) : "");
    window.slidemapPoint = null;
    fetch(url).then(function (r) {
      return r.json().then(function (body) {
        window.slidemapPoint = { ok: r.ok, status: r.status, body: body };
        if (!r.ok) { throw new Error(r.status + ": " + (body.detail || "")); }
        return body;
      });
    }).catch(function (err) {
      if (!window.slidemapPoint) { window.slidemapPoint = { ok: false, error: String(err) }; }
      L.popup({ maxWidth: 320 }).setLatLng(e.latlng)
        .setContent('<div class="point">The tile server did not answer: ' + esc(err.message || err) + "</div>").openOn(map);
      return null;
    }).then(function (p) {
      if (!p) { return; }
      var rows = [];
      if (p.synthetic) { rows.push("<b>SYNTHETIC</b>"); }
      if (!p.inside) {
        rows.push("outside the region");
      } else {
        Object.keys(p.factors || {}).forEach(function (k) {
          var v = p.factors[k];
          if (v === null) { return; }  // no data here: nothing to read
          var named = (p.factor_classes || {})[k];
          rows.push(esc(k) + ": " + (named ? esc(named) : v.toPrecision(4) + " " + esc(p.units[k] || "")));
        });
      }
      if (p.detection_probability !== null && p.detection_probability !== undefined) {
        rows.push("detection probability: " + p.detection_probability.toFixed(3));
      }
      if (p.susceptibility_probability !== null && p.susceptibility_probability !== undefined) {
        rows.push("susceptibility: " + p.susceptibility_probability.toFixed(3) +
          (p.susceptibility_class_name ? " (" + esc(p.susceptibility_class_name) + ")" : ""));
      }
      L.popup({ maxWidth: 320 }).setLatLng(e.latlng)
        .setContent('<div class="point">' + (rows.join("<br>") || "no data here") + "</div>").openOn(map);
    });
  });
}());
