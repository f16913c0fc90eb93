// Browser test of the web pages of `llmos serve`, in headless Chromium driven by
// playwright-core: the chat page streams an answer, the label page records a comparison.
// Reads LLMOS_URL, LLMOS_KEY, LLMOS_LABELS, SHOTS (a folder for the screenshots).
import { chromium } from "playwright-core";
import fs from "node:fs";

const url = process.env.LLMOS_URL;
const key = process.env.LLMOS_KEY;
const shots = process.env.SHOTS;
const fail = (msg) => { console.error("FAIL browser: " + msg); process.exit(1); };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(120000);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  // the key goes where the pages keep it
  await page.goto(url + "/");
  await page.evaluate((k) => localStorage.setItem("llmos.key", k), key);
  await page.reload();
  await page.waitForFunction(() => document.querySelectorAll("#model option").length > 0);
  await page.fill("#max_tokens", "48");
  await page.fill("#input", "What is the capital of France?");
  await page.click("#send");
  // streaming: the answer grows while the stop button is live
  await page.waitForFunction(() => {
    const a = document.querySelector(".msg.assistant");
    return a && a.textContent.length > 0 && !document.querySelector("#stop").disabled;
  });
  const partial = await page.textContent(".msg.assistant");
  await page.waitForSelector("#send:not([disabled])");
  await page.waitForSelector(".msg.assistant .meta");
  const answer = await page.textContent(".msg.assistant");
  if (!answer || answer.length <= partial.length) fail(`answer did not stream: ${JSON.stringify([partial, answer])}`);
  if (await page.$(".msg.error")) fail("error bubble: " + (await page.textContent(".msg.error")));
  await page.screenshot({ path: `${shots}/chat.png`, fullPage: true });
  // the conversation survives a reload (kept in the browser)
  await page.reload();
  if ((await page.$$(".msg.user")).length !== 1) fail("conversation not kept after reload");
  console.log("ok   browser chat: " + JSON.stringify(answer.slice(0, 80)));

  await page.goto(url + "/label");
  await page.fill("#prompt", "Write a short greeting.");
  await page.fill("#max_tokens", "24");
  for (let i = 0; i < 3; i++) {
    await page.click("#gen");
    await page.waitForSelector("#gen:not([disabled])");
    if (!(await page.isDisabled("#pick-a"))) break;
  }
  await page.click("#pick-a");
  await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("saved"));
  await page.screenshot({ path: `${shots}/label.png`, fullPage: true });
  const lines = fs.readFileSync(process.env.LLMOS_LABELS, "utf8").trim().split("\n");
  const rec = JSON.parse(lines[lines.length - 1]);
  if (rec.prompt !== "Write a short greeting." || !rec.chosen || !rec.rejected || rec.chosen === rec.rejected) {
    fail("bad comparison record: " + lines[lines.length - 1]);
  }
  if (errors.length) fail("page errors: " + errors.join("; "));
  console.log("ok   browser label: " + lines.length + " comparison(s) recorded");
} finally {
  await browser.close();
}
