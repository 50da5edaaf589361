// Renders /openapi.json as a readable reference. Text only (textContent), no HTML injection.
"use strict";

const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

const AUTH = {
  adminKey: "admin key", adminBearer: "admin key", clientKey: "client key (if set)",
  uiBasic: "UI Basic auth (if set)", pushSecret: "push secret",
};

function authOf(op, doc) {
  const sec = op.security ?? doc.security ?? [];
  const names = new Set();
  for (const req of sec) for (const k of Object.keys(req)) names.add(AUTH[k] || k);
  return names.size ? [...names].join(" or ") : "no auth";
}

function schemaText(schema, doc) {
  if (!schema) return null;
  if (schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return JSON.stringify({ [name]: doc.components.schemas[name] }, null, 1);
  }
  return JSON.stringify(schema, null, 1);
}

function render(doc) {
  const main = document.getElementById("reference");
  const toc = document.getElementById("toc");
  main.replaceChildren();
  const byTag = new Map();
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags && op.tags[0]) || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push({ path, method, op });
    }
  }
  for (const [tag, ops] of byTag) {
    const section = el("section");
    section.id = "tag-" + tag;
    section.append(el("h2", null, tag));
    const link = el("a", null, tag);
    link.href = "#tag-" + tag;
    toc.append(link);
    for (const { path, method, op } of ops) {
      const box = el("article", "op");
      const line = el("div", "op-line");
      line.append(el("span", "method " + method, method), el("span", "path", path), el("span", "summary", op.summary || ""), el("span", "auth", authOf(op, doc)));
      box.append(line);
      if (op.description) box.append(el("p", "desc", op.description));
      const dl = el("dl");
      for (const p of op.parameters || []) {
        dl.append(el("dt", null, `${p.in} ${p.name}${p.required ? " *" : ""}`), el("dd", null, JSON.stringify(p.schema || {})));
      }
      for (const [code, r] of Object.entries(op.responses || {})) {
        dl.append(el("dt", null, code), el("dd", null, r.description || ""));
      }
      box.append(dl);
      const body = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
      const text = body && schemaText(body.schema, doc);
      if (text) {
        const details = el("details");
        details.append(el("summary", null, "request body"), el("pre", "schema", text));
        box.append(details);
      }
      section.append(box);
    }
    main.append(section);
  }
}

fetch("/openapi.json")
  .then((r) => r.json())
  .then(render)
  .catch((e) => {
    document.getElementById("reference").replaceChildren(el("p", null, "Could not load /openapi.json: " + e));
  });
