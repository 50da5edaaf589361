// switchboard: the DOM builders every page shares (compare, dashboard, timeline). Elements are
// made with createElement and string children become text nodes, so nothing a server or a model
// sends is ever parsed as HTML. Loaded before the page scripts; exposes `window.SwitchboardDom`.
(function () {
  'use strict';

  const SVG_NS = 'http://www.w3.org/2000/svg';

  /** Skips the children a conditional expression leaves out. */
  function present(c) {
    return c !== null && c !== undefined && c !== false;
  }

  /**
   * An HTML element. `class` sets the class name, `text` the text content; `true` makes an
   * empty attribute, and `null`, `undefined` or `false` leave one out.
   */
  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) if (present(c)) e.append(c);
    return e;
  }

  /** An SVG element; `null` or `undefined` attributes are left out. */
  function svg(tag, attrs, ...children) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) e.setAttribute(k, String(v));
    for (const c of children) if (present(c)) e.append(c);
    return e;
  }

  window.SwitchboardDom = Object.freeze({ h, svg, SVG_NS });
})();
