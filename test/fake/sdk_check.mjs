// Calls every environments and work method of the official TypeScript SDK
// (client.beta.environments.*) against test/fake-anthropic-api and checks that
// each answer parses into the expected object.  Run through run-sdk-check,
// which installs the SDK and starts the fake.
//
// Environment: SDK_DIR (folder holding node_modules/@anthropic-ai/sdk),
// FAKE_URL (the fake's base URL), FAKE_API_KEY, FAKE_ENV_KEY.
// Last line printed: "N passed, N failed".  Works with SDK 1.x (Bearer,
// anthropic-version 2026-10-21) and 0.x (x-api-key, 2023-06-01, ?beta=true);
// the environment key and the sessions token go as authToken (Bearer) in both.

import { createRequire } from 'node:module';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';

const SDK_DIR = process.env.SDK_DIR;
const BASE = process.env.FAKE_URL;
const API_KEY = process.env.FAKE_API_KEY || 'sk-ant-fake-test-key';
const ENV_KEY = process.env.FAKE_ENV_KEY || '';

let passed = 0;
let failed = 0;

function finish() {
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

if (!SDK_DIR || !BASE) {
  console.log('SDK_DIR and FAKE_URL must be set');
  failed++;
  finish();
}

const require = createRequire(join(SDK_DIR, 'package.json'));
const sdk = require('@anthropic-ai/sdk');
const Anthropic = sdk.default ?? sdk.Anthropic ?? sdk;
const sdkVersion = JSON.parse(
  readFileSync(join(SDK_DIR, 'node_modules', '@anthropic-ai', 'sdk', 'package.json'), 'utf8'),
).version;
console.log(`# @anthropic-ai/sdk ${sdkVersion} against ${BASE}`);

const client = new Anthropic({ apiKey: API_KEY, baseURL: BASE, maxRetries: 2 });
const envs = client.beta.environments;
const work = envs.work;

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}
function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}
const TS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/;

function assertEnvironment(e) {
  assert(isObject(e), `environment is not an object: ${JSON.stringify(e)}`);
  assert(e.type === 'environment', `type ${e.type}`);
  assert(/^env_/.test(e.id), `id ${e.id}`);
  assert(TS.test(e.created_at) && TS.test(e.updated_at), 'timestamps');
  assert(isObject(e.config) && isObject(e.metadata), 'config/metadata');
  assert('archived_at' in e && 'description' in e, 'archived_at/description present');
}
function assertWork(w) {
  assert(isObject(w), `work item is not an object: ${JSON.stringify(w)}`);
  assert(w.type === 'work' && /^work_/.test(w.id), `work ${JSON.stringify(w)}`);
  assert(['queued', 'starting', 'active', 'stopping', 'stopped'].includes(w.state), `state ${w.state}`);
  assert(isObject(w.data) && typeof w.data.id === 'string', 'data');
  for (const f of ['acknowledged_at', 'latest_heartbeat_at', 'started_at', 'stop_requested_at', 'stopped_at', 'secret']) {
    assert(f in w, `missing ${f}`);
  }
}

async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok - ${name}`);
  } catch (err) {
    failed++;
    console.log(`not ok - ${name}: ${err?.stack ?? err}`);
  }
}

async function fake(method, path, body) {
  const r = await fetch(BASE + path, {
    method,
    headers: body !== undefined ? { 'content-type': 'application/json' } : {},
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${path} -> ${r.status} ${text}`);
  return JSON.parse(text);
}

async function expectError(promise, status, errorCode, className) {
  let err = null;
  try {
    await promise;
  } catch (e) {
    err = e;
  }
  assert(err, `expected a ${status} error`);
  assert(err.status === status, `status ${err.status} (${err.message})`);
  // SDK 0.x has no errorCode / typed error classes: read the body instead.
  const code = 'errorCode' in err ? err.errorCode : err.error?.error?.details?.error_code;
  if (errorCode) assert(code === errorCode, `errorCode ${code}`);
  assert(/^req_/.test(err.requestID ?? ''), `requestID ${err.requestID}`);
  if (className && 'errorCode' in err) assert(err.name === className, `error class ${err.name}, wanted ${className}`);
  return err;
}

