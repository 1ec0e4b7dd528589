// slidemap map page: discovers layers from /layers, shows them with Leaflet (served locally).
(function () {
  "use strict";
  var root = document.location.pathname.replace(/\/(map)?$/, "");
  var map = L.map("map", { zoomControl: true });
  var overlays = {}, bases = {};
  var legendBox = document.getElementById("legend");

  function showLegend(url) {
    fetch(url).then(function (r) { return r.json(); }).then(function (lg) {
      var html = "<b>" + lg.title + "</b>" + (lg.units ? " (" + lg.units + ")" : "") + "<br>";
      if (lg.type === "categorical") {
        lg.classes.forEach(function (c) {
          html += '<span class="swatch" style="background:' + c.color + '"></span>' + c.label + "<br>";
        });
      } else if (lg.type === "continuous") {
        var stops = lg.stops.map(function (s) { return s[1]; }).join(",");
        html += '<div class="ramp" style="background:linear-gradient(to right,' + stops + ')"></div>' +
          lg.min.toPrecision(3) + " &ndash; " + lg.max.toPrecision(3);
      }
      legendBox.innerHTML = html;
    });
  }

  fetch(root + "/layers").then(function (r) { return r.json(); }).then(function (data) {
    var first = null, bounds = null;
    data.layers.forEach(function (lyr) {
      if (lyr.available === false || !lyr.tiles) { return; }  // e.g. no trained model, unreadable input
      var t = L.tileLayer(lyr.tiles, {
        minZoom: 0, maxZoom: Math.max(lyr.maxzoom + 3, 18), maxNativeZoom: lyr.maxzoom,
        attribution: data.synthetic ? "SYNTHETIC data" : "slidemap", opacity: lyr.kind === "imagery" ? 1 : 0.75
      });
      t.legendUrl = lyr.legend;
      if (lyr.kind === "imagery") { bases[lyr.title] = t; if (!first) { first = t; } }
      else { overlays[lyr.title] = t; }
      if (!bounds) { bounds = [[lyr.bounds[1], lyr.bounds[0]], [lyr.bounds[3], lyr.bounds[2]]]; }
    });
    if (first) { first.addTo(map); }
    L.control.layers(bases, overlays, { collapsed: false }).addTo(map);
    map.on("overlayadd baselayerchange", function (e) { if (e.layer.legendUrl) { showLegend(e.layer.legendUrl); } });
    if (bounds) { map.fitBounds(bounds); } else { map.setView([0, 0], 2); }
  });

  map.on("click", function (e) {
    var url = root + "/point?lon=" + e.latlng.lng.toFixed(6) + "&lat=" + e.latlng.lat.toFixed(6);
    fetch(url).then(function (r) { return r.json(); }).then(function (p) {
      var rows = [];
      if (p.synthetic) { rows.push("<b>SYNTHETIC</b>"); }
      Object.keys(p.factors || {}).forEach(function (k) {
        var v = p.factors[k];
        rows.push(k + ": " + (v === null ? "&ndash;" : v.toPrecision(4)) + " " + (p.units[k] || ""));
      });
      if (p.detection_probability !== null && p.detection_probability !== undefined) {
        rows.push("detection probability: " + p.detection_probability.toFixed(3));
      }
      if (p.susceptibility_probability !== null && p.susceptibility_probability !== undefined) {
        rows.push("susceptibility: " + p.susceptibility_probability.toFixed(3) +
          (p.susceptibility_class_name ? " (" + p.susceptibility_class_name + ")" : ""));
      }
      L.popup().setLatLng(e.latlng).setContent(rows.join("<br>") || "outside the region").openOn(map);
    });
  });
}());
