// Runs axe-core in headless Chromium over pages of a built site.
// Usage: node axe-site.mjs SITE_DIR PATH... (paths like /issues/1/)
// The site is served from SITE_DIR on a loopback port; each page is checked with the light
// and the dark colour scheme. Prints one line per page and scheme, then the violations;
// exits 1 if there is any.
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import puppeteer from "puppeteer-core";

const require = createRequire(import.meta.url);
const axeSource = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const [root, ...pages] = process.argv.slice(2);

const types = { ".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8", ".xml": "application/atom+xml" };
const server = http.createServer((req, res) => {
  let rel = decodeURIComponent(new URL(req.url, "http://x").pathname);
  if (rel.endsWith("/")) rel += "index.html";
  const file = path.join(root, path.normalize(rel));
  if (!file.startsWith(path.resolve(root)) || !fs.existsSync(file)) {
    res.writeHead(404, { "content-type": types[".html"] });
    res.end(fs.readFileSync(path.join(root, "404.html")));
    return;
  }
  res.writeHead(200, { "content-type": types[path.extname(file)] || "application/octet-stream" });
  res.end(fs.readFileSync(file));
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const base = `http://127.0.0.1:${server.address().port}`;

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let failed = 0;
try {
  for (const scheme of ["light", "dark"]) {
    for (const p of pages) {
      const page = await browser.newPage();
      await page.emulateMediaFeatures([{ name: "prefers-color-scheme", value: scheme }]);
      // Only the local server: a page that reaches for the network is a bug.
      await page.setRequestInterception(true);
      page.on("request", (r) => (r.url().startsWith(base) ? r.continue() : r.abort()));
      await page.goto(base + p, { waitUntil: "load" });
      await page.evaluate(axeSource);
      const result = await page.evaluate(() => axe.run(document));
      const v = result.violations;
      console.log(`${p} (${scheme}): ${v.length} violations`);
      for (const x of v) {
        failed++;
        console.log(`  ${x.id} [${x.impact}]: ${x.help}`);
        for (const n of x.nodes.slice(0, 5)) console.log(`    ${n.target.join(" ")}: ${n.failureSummary.replace(/\n/g, " ")}`);
      }
      await page.close();
    }
  }
} finally {
  await browser.close();
  server.close();
}
process.exit(failed ? 1 : 0);
