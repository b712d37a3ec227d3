// glowd studio: the page. Plain ES module, no build step; every picture comes from the studio's API as a blob.
const $ = (id) => document.getElementById(id);

// A token given as #token=… (never sent to a server by the browser) is kept for this tab and sent as a bearer.
const token = (() => {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem('glowd-token', decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname + location.search);
  }
  return sessionStorage.getItem('glowd-token');
})();

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token) headers.set('Authorization', `Bearer ${token}`);
  return fetch(path, { ...options, headers });
}

async function apiJson(path, options) {
  const r = await api(path, options);
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw Object.assign(new Error(body.error || `${r.status} ${r.statusText}`), { status: r.status, kind: body.kind });
  return body;
}

// Shows a PNG answer in an <img> (revoking the previous blob); the answer's error text otherwise.
async function showPicture(img, response) {
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw Object.assign(new Error(body.error || response.statusText), { status: response.status, kind: body.kind });
  }
  const blob = await response.blob();
  if (img.src.startsWith('blob:')) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(blob);
  await img.decode().catch(() => {});
  img.hidden = false;
}

const state = {
  info: null,
  model: 0,
  face: null,          // the Edit face's id
  faceSource: null,    // how to load it again (another model, or evicted): { blob } or { pick }
  interp: { a: null, b: null, aSource: null, bSource: null },
};

const fmt = (x) => (x >= 0 ? '+' : '') + Number(x).toFixed(2);
const modelInfo = () => state.info.models[state.model];

function banner(text) {
  $('banner').textContent = text || '';
  $('banner').hidden = !text;
}

// ---------- tabs ----------
function showTab(name) {
  for (const b of document.querySelectorAll('#tabs button')) b.classList.toggle('active', b.dataset.tab === name);
  for (const s of document.querySelectorAll('.tab')) s.classList.toggle('active', s.id === `tab-${name}`);
  document.body.dataset.tab = name;
  if (name === 'export') refreshExport();
  if (name === 'sample') requestSample();
  if (name === 'interpolate') interpolateFromEdit();
  if (name === 'runs') pollRuns();
}
for (const b of document.querySelectorAll('#tabs button')) b.addEventListener('click', () => showTab(b.dataset.tab));

// ---------- faces ----------
async function loadFace(source) {
  const model = state.model;
  if (source.blob) {
    return apiJson(`/api/faces?model=${model}`, { method: 'POST', body: source.blob, headers: { 'Content-Type': 'application/octet-stream' } });
  }
  return apiJson('/api/faces/pick', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ ...source.pick, model }),
  });
}

async function setEditFace(source) {
  banner('');
  $('edited').dataset.state = 'loading';
  let face;
  try {
    face = await loadFace(source);
  } catch (e) {
    banner(e.message);
    $('edited').dataset.state = 'error';
    return;
  }
  state.face = face.face;
  state.faceSource = source;
  const g = face.gate;
  let text = `${face.bits_per_dim.toFixed(3)} bits/dim`;
  if (g.max_bits_per_dim != null) text += ` · gate ${g.max_bits_per_dim} (${g.action})`;
  $('bpd').textContent = text;
  $('bpd').className = g.over ? 'warn' : 'muted';
  $('bpd').title = g.over || '';
  await showPicture($('original'), await api(`/api/faces/${face.face}/original?model=${state.model}`));
  $('original-empty').hidden = true;
  $('original').dataset.face = face.face;
  requestEdit();
}

$('file').addEventListener('change', (e) => {
  const f = e.target.files[0];
  if (f) setEditFace({ blob: f, name: f.name });
});
const drop = $('drop');
for (const ev of ['dragenter', 'dragover']) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add('over'); });
for (const ev of ['dragleave', 'drop']) drop.addEventListener(ev, () => drop.classList.remove('over'));
document.addEventListener('dragover', (e) => e.preventDefault());
document.addEventListener('drop', (e) => {
  e.preventDefault();
  const f = e.dataTransfer.files[0];
  if (f) setEditFace({ blob: f, name: f.name });
});

