// The inclusion dashboard in Debian's headless Chromium (Playwright, executablePath): sign in
// on the dev page as LA staff, load /dashboard, screenshot it at desktop width and at 320 px,
// run axe-core (npm, injected into the page) at both, filter by a need type, download the CSV
// of what is shown. The page's own Content-Security-Policy stays on (only 'self' scripts), so
// a console error here would also catch a blocked script. Prints one JSON line.
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const { BASE, SHOTS_DIR, PERSON, CHROMIUM, NEED } = process.env;
const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"];
const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run"];
const errors = [];  // the dev sign-in page (not ours) has no favicon: its 404 is left out below
const browser = await chromium.launch({ executablePath: CHROMIUM || "/usr/bin/chromium", headless: true, args: FLAGS });

async function axe(page) {
  await page.evaluate(AXE);
  const results = await page.evaluate((tags) => window.axe.run(document, { runOnly: { type: "tag", values: tags } }), TAGS);
  return results.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length,
    targets: v.nodes.slice(0, 3).map((n) => n.target.join(" ")) }));
}

try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  const page = await context.newPage();
  page.on("console", (message) => { if (message.type() === "error") errors.push(`${message.text()} at ${message.location().url} on ${page.url()}`); });
  page.on("pageerror", (error) => errors.push(String(error)));
  page.on("response", (response) => { if (response.status() >= 400) errors.push(`${response.status()} ${response.url()}`); });
  await page.goto(`${BASE}/dashboard`);
  await page.waitForURL(/\/oauth\/sign-in\?/, { timeout: 20000 });
  await page.click(`#person-${PERSON}`);
  await page.waitForSelector("#figures[data-done]", { timeout: 30000 });
  const wide = () => page.evaluate(() => ({ overflow: document.documentElement.scrollWidth - window.innerWidth,
    widest: [...document.querySelectorAll("body *")].filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
      .slice(0, 5).map((e) => `${e.tagName}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`) }));
  const desktopWidth = await wide();
  const figures = await page.locator("section.figure").count();
  const canvases = await page.locator("section.figure canvas").count();
  await page.screenshot({ path: path.join(SHOTS_DIR, "dashboard-desktop.png"), fullPage: true });
  const desktop = await axe(page);

  await page.selectOption("#need", NEED);
  await page.click("button[type=submit]");
  await page.waitForFunction((need) => document.querySelector("#status").textContent.includes("Showing")
    && document.querySelector("section.figure .note") !== null, NEED, { timeout: 20000 });
  const firstTable = page.locator("section.figure table").first();
  const shownRows = await firstTable.locator("tbody tr").evaluateAll((rows) => rows.map((r) =>
    [...r.children].map((c) => c.textContent.replace("suppressed", "").trim())));
  const shownHeader = await firstTable.locator("thead th").allTextContents();
  const [download] = await Promise.all([page.waitForEvent("download"),
    page.locator("section.figure a.download").first().click()]);
  const csv = readFileSync(await download.path(), "utf8");

  await page.setViewportSize({ width: 320, height: 800 });
  await page.waitForTimeout(300);
  const narrowWidth = await wide();
  await page.screenshot({ path: path.join(SHOTS_DIR, "dashboard-320px.png"), fullPage: true });
  const narrow = await axe(page);
  console.log(JSON.stringify({ ok: true, figures, canvases, desktop, narrow, shownHeader, shownRows, csv,
    desktopWidth, narrowWidth, errors: errors.filter((e) => !e.includes("/favicon.ico on ") || !e.includes("/oauth/sign-in")) }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, error: String(error), errors }));
} finally {
  await browser.close();
}
