// Opens rendered digests in headless Chromium and reports, as JSON on stdout, what a reader
// would run into: axe-core violations in light and dark mode, and whether the issue still
// fits a 375 px phone when the client strips every <style> element (inline styles stay).
//
//   node check.mjs FILE.html...                       report for each file
//   node check.mjs --screenshot OUT.png [--dark] [--width PX] [--height PX] [--no-style] FILE.html
//       a screenshot: the full page 600 px wide unless --width/--height say otherwise;
//       --no-style strips every <style> element first
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import puppeteer from 'puppeteer-core';

const require = createRequire(import.meta.url);
const axePath = require.resolve('axe-core/axe.min.js');
const PHONE = 375;

const args = process.argv.slice(2);
let shot = null;
let dark = false;
let width = 600;
let noStyle = false;
let height = null;
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--screenshot') shot = args[++i];
  else if (args[i] === '--dark') dark = true;
  else if (args[i] === '--width') width = Number(args[++i]);
  else if (args[i] === '--no-style') noStyle = true;
  else if (args[i] === '--height') height = Number(args[++i]);
  else files.push(args[i]);
}
if (files.length === 0) {
  console.error('usage: check.mjs [--screenshot OUT.png [--dark]] FILE.html...');
  process.exit(2);
}

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // A pipe, not a TCP debugging port: nothing listens on the network.
  pipe: true,
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});

async function open(file, width, scheme) {
  const page = await browser.newPage();
  // The digest needs nothing from the network; refuse anything it might ask for.
  await page.setRequestInterception(true);
  page.on('request', (r) => (r.url().startsWith('file:') ? r.continue() : r.abort()));
  await page.setViewport({ width, height: 800, deviceScaleFactor: 1 });
  await page.emulateMediaFeatures([{ name: 'prefers-color-scheme', value: scheme }]);
  await page.goto(pathToFileURL(file).href, { waitUntil: 'load' });
  return page;
}

async function axe(file, scheme) {
  const page = await open(file, 600, scheme);
  await page.addScriptTag({ path: axePath });
  const result = await page.evaluate(async () => {
    const r = await window.axe.run(document);
    return r.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.map((n) => ({ target: n.target.join(' '), summary: n.failureSummary })),
    }));
  });
  await page.close();
  return result;
}

async function stripped(file) {
  const page = await open(file, PHONE, 'light');
  const widths = await page.evaluate(() => {
    for (const s of document.querySelectorAll('style')) s.remove();
    const doc = document.documentElement;
    // Anything wider than the viewport, to name the culprit when it overflows.
    const wide = [...document.body.querySelectorAll('*')]
      .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 0.5)
      .slice(0, 5)
      .map((e) => `${e.tagName.toLowerCase()}.${e.className} (${Math.round(e.getBoundingClientRect().right)}px)`);
    return { scrollWidth: doc.scrollWidth, clientWidth: doc.clientWidth, wide };
  });
  await page.close();
  return widths;
}

try {
  if (shot) {
    const page = await open(files[0], width, dark ? 'dark' : 'light');
    if (noStyle) await page.evaluate(() => document.querySelectorAll('style').forEach((s) => s.remove()));
    if (height) await page.setViewport({ width, height, deviceScaleFactor: 1 });
    await page.screenshot({ path: shot, fullPage: !height });
    await page.close();
  } else {
    const report = [];
    for (const file of files) {
      report.push({
        file,
        light: await axe(file, 'light'),
        dark: await axe(file, 'dark'),
        phone_without_style: { viewport: PHONE, ...(await stripped(file)) },
      });
    }
    process.stdout.write(JSON.stringify(report, null, 1) + '\n');
  }
} finally {
  await browser.close();
}
