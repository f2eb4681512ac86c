// Drives the gateway's /dashboard page in Debian's headless Chromium with playwright-core, for
// gateway/tests/edge/dashboard.rs. One JSON line per event on stdout; the test answers on stdin.
//   node drive.cjs URL TOKEN SCREENSHOT SERVER
// 1. loads URL#token=TOKEN and waits until the page has rendered live data: prints
//    {"event":"ready","routes":[…],"servers":[…],"tenants":[…],"certificates":[…],"errors":[…]}
// 2. waits for the line "killed" on stdin, then for the page to mark SERVER down: prints
//    {"event":"down","ms":…,"errors":[…]} after saving a full-page screenshot to SCREENSHOT.
"use strict";
const { chromium } = require("playwright-core");
const readline = require("readline");

const [url, token, screenshot, server] = process.argv.slice(2);
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const errors = [];
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("requestfailed", (r) => errors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  await page.goto(`${url}#token=${encodeURIComponent(token)}`);
  await page.waitForSelector('body[data-ready="1"]', { timeout: 30000 });
  // A second poll gives the rates.
  await page.waitForFunction(() => !document.querySelector("#routes").textContent.includes("…"), null, { timeout: 30000 });
  const cells = (sel) => page.$$eval(sel, (els) => els.map((e) => e.textContent.trim()));
  say({
    event: "ready",
    routes: await cells("#routes tr td:first-child"),
    servers: await cells("#upstreams tr td:nth-child(2)"),
    tenants: await cells("#tenants tr td:first-child"),
    certificates: await cells("#certificates tr td"),
    token_in_url: page.url().includes("token="),
    errors,
  });
  if ((await nextLine()) !== "killed") throw new Error("expected killed");
  const t0 = Date.now();
  await page.waitForFunction(
    (s) => [...document.querySelectorAll("#upstreams tr")].some((tr) => tr.textContent.includes(s) && tr.querySelector("td.down")),
    server,
    { timeout: 60000, polling: 50 },
  );
  const ms = Date.now() - t0;
  await page.screenshot({ path: screenshot, fullPage: true });
  say({ event: "down", ms, errors });
  await browser.close();
  process.exit(0);
})().catch((e) => { say({ event: "error", message: String(e && e.stack || e) }); process.exit(1); });
