// Browser test: Pigeon serves MQTT over WebSocket to two pages in headless Chromium, one using
// MQTT.js (MQTT 5.0) and one using paho-mqtt.js (MQTT 3.1), and the pages come from Pigeon's own
// HTTP listener ([http] static_dir). Each page subscribes, publishes, and must receive the
// messages of the other page and of a TCP client (MQTT.js in node); the check runs in the page
// and a screenshot of each page is saved. Then the admin dashboard ([http] admin_token) must
// refuse a wrong token, list the three clients, filter them, show one's subscription, and
// disconnect the TCP client at a click.
// Exits non-zero on any failure.
//
// Environment: PIGEON_BIN (default target/debug/pigeon), PIGEON_BROWSER_OUT (screenshots and
// broker log; default target/browser-test), CHROMIUM (default /usr/bin/chromium).

import { spawn } from 'node:child_process';
import { connect } from 'node:net';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, existsSync, createWriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import mqtt from 'mqtt';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..', '..');
const pigeonBin = process.env.PIGEON_BIN || join(repo, 'target', 'debug', 'pigeon');
const outDir = resolve(process.env.PIGEON_BROWSER_OUT || join(repo, 'target', 'browser-test'));
const chromiumBin = process.env.CHROMIUM || '/usr/bin/chromium';
const STEP_MS = 10_000;
const ADMIN_TOKEN = 'browser-test-token';

const cleanups = [];
let failed = false;