let cloud, selfHosted, item, secondItem, lastBeat, sessionsToken;

await fake('POST', '/_fake/reset');

await check('environments.create (cloud, full config)', async () => {
  cloud = await envs.create({
    name: 'sdk-cloud',
    description: 'made by sdk_check',
    metadata: { team: 'db', gone: 'x' },
    config: {
      type: 'cloud',
      networking: { type: 'limited', allowed_hosts: ['api.example.com'], allow_mcp_servers: true, allow_package_managers: false },
      packages: { type: 'packages', pip: ['pandas==2.0.0'], apt: ['jq'], cargo: [], gem: [], go: [], npm: [] },
    },
  });
  assertEnvironment(cloud);
  assert(cloud.config.type === 'cloud' && cloud.config.networking.type === 'limited', 'config echo');
  assert(cloud.config.packages.pip[0] === 'pandas==2.0.0', 'packages echo');
});

await check('environments.create (self_hosted, name only for defaults)', async () => {
  selfHosted = await envs.create({ name: 'sdk-self-hosted', config: { type: 'self_hosted' }, scope: 'account' });
  assertEnvironment(selfHosted);
  assert(selfHosted.config.type === 'self_hosted' && selfHosted.scope === 'account', 'self_hosted');
  const bare = await envs.create({ name: 'sdk-bare' });
  assertEnvironment(bare);
  assert(bare.config.type === 'cloud' && bare.config.networking.type === 'unrestricted', 'defaults');
});

await check('environments.retrieve', async () => {
  const e = await envs.retrieve(cloud.id);
  assertEnvironment(e);
  assert(e.id === cloud.id && e.name === 'sdk-cloud', 'same environment');
});

await check('environments.update (merge, null deletes)', async () => {
  const u = await envs.update(cloud.id, { metadata: { gone: null, added: 'y' }, description: null });
  assertEnvironment(u);
  assert(JSON.stringify(u.metadata) === JSON.stringify({ team: 'db', added: 'y' }), JSON.stringify(u.metadata));
  assert(u.description === null && u.name === 'sdk-cloud', 'merge');
  assert(u.updated_at > cloud.updated_at, 'updated_at moves');
});

await check('environments.update type change -> 400 invalid_config_type_change', async () => {
  await expectError(envs.update(cloud.id, { config: { type: 'self_hosted' } }), 400, 'invalid_config_type_change',
    'BetaInvalidConfigTypeChangeError');
  await expectError(envs.create({ name: 'bad', metadata: { k: 5 } }), 400, 'invalid_metadata', 'BetaInvalidMetadataError');
});

await check('environments.list (auto-pagination over many pages)', async () => {
  await fake('POST', '/_fake/environments/bulk', { count: 23, name_prefix: 'sdk-bulk-' });
  const ids = [];
  for await (const e of envs.list({ limit: 4 })) {
    assertEnvironment(e);
    ids.push(e.id);
  }
  assert(ids.length === 26 && new Set(ids).size === 26, `got ${ids.length} ids`);
  let page = await envs.list({ limit: 10 });
  let pages = 1;
  while (page.hasNextPage()) {
    page = await page.getNextPage();
    pages++;
  }
  assert(pages === 3, `pages ${pages}`);
});

await check('environments.list include_archived', async () => {
  const a = await envs.archive(selfHosted.id);
  assert(a.archived_at !== null, 'archived');
  let without = 0;
  for await (const _ of envs.list({ limit: 1000 })) without++;
  let withArchived = 0;
  for await (const _ of envs.list({ limit: 1000, include_archived: true })) withArchived++;
  assert(withArchived === without + 1, `${withArchived} vs ${without}`);
});