// ---------- the folder / S3 listing ----------
const browse = { roots: [], root: 0, path: '' };
function setupBrowser() {
  const info = state.info;
  browse.roots = [
    ...info.roots.map((name, i) => ({ label: `folder ${name}`, query: `root=${i}`, pick: (path) => ({ root: i, path }) })),
    ...info.s3_roots.map((uri, i) => ({ label: uri, query: `s3=${i}`, pick: (path) => ({ s3: i, path }) })),
  ];
  if (!browse.roots.length) return;
  $('browser').hidden = false;
  const sel = $('browse-root');
  sel.replaceChildren(...browse.roots.map((r, i) => new Option(r.label, i)));
  sel.addEventListener('change', () => { browse.root = Number(sel.value); browse.path = ''; listFolder(); });
  listFolder();
}

async function listFolder() {
  const root = browse.roots[browse.root];
  const list = $('browse-list');
  let body;
  try {
    body = await apiJson(`/api/list?${root.query}&path=${encodeURIComponent(browse.path)}`);
  } catch (e) {
    list.replaceChildren(Object.assign(document.createElement('li'), { textContent: e.message }));
    return;
  }
  const crumbs = $('browse-path');
  crumbs.replaceChildren();
  const parts = browse.path ? browse.path.split('/') : [];
  const top = Object.assign(document.createElement('a'), { textContent: '/' });
  top.addEventListener('click', () => { browse.path = ''; listFolder(); });
  crumbs.append(top);
  parts.forEach((p, i) => {
    const a = Object.assign(document.createElement('a'), { textContent: `${p}/` });
    a.addEventListener('click', () => { browse.path = parts.slice(0, i + 1).join('/'); listFolder(); });
    crumbs.append(a);
  });
  const join = (name) => (browse.path ? `${browse.path}/${name}` : name);
  const items = [
    ...body.dirs.map((d) => {
      const li = Object.assign(document.createElement('li'), { textContent: d, className: 'dir' });
      li.addEventListener('click', () => { browse.path = join(d); listFolder(); });
      return li;
    }),
    ...body.files.map((f) => {
      const li = Object.assign(document.createElement('li'), { textContent: f });
      li.dataset.path = join(f);
      li.addEventListener('click', () => setEditFace({ pick: root.pick(join(f)), name: f }));
      return li;
    }),
  ];
  if (body.truncated) items.push(Object.assign(document.createElement('li'), { textContent: '… (more not shown)', className: 'muted' }));
  list.replaceChildren(...items);
}

// ---------- sliders and the edit ----------
function buildSliders() {
  const m = modelInfo();
  const max = state.info.max_strength;
  const box = $('sliders');
  box.replaceChildren();
  if (!m.attributes.length) {
    box.textContent = 'This model has no attribute directions (glowd directions learns them).';
    return;
  }
  for (const a of m.attributes) {
    const label = document.createElement('label');
    label.className = 'slider';
    const name = Object.assign(document.createElement('span'), { textContent: a.replaceAll('_', ' '), title: a });
    const input = Object.assign(document.createElement('input'), { type: 'range', min: -max, max, step: state.info.step, value: 0 });
    input.dataset.attr = a;
    const out = Object.assign(document.createElement('output'), { textContent: fmt(0) });
    input.addEventListener('input', () => {
      out.textContent = fmt(input.value);
      label.classList.toggle('moved', Number(input.value) !== 0);
      requestEdit();
    });
    input.addEventListener('dblclick', () => { input.value = 0; input.dispatchEvent(new Event('input')); });
    label.append(name, input, out);
    box.append(label);
  }
}

// `Smiling:0.8,Eyeglasses:-0.5`: the non-zero sliders, in the model's attribute order.
function editsSpec() {
  return [...document.querySelectorAll('#sliders input')]
    .filter((i) => Number(i.value) !== 0)
    .map((i) => `${i.dataset.attr}:${i.value}`)
    .join(',');
}

$('reset').addEventListener('click', () => {
  for (const i of document.querySelectorAll('#sliders input')) { i.value = 0; i.dispatchEvent(new Event('input')); }
});

// Latest wins: one request in flight; when it returns, the newest slider state (if it moved meanwhile) goes next,
// the values in between are never asked for. An answer for a face or model no longer shown is dropped.
const editLoop = { busy: false, wanted: null };
function requestEdit() {
  if (!state.face) return;
  editLoop.wanted = { face: state.face, model: state.model, edits: editsSpec() };
  if (!editLoop.busy) requestAnimationFrame(pumpEdits);
}