function fail(message) {
  throw new Error(message);
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Starts the broker on free ports and reads them from its log.
async function startBroker(work) {
  if (!existsSync(pigeonBin)) fail(`no pigeon binary at ${pigeonBin} (cargo build, or set PIGEON_BIN)`);
  const config = join(work, 'pigeon.toml');
  writeFileSync(config, [
    '[[listener]]', 'bind = "127.0.0.1:0"', 'protocol = "mqtt"', '',
    '[[listener]]', 'bind = "127.0.0.1:0"', 'protocol = "ws"', 'path = "/mqtt"', '',
    '[http]', 'bind = "127.0.0.1:0"', `static_dir = ${JSON.stringify(here)}`,
    `admin_token = "${ADMIN_TOKEN}"`, '',
    '[storage]', 'backend = "memory"', '',
  ].join('\n'));
  const logPath = join(outDir, 'pigeon.log');
  const log = createWriteStream(logPath);
  const broker = spawn(pigeonBin, ['--config', config], {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  cleanups.push(() => new Promise((done) => {
    if (broker.exitCode !== null) return done();
    broker.once('exit', done);
    broker.kill('SIGTERM');
    setTimeout(() => { broker.kill('SIGKILL'); done(); }, 5000).unref();
  }));
  const ports = {};
  let text = '';
  await withTimeout(new Promise((ready, error) => {
    broker.once('exit', (code) => error(new Error(`pigeon exited with ${code}; see ${logPath}`)));
    broker.stderr.on('data', (chunk) => {
      log.write(chunk);
      text += chunk.toString();
      for (const m of text.matchAll(/listening addr=127\.0\.0\.1:(\d+) protocol=(\w+)/g)) ports[m[2]] = Number(m[1]);
      const http = text.match(/HTTP listening addr=127\.0\.0\.1:(\d+)/);
      if (http) ports.http = Number(http[1]);
      if (ports.mqtt && ports.ws && ports.http) ready();
    });
  }), STEP_MS, 'pigeon start');
  return ports;
}

// A TCP client (MQTT.js in node) subscribed to the room.
async function tcpClient(port, topic) {
  const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, {
    clientId: 'tcp-node', protocolVersion: 4, reconnectPeriod: 0,
  });
  cleanups.push(() => new Promise((done) => client.end(true, {}, done)));
  const received = [];
  client.on('message', (t, payload) => received.push({ topic: t, payload: payload.toString() }));
  await withTimeout(new Promise((ok, error) => {
    client.once('connect', () => client.subscribe(`${topic}/#`, { qos: 1 }, (err) => (err ? error(err) : ok())));
    client.once('error', error);
  }), STEP_MS, 'TCP client connect');
  return { client, received };
}

async function openPage(context, httpPort, wsPort, page, clientId, topic) {
  const tab = await context.newPage();
  const consoleLines = [];
  tab.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  tab.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
  const url = `ws://127.0.0.1:${wsPort}/mqtt`;
  const address = `http://127.0.0.1:${httpPort}/pages/${page}?url=${encodeURIComponent(url)}`
    + `&id=${clientId}&topic=${encodeURIComponent(topic)}`;
  const response = await tab.goto(address);
  if (!response || response.status() !== 200) fail(`${address}: HTTP ${response && response.status()}`);
  try {
    await tab.waitForFunction(() => window.pigeonTest && (window.pigeonTest.ready || window.pigeonTest.error),
      null, { timeout: STEP_MS });
  } catch (e) {
    fail(`${page} did not connect and subscribe: ${e.message}\n${consoleLines.join('\n')}`);
  }
  const error = await tab.evaluate(() => window.pigeonTest.error);
  if (error) fail(`${page}: ${error}\n${consoleLines.join('\n')}`);
  return { tab, page, consoleLines };
}

async function expectInPage(p, expected) {
  try {
    await p.tab.waitForFunction((exp) => window.pigeonTest.check(exp).ok, expected, { timeout: STEP_MS });
  } catch {
    const result = await p.tab.evaluate((exp) => window.pigeonTest.check(exp), expected);
    await p.tab.screenshot({ path: join(outDir, `${p.page}.failed.png`) });
    fail(`${p.page}: missing ${JSON.stringify(result.missing)} (error: ${result.error})\n${p.consoleLines.join('\n')}`);
  }
}

// The status code of a GET sent byte for byte.
function rawGetStatus(port, path) {
  return withTimeout(new Promise((ok, error) => {
    const socket = connect(port, '127.0.0.1', () => {
      socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`);
    });
    let text = '';
    socket.on('data', (d) => { text += d.toString(); });
    socket.on('end', () => ok(Number(text.split(' ')[1])));
    socket.on('error', error);
  }), STEP_MS, `GET ${path}`);
}

async function main() {
  mkdirSync(outDir, { recursive: true });
  const work = mkdtempSync(join(tmpdir(), 'pigeon-browser-'));
  cleanups.push(() => rmSync(work, { recursive: true, force: true }));
  if (!existsSync(chromiumBin)) fail(`no Chromium at ${chromiumBin} (apt-get install chromium)`);

  const ports = await startBroker(work);
  console.log(`pigeon: mqtt ${ports.mqtt}, ws ${ports.ws}, http ${ports.http}`);
  const topic = 'browser/room';
  const tcp = await tcpClient(ports.mqtt, topic);

  const profile = join(work, 'chromium-profile');
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumBin,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    viewport: { width: 900, height: 500 },
  });
  cleanups.push(() => context.close());

  const mqttjs = await openPage(context, ports.http, ports.ws, 'mqttjs.html', 'browser-mqttjs', topic);
  const paho = await openPage(context, ports.http, ports.ws, 'paho.html', 'browser-paho', topic);
  console.log('both pages connected and subscribed');

  await withTimeout(new Promise((ok, error) => tcp.client.publish(`${topic}/tcp`, 'hello from tcp', { qos: 1 },
    (err) => (err ? error(err) : ok()))), STEP_MS, 'TCP publish');
  await mqttjs.tab.evaluate(() => window.pigeonTest.publish('mqttjs', 'hello from MQTT.js'));
  await paho.tab.evaluate(() => window.pigeonTest.publish('paho', 'hello from paho'));

  const all = [
    { topic: `${topic}/tcp`, payload: 'hello from tcp' },
    { topic: `${topic}/mqttjs`, payload: 'hello from MQTT.js' },
    { topic: `${topic}/paho`, payload: 'hello from paho' },
  ];
  await expectInPage(mqttjs, all);
  await expectInPage(paho, all);
  for (const p of [mqttjs, paho]) {
    const shot = join(outDir, `${p.page.replace('.html', '')}.png`);
    await p.tab.screenshot({ path: shot });
    console.log(`${p.page}: every message received; screenshot ${shot}`);
  }
  await withTimeout((async () => {
    while (!all.every((e) => tcp.received.some((r) => r.topic === e.topic && r.payload === e.payload))) {
      await new Promise((r) => setTimeout(r, 50));
    }
  })(), STEP_MS, 'TCP client receiving the browsers\' messages');
  console.log('TCP client received both browsers\' messages');

  // Static serving refuses what is outside static_dir (raw requests: fetch would normalize).
  for (const path of ['/../../Cargo.toml', '/%2e%2e/%2e%2e/Cargo.toml', '/pages/..%2f..%2f..%2fCargo.toml']) {
    const status = await rawGetStatus(ports.http, path);
    if (status !== 404) fail(`GET ${path}: expected 404, got ${status}`);
  }
  const health = await fetch(`http://127.0.0.1:${ports.http}/health`);
  if (health.status !== 200) fail(`GET /health: ${health.status}`);

  await checkDashboard(context, ports.http, tcp.client);

  await mqttjs.tab.evaluate(() => window.pigeonTest.close());
  await paho.tab.evaluate(() => window.pigeonTest.close());
}

// The dashboard as an operator uses it: a wrong token is refused and the form asks again; the
// right one shows the figures and the three clients; Disconnect closes the TCP client's
// connection, and its clean session leaves the list.
async function checkDashboard(context, httpPort, tcpClient) {
  const tab = await context.newPage();
  const consoleLines = [];
  tab.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
  const base = `http://127.0.0.1:${httpPort}/dashboard`;
  const shot = join(outDir, 'dashboard.png');
  const step = async (what, fn) => {
    try {
      await fn();
    } catch (e) {
      await tab.screenshot({ path: join(outDir, 'dashboard.failed.png') });
      fail(`dashboard: ${what}: ${e.message}\n${consoleLines.join('\n')}`);
    }
  };
  await step('wrong token', async () => {
    await tab.goto(`${base}#token=not-the-token`);
    await tab.locator('#status', { hasText: 'the admin token was refused' }).waitFor({ timeout: STEP_MS });
    await tab.locator('#login').waitFor({ state: 'visible', timeout: STEP_MS });
  });
  await step('log in and list the clients', async () => {
    await tab.fill('#token', ADMIN_TOKEN);
    await tab.click('#login button');
    for (const id of ['tcp-node', 'browser-mqttjs', 'browser-paho']) {
      await tab.locator(`tr[data-client-id="${id}"]`, { hasText: 'connected' }).waitFor({ timeout: STEP_MS });
    }
    await tab.locator('.card', { hasText: 'connections' }).locator('b', { hasText: /^3$/ })
      .waitFor({ timeout: STEP_MS });
  });
  await step('filter by client id (on the server)', async () => {
    await tab.fill('#filter', 'paho');
    await tab.locator('tr[data-client-id="browser-mqttjs"]').waitFor({ state: 'detached', timeout: STEP_MS });
    await tab.locator('tr[data-client-id="browser-paho"]').waitFor({ timeout: STEP_MS });
    await tab.fill('#filter', '');
    await tab.locator('tr[data-client-id="browser-mqttjs"]').waitFor({ timeout: STEP_MS });
  });
  await step('show a session', async () => {
    await tab.locator('tr[data-client-id="browser-mqttjs"] td.id button').click();
    await tab.locator('#detail dd[data-field="subscriptions"]', { hasText: 'browser/room/# (QoS 1)' })
      .waitFor({ timeout: STEP_MS });
    await tab.locator('#detail dd[data-field="state"]', { hasText: 'connected' }).waitFor({ timeout: STEP_MS });
  });
  await tab.screenshot({ path: shot, fullPage: true });
  const closed = new Promise((done) => tcpClient.once('close', done));
  await step('disconnect the TCP client', async () => {
    await tab.locator('tr[data-client-id="tcp-node"] button', { hasText: 'Disconnect' }).click();
    await withTimeout(closed, STEP_MS, 'the TCP client\'s connection closing');
    await tab.locator('tr[data-client-id="tcp-node"]').waitFor({ state: 'detached', timeout: STEP_MS });
    await tab.locator('#status', { hasText: 'Disconnected tcp-node' }).waitFor({ timeout: STEP_MS });
  });
  console.log(`dashboard: wrong token refused, 3 clients listed and filtered, a session shown, tcp-node disconnected; screenshot ${shot}`);
  await tab.close();
}

try {
  await withTimeout(main(), 90_000, 'browser test');
  console.log('browser test: 1 passed, 0 failed');
} catch (e) {
  failed = true;
  console.error(`browser test FAILED: ${e.stack || e}`);
  console.error(`output (screenshots, broker log): ${outDir}`);
} finally {
  for (const cleanup of cleanups.reverse()) {
    try { await withTimeout(Promise.resolve(cleanup()), 10_000, 'cleanup'); } catch (e) { console.error(`cleanup: ${e.message}`); }
  }
}
process.exit(failed ? 1 : 0);