await check('environments.archive of archived -> 400 environment_archived', async () => {
  await expectError(envs.archive(selfHosted.id), 400, 'environment_archived', 'BetaEnvironmentArchivedError');
  await expectError(envs.update(selfHosted.id, { name: 'x' }), 400, 'environment_archived');
});

await check('environments.retrieve retried after a 529', async () => {
  await fake('POST', '/_fake/faults', {
    method: 'GET', path_regex: `^/v1/environments/${cloud.id}$`, status: 529, headers: { 'retry-after-ms': '10' },
  });
  const e = await envs.retrieve(cloud.id);
  assertEnvironment(e);
});

// -- work: uses a fresh self-hosted environment
let wenv;
await check('work.stats (empty queue)', async () => {
  wenv = await envs.create({ name: 'sdk-work', config: { type: 'self_hosted' } });
  item = await fake('POST', `/_fake/environments/${wenv.id}/work`, { data: { type: 'session', id: 'sesn_sdk' }, metadata: { k: 'v' } });
  secondItem = await fake('POST', `/_fake/environments/${wenv.id}/work`, {});
  const s = await work.stats(wenv.id);
  assert(isObject(s) && s.type === 'work_queue_stats', JSON.stringify(s));
  assert(s.depth === 2 && s.pending === 0 && s.oldest_queued_at === item.created_at, JSON.stringify(s));
});

await check('work.poll (with worker id and secret)', async () => {
  const p = await work.poll(wenv.id, { block_ms: 500, reclaim_older_than_ms: 5000, 'Anthropic-Worker-ID': 'sdk-worker-1' });
  assertWork(p);
  assert(p.id === item.id && p.state === 'queued', 'first item');
  const secret = JSON.parse(Buffer.from(p.secret, 'base64url').toString('utf8'));
  assert(/^sk-ant-req-/.test(secret.sessions_token) && secret.api_base_url === BASE, JSON.stringify(secret));
  sessionsToken = secret.sessions_token;
});

await check('work.ack', async () => {
  const a = await work.ack(item.id, { environment_id: wenv.id });
  assertWork(a);
  assert(a.state === 'starting' && TS.test(a.acknowledged_at) && a.secret === null, JSON.stringify(a));
});

await check('work.heartbeat (NO_HEARTBEAT, then echo)', async () => {
  const h = await work.heartbeat(item.id, { environment_id: wenv.id, expected_last_heartbeat: 'NO_HEARTBEAT', desired_ttl_seconds: 60 });
  assert(isObject(h) && h.type === 'work_heartbeat', JSON.stringify(h));
  assert(h.state === 'active' && h.lease_extended === true && h.ttl_seconds === 60, JSON.stringify(h));
  const h2 = await work.heartbeat(item.id, { environment_id: wenv.id, expected_last_heartbeat: h.last_heartbeat });
  assert(h2.last_heartbeat > h.last_heartbeat, 'strictly increasing');
  lastBeat = h2.last_heartbeat;
});

await check('work.heartbeat precondition failure -> 412 heartbeat_precondition_failed', async () => {
  const err = await expectError(
    work.heartbeat(item.id, { environment_id: wenv.id, expected_last_heartbeat: 'NO_HEARTBEAT' }),
    412,
    'heartbeat_precondition_failed',
    'BetaHeartbeatPreconditionFailedError',
  );
  const details = err.details ?? err.error?.error?.details;
  assert(details?.current_state?.last_heartbeat === lastBeat, JSON.stringify(details));
});