async function pumpEdits() {
  if (editLoop.busy) return;
  editLoop.busy = true;
  try {
    let reloaded = false;
    for (let last = null; editLoop.wanted && editLoop.wanted !== last;) {
      const want = editLoop.wanted;
      last = want;
      const img = $('edited');
      img.dataset.state = 'loading';
      const t0 = performance.now();
      const r = await api(`/api/edit?model=${want.model}&face=${want.face}&edits=${encodeURIComponent(want.edits)}`);
      if (want.face !== state.face || want.model !== state.model) continue;
      if (r.status === 404 && state.faceSource && !reloaded) {
        // Evicted from the studio's cache: load it again and retry.
        await loadFace(state.faceSource).catch(() => {});
        reloaded = true;
        last = null;
        continue;
      }
      try {
        await showPicture(img, r);
        $('edit-error').hidden = true;
        $('edited-empty').hidden = true;
        img.dataset.edits = want.edits;
        img.dataset.face = want.face;
        img.dataset.state = 'ready';
        $('edit-ms').textContent = `${Math.round(performance.now() - t0)} ms`;
      } catch (e) {
        img.hidden = true;
        $('edited-empty').hidden = true;
        $('edit-error').textContent = e.message;
        $('edit-error').hidden = false;
        img.dataset.edits = want.edits;
        img.dataset.state = 'refused';
      }
    }
  } finally {
    editLoop.busy = false;
  }
}

// ---------- interpolate ----------
async function setInterpFace(slot, source) {
  try {
    const face = await loadFace(source);
    state.interp[slot] = face.face;
    state.interp[`${slot}Source`] = source;
    await showPicture($(`interp-${slot}`), await api(`/api/faces/${face.face}/original?model=${state.model}`));
    $(`interp-${slot}`).nextElementSibling.hidden = true;
    requestFrame();
  } catch (e) {
    banner(e.message);
  }
}
function interpolateFromEdit() {
  if (!state.interp.a && state.faceSource) setInterpFace('a', state.faceSource);
  else requestFrame();
}
$('interp-use-edit').addEventListener('click', () => state.faceSource && setInterpFace('a', state.faceSource));
$('interp-file-a').addEventListener('change', (e) => e.target.files[0] && setInterpFace('a', { blob: e.target.files[0] }));
$('interp-file-b').addEventListener('change', (e) => e.target.files[0] && setInterpFace('b', { blob: e.target.files[0] }));

const frameLoop = { busy: false, wanted: null };
function requestFrame() {
  const { a, b } = state.interp;
  $('interp-t-label').textContent = Number($('interp-t').value).toFixed(2);
  if (!a || !b) return;
  frameLoop.wanted = `/api/interpolate?model=${state.model}&a=${a}&b=${b}&t=${$('interp-t').value}`;
  if (!frameLoop.busy) pumpFrames();
}
async function pumpFrames() {
  frameLoop.busy = true;
  try {
    for (let last = null; frameLoop.wanted !== last;) {
      last = frameLoop.wanted;
      const img = $('interp-frame');
      try {
        await showPicture(img, await api(last));
        $('interp-error').hidden = true;
        $('interp-empty').hidden = true;
        img.dataset.url = last;
      } catch (e) {
        img.hidden = true;
        $('interp-error').textContent = e.message;
        $('interp-error').hidden = false;
      }
    }
  } finally {
    frameLoop.busy = false;
  }
}
$('interp-t').addEventListener('input', requestFrame);

