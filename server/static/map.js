// slidemap map page: discovers layers from /layers, shows them with Leaflet (served locally).
(function () {
  "use strict";
  var root = document.location.pathname.replace(/\/(map)?$/, "");
  var map = L.map("map", { zoomControl: true });
  var overlays = {}, bases = {};
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
      lg.classes.forEach(function (c) {
        html += '<span class="swatch" style="background:' + esc(c.color) + '"></span>' + esc(c.label) + "<br>";
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

  fetch(root + "/layers").then(function (r) { return r.json(); }).then(function (data) {
    var first = null, bounds = null;
    data.layers.forEach(function (lyr) {
      if (lyr.available === false || !lyr.tiles) { return; }  // e.g. no trained model, unreadable input
      // Continuous layers are upsampled by the browser past their native zoom; class layers are
      // asked from the server at every zoom (it renders them with nearest-neighbour cells), so
      // their class edges stay sharp instead of being smeared.
      var options = {
        minZoom: 0, maxZoom: Math.max(lyr.maxzoom + 3, 18),
        attribution: data.synthetic ? "SYNTHETIC data" : "slidemap",
        opacity: (lyr.kind === "imagery" || lyr.kind === "basemap") ? 1 : 0.75
      };
      if (!lyr.categorical) { options.maxNativeZoom = lyr.maxzoom; }
      var t = L.tileLayer(lyr.tiles, options);
      t.legendUrl = lyr.legend;
      // bases: the imagery first, else the hillshade made from the DEM
      if (lyr.kind === "imagery") { bases[lyr.title] = t; if (!first || first.isHillshade) { first = t; } }
      else if (lyr.kind === "basemap") { bases[lyr.title] = t; t.isHillshade = true; if (!first) { first = t; } }
      else { overlays[lyr.title] = t; }
      if (!bounds) { bounds = [[lyr.bounds[1], lyr.bounds[0]], [lyr.bounds[3], lyr.bounds[2]]]; }
    });
    if (!first) {  // no imagery and no DEM: start with the first overlay rather than a blank map
      var names = Object.keys(overlays);
      if (names.length) { first = overlays[names[0]]; }
    }
    if (first) { first.addTo(map); show(first); }
    // collapsed on small screens, so the list does not cover the map and its popups
    var control = L.control.layers(bases, overlays, { collapsed: window.innerWidth < 900 }).addTo(map);
    addInventories(control);
    map.on("overlayadd baselayerchange", function (e) { show(e.layer); });
    map.on("overlayremove", function (e) { hide(e.layer); });
    map.on("baselayerchange", function (e) {
      Object.keys(bases).forEach(function (k) { if (bases[k] !== e.layer) { hide(bases[k]); } });
    });
    if (bounds) { map.fitBounds(bounds); } else { map.setView([0, 0], 2); }
  });

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
    var url = root + "/point?lon=" + e.latlng.lng.toFixed(6) + "&lat=" + e.latlng.lat.toFixed(6);
    fetch(url).then(function (r) { return r.json(); }).then(function (p) {
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
