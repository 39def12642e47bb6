// page.mjs - the page blip2d serves at GET / (daemon/page/), in headless
// Chromium (Debian's) driven by playwright-core (run by
// tests/test_http_node.py): pick the photo, watch the caption stream in,
// ask a question.  Prints one JSON object of what it saw.
//   node page.mjs BASE_URL IMAGE QUESTION
import { chromium } from "playwright-core";

const [base, image, question] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const out = { errors: [], external: [], csp_violations: [] };
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(300000);
  page.on("pageerror", (e) => out.errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") out.errors.push(m.text()); });
  page.on("request", (r) => { if (!r.url().startsWith(base) && !r.url().startsWith("blob:") &&
                                  !r.url().startsWith("data:")) out.external.push(r.url()); });
  out.completions = [];
  page.on("response", async (r) => {
    if (!r.url().endsWith("/v1/chat/completions")) return;
    out.completions.push({ type: r.headers()["content-type"], status: r.status() });
  });
  const rsp = await page.goto(base + "/");
  out.status = rsp.status();
  out.csp = rsp.headers()["content-security-policy"] || "";
  // count the caption's updates as they happen: a streamed caption changes many times
  await page.evaluate(() => {
    window.__updates = [];
    new MutationObserver(() => window.__updates.push(document.getElementById("caption").textContent))
      .observe(document.getElementById("caption"), { childList: true, characterData: true, subtree: true });
    document.addEventListener("securitypolicyviolation", (e) => (window.__csp = (window.__csp || 0) + 1));
  });
  await page.setInputFiles("#file", image);
  await page.waitForSelector('#caption[data-done="1"]');
  out.caption = await page.textContent("#caption");
  out.updates = await page.evaluate(() => window.__updates.length);
  out.pieces = Number(await page.getAttribute("#caption", "data-pieces"));
  await page.fill("#question", question);
  await page.click("#ask button");
  await page.waitForSelector('#turns li[data-done="1"]');
  out.answer = await page.textContent("#turns li .a");
  out.errors_before_probe = out.errors.length;
  // the policy holds: an inline script is refused
  out.inline_ran = await page.evaluate(() => {
    window.__inline = false;
    const s = document.createElement("script");
    s.textContent = "window.__inline = true";
    document.body.append(s);
    return window.__inline;
  });
  out.error_text = await page.textContent("#error");
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