// ---------- sample ----------
function buildLevelSliders() {
  const box = $('sample-levels');
  box.replaceChildren();
  for (let l = 0; l < modelInfo().levels; l++) {
    const label = document.createElement('label');
    label.className = 'slider';
    const input = Object.assign(document.createElement('input'), { type: 'range', min: 0, max: 1.2, step: 0.05, value: $('sample-t').value });
    input.dataset.level = l;
    const out = Object.assign(document.createElement('output'), { textContent: Number(input.value).toFixed(2) });
    input.addEventListener('input', () => { out.textContent = Number(input.value).toFixed(2); requestSample(); });
    label.append(Object.assign(document.createElement('span'), { textContent: `level ${l}${l === 0 ? ' (finest)' : ''}` }), input, out);
    box.append(label);
  }
}
const sampleLoop = { busy: false, wanted: null };
function requestSample() {
  $('sample-t-label').textContent = Number($('sample-t').value).toFixed(2);
  const perLevel = $('sample-per-level').checked;
  const t = perLevel ? [...document.querySelectorAll('#sample-levels input')].map((i) => i.value).join(',') : $('sample-t').value;
  sampleLoop.wanted = `/api/sample?model=${state.model}&seed=${Number($('sample-seed').value) || 0}&t=${t}&n=${$('sample-n').value}`;
  if (!sampleLoop.busy) pumpSamples();
}
async function pumpSamples() {
  sampleLoop.busy = true;
  try {
    for (let last = null; sampleLoop.wanted !== last;) {
      last = sampleLoop.wanted;
      try {
        const img = $('sample-grid');
        await showPicture(img, await api(last));
        // Nearest-neighbour enlargement to about 900 pixels wide (the grid comes at the model's size).
        const scale = Math.max(1, Math.min(8, Math.floor(900 / img.naturalWidth)));
        img.style.width = `${img.naturalWidth * scale}px`;
        img.style.height = `${img.naturalHeight * scale}px`;
        $('sample-empty').hidden = true;
        $('sample-grid').dataset.url = last;
      } catch (e) {
        banner(e.message);
      }
    }
  } finally {
    sampleLoop.busy = false;
  }
}
$('sample-t').addEventListener('input', () => {
  for (const i of document.querySelectorAll('#sample-levels input')) { i.value = $('sample-t').value; i.nextElementSibling.textContent = Number(i.value).toFixed(2); }
  requestSample();
});
$('sample-per-level').addEventListener('change', () => { $('sample-levels').hidden = !$('sample-per-level').checked; requestSample(); });
$('sample-seed').addEventListener('input', requestSample);
$('sample-n').addEventListener('change', requestSample);
$('sample-new').addEventListener('click', () => { $('sample-seed').value = Math.floor(Math.random() * 1e9); requestSample(); });

// ---------- export and submit ----------
async function refreshExport() {
  const edits = editsSpec();
  $('export-edits').textContent = edits
    ? `Strengths on screen: ${edits.split(',').map((e) => { const [a, s] = e.split(':'); return `${a} ${fmt(s)}`; }).join(', ')}`
    : 'No slider moved yet (Edit tab).';
  try {
    const body = await apiJson(`/api/export?model=${state.model}&edits=${encodeURIComponent(edits)}`);
    $('export-toml').textContent = body.toml;
    $('export-command').textContent = body.command;
    $('export-problems').replaceChildren(...body.problems.map((p) => Object.assign(document.createElement('li'), { textContent: p })));
    if (!$('submit-prefix').value) $('submit-prefix').value = body.prefix;
    $('submit-run').disabled = body.problems.length > 0;
  } catch (e) {
    $('export-problems').replaceChildren(Object.assign(document.createElement('li'), { textContent: e.message }));
  }
}
for (const b of document.querySelectorAll('button.copy')) {
  b.addEventListener('click', () => navigator.clipboard?.writeText($(b.dataset.copy).textContent));
}
$('submit-run').addEventListener('click', async () => {
  const out = $('submit-result');
  $('submit-run').disabled = true;
  out.textContent = 'listing the prefix and enqueueing…';
  try {
    const limit = Number($('submit-limit').value) || null;
    const body = await apiJson('/api/submit', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: state.model, edits: editsSpec(), prefix: $('submit-prefix').value, limit }),
    });
    out.replaceChildren('run ', Object.assign(document.createElement('code'), { id: 'submitted-run', textContent: body.run }),
      `: ${body.enqueued} jobs enqueued for ${body.images} images under ${body.prefix}` + (state.info.runs ? ' (see Runs)' : ''));
  } catch (e) {
    out.textContent = e.message;
  } finally {
    $('submit-run').disabled = false;
  }
});

// ---------- runs ----------
let runsTimer = null;
async function pollRuns() {
  clearTimeout(runsTimer);
  if (document.body.dataset.tab !== 'runs') return;
  try {
    renderRuns(await apiJson('/api/runs'));
  } catch (e) {
    $('runs-state').textContent = e.message;
  }
  runsTimer = setTimeout(pollRuns, 2000);
}

const thumbCache = new Map();
function thumb(key) {
  const img = document.createElement('img');
  img.alt = key;
  img.title = key;
  if (thumbCache.has(key)) img.src = thumbCache.get(key);
  else api(`/api/runs/thumb?key=${encodeURIComponent(key)}`).then(async (r) => {
    if (!r.ok) return;
    const url = URL.createObjectURL(await r.blob());
    thumbCache.set(key, url);
    img.src = url;
  });
  return img;
}

