// Starts ReDoc on /api/redoc/ (sam/templates/sam/api/redoc.html) under the site's
// Content-Security-Policy. Loaded before ReDoc's bundle, with this response's CSP nonce, because:
// - ReDoc builds its styles as <style> elements, some while its bundle loads: every <style>
//   created through document.createElement gets the nonce (style-src allows only that nonce);
//   styles in markup (e.g. HTML in the schema's descriptions) stay blocked;
// - its sidebar credit shows a logo from Redocly's CDN: sam loads nothing from the internet, so
//   that image gets an empty address and ReDoc hides it (the credit's text stays).
(function () {
  "use strict";
  var nonce = document.currentScript && document.currentScript.nonce;
  var createElement = document.createElement;
  function local(address) {
    return /^https:\/\/cdn\.redoc\.ly\//.test(String(address)) ? "" : address;
  }
  document.createElement = function (tagName) {
    var element = createElement.apply(document, arguments);
    var tag = String(tagName).toLowerCase();
    if (tag === "style" && nonce) {
      element.setAttribute("nonce", nonce);
    } else if (tag === "img") {
      // React sets an image's address twice: as an attribute, then as the src property.
      var setAttribute = element.setAttribute;
      element.setAttribute = function (name, value) {
        return setAttribute.call(element, name, String(name).toLowerCase() === "src" ? local(value) : value);
      };
      var src = Object.getOwnPropertyDescriptor(HTMLImageElement.prototype, "src");
      Object.defineProperty(element, "src", {
        configurable: true,
        get: function () { return src.get.call(element); },
        set: function (value) { src.set.call(element, local(value)); }
      });
    }
    return element;
  };
  document.addEventListener("DOMContentLoaded", function () {
    var container = document.getElementById("redoc-container");
    var settings = JSON.parse(container.getAttribute("data-settings") || "{}");
    if (nonce) { settings.nonce = nonce; }
    Redoc.init(container.getAttribute("data-spec-url"), settings, container);
  });
})();