await check('work.heartbeat with the environment key and the sessions token', async () => {
  if (ENV_KEY) {
    const envClient = new Anthropic({ apiKey: null, authToken: ENV_KEY, baseURL: BASE, maxRetries: 0 });
    const h = await envClient.beta.environments.work.heartbeat(item.id, { environment_id: wenv.id, expected_last_heartbeat: lastBeat });
    assert(h.lease_extended === true, JSON.stringify(h));
    lastBeat = h.last_heartbeat;
    await expectError(envClient.beta.environments.retrieve(wenv.id), 401);
  }
  const tokenClient = new Anthropic({ apiKey: null, authToken: sessionsToken, baseURL: BASE, maxRetries: 0 });
  const h = await tokenClient.beta.environments.work.heartbeat(item.id, { environment_id: wenv.id, expected_last_heartbeat: lastBeat });
  assert(h.lease_extended === true && h.state === 'active', JSON.stringify(h));
  lastBeat = h.last_heartbeat;
  await expectError(tokenClient.beta.environments.work.heartbeat(secondItem.id, { environment_id: wenv.id }), 401);
});

await check('work.update (metadata merge)', async () => {
  const u = await work.update(item.id, { environment_id: wenv.id, metadata: { k: null, phase: 'running' } });
  assertWork(u);
  assert(JSON.stringify(u.metadata) === JSON.stringify({ phase: 'running' }), JSON.stringify(u.metadata));
});

await check('work.retrieve', async () => {
  const g = await work.retrieve(item.id, { environment_id: wenv.id });
  assertWork(g);
  assert(g.state === 'active' && g.latest_heartbeat_at === lastBeat && g.secret === null, JSON.stringify(g));
});

await check('work.list (auto-pagination)', async () => {
  for (let i = 0; i < 5; i++) await fake('POST', `/_fake/environments/${wenv.id}/work`, {});
  const ids = [];
  for await (const w of work.list(wenv.id, { limit: 2 })) {
    assertWork(w);
    ids.push(w.id);
  }
  assert(ids.length === 7 && new Set(ids).size === 7, `got ${ids.length}`);
});

await check('work.stop (graceful, then force, then 409)', async () => {
  const s = await work.stop(item.id, { environment_id: wenv.id });
  assertWork(s);
  assert(s.state === 'stopping' && TS.test(s.stop_requested_at), JSON.stringify(s));
  const f = await work.stop(item.id, { environment_id: wenv.id, force: true });
  assert(f.state === 'stopped' && TS.test(f.stopped_at), JSON.stringify(f));
  await expectError(work.stop(item.id, { environment_id: wenv.id, force: true }, { maxRetries: 0 }), 409);
});

await check('work.stats (after the lifecycle)', async () => {
  const s = await work.stats(wenv.id);
  assert(s.workers_polling === 1 && s.depth === 6 && s.pending === 0, JSON.stringify(s));
});

await check('work.poll returns null when there is no work', async () => {
  const e = await envs.create({ name: 'sdk-empty', config: { type: 'self_hosted' } });
  const t0 = Date.now();
  const p = await work.poll(e.id, { block_ms: 200 });
  assert(p === null, `got ${JSON.stringify(p)}`);
  assert(Date.now() - t0 >= 150, 'waited for block_ms');
});

await check('environments.delete', async () => {
  const d = await envs.delete(cloud.id);
  assert(isObject(d) && d.id === cloud.id && d.type === 'environment_deleted', JSON.stringify(d));
  await expectError(envs.retrieve(cloud.id), 404, 'environment_not_found', 'BetaEnvironmentNotFoundError');
});

await check('the fake saw SDK-style requests', async () => {
  const log = (await fake('GET', '/_fake/requests')).data;
  assert(log.length > 20, `${log.length} requests`);
  for (const r of log) {
    assert(r.headers['anthropic-beta']?.split(',').includes('managed-agents-2026-04-01'), 'beta header');
    assert(['2023-06-01', '2026-10-21'].includes(r.headers['anthropic-version']), 'version header');
  }
  const forms = new Set(log.map((r) => (r.headers['x-api-key'] ? 'x-api-key' : 'bearer')));
  console.log(`# auth forms seen: ${[...forms].join(', ')}; version ${log[0].headers['anthropic-version']}`);
});

finish();