function renderRuns(body) {
  const st = $('runs-state');
  st.textContent = body.error ? `results topic: ${body.error}`
    : `${body.runs.length} run(s) · ${body.records_read} result records read from ${body.results_topic}` + (body.caught_up ? '' : ' (catching up…)');
  st.className = body.error ? 'warn' : 'muted';
  const list = $('runs-list');
  list.replaceChildren(...body.runs.map((r) => {
    const s = r.summary;
    const div = document.createElement('div');
    div.className = 'run';
    div.dataset.run = s.run;
    const pct = (n) => (s.images ? (100 * n) / s.images : 0);
    const edits = (r.job?.edits || []).map((e) => `${e.attribute} ${fmt(e.strength)}`).join(', ');
    const h = Object.assign(document.createElement('h3'), { textContent: s.run });
    const what = Object.assign(document.createElement('div'), { className: 'muted small', textContent: `${r.job?.kind || '?'}${edits ? ` (${edits})` : ''} on ${r.prefix || '?'}` });
    const bar = document.createElement('div');
    bar.className = 'bar';
    for (const [cls, n] of [['done', s.done], ['skipped', s.skipped], ['dead', s.dead_lettered]]) {
      const seg = document.createElement('div');
      seg.className = cls;
      seg.style.width = `${pct(n)}%`;
      bar.append(seg);
    }
    const counts = document.createElement('div');
    counts.className = 'counts';
    for (const [cls, label, n] of [['', 'images', s.images], ['done', 'done', s.done], ['dead', 'dead-lettered', s.dead_lettered], ['skipped', 'skipped', s.skipped], ['', 'pending', s.pending]]) {
      const span = document.createElement('span');
      span.dataset.count = label;
      span.append(Object.assign(document.createElement('b'), { className: cls, textContent: n }), ` ${label}`);
      counts.append(span);
    }
    div.append(h, what, bar, counts);
    if (r.dead_letters.length) {
      const table = document.createElement('table');
      table.className = 'dead';
      table.innerHTML = '<tr><th>reason</th><th>jobs</th><th>examples</th></tr>';
      for (const g of r.dead_letters) {
        const tr = document.createElement('tr');
        tr.dataset.kind = g.kind;
        const ex = g.examples.map(([job, msg]) => `${job}: ${msg}`).join('\n');
        tr.append(
          Object.assign(document.createElement('td'), { textContent: g.kind }),
          Object.assign(document.createElement('td'), { textContent: g.count }),
          Object.assign(document.createElement('td'), { textContent: ex, className: 'muted' }),
        );
        table.append(tr);
      }
      div.append(table);
    }
    if (r.thumbnails.length) {
      const t = document.createElement('div');
      t.className = 'thumbs';
      t.append(...r.thumbnails.map(thumb));
      div.append(t);
    }
    return div;
  }));
}

// ---------- start ----------
async function selectModel(i) {
  state.model = i;
  buildSliders();
  buildLevelSliders();
  const m = modelInfo();
  $('about').textContent = `${m.image_size}×${m.image_size} · ${state.info.device} · ${state.info.precision}`;
  state.interp = { a: null, b: null, aSource: null, bSource: null };
  if (state.faceSource) await setEditFace(state.faceSource);
  if (document.body.dataset.tab === 'sample') requestSample();
}

async function start() {
  try {
    state.info = await apiJson('/api/info');
  } catch (e) {
    banner(e.message);
    return;
  }
  const info = state.info;
  const sel = $('model');
  sel.replaceChildren(...info.models.map((m, i) => new Option(`${m.name}@${m.version}`, i)));
  sel.addEventListener('change', () => selectModel(Number(sel.value)));
  const fit = info.fit.crop ? `crop ${info.fit.crop.join(',')}, then ` : '';
  $('fit').textContent = `Faces are ${fit}${info.fit.resize ? 'centre-cropped and resized' : 'taken as they are'} to the model's size; uploads up to ${(info.max_upload_bytes / 1048576).toFixed(0)} MiB (${info.formats.join(', ')}).`;
  document.querySelector('[data-tab=runs]').hidden = !info.runs;
  $('submit-panel').hidden = !info.allow_submit;
  setupBrowser();
  sel.value = info.default_model;
  await selectModel(info.default_model);
  document.body.dataset.tab = 'edit';
  document.body.dataset.ready = 'true';
}
start();
