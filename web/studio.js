// rankone studio: paint masks on generated samples, copy a region, paste it
// elsewhere, pick the context, and ask the server to rewrite one layer so that
// every sample follows the new rule. Plain JavaScript with no dependencies. The
// server's JSON API is described in docs/studio.md.

const $ = (id) => document.getElementById(id);

const state = {
  model: null,          // GET /api/model
  scale: 1,             // screen pixels per model pixel
  size: 0,              // side of every canvas and mask, in screen pixels
  samples: [],          // sample numbers shown in the grid
  tiles: new Map(),     // sample number -> tile
  selected: null,       // sample number of the tile painted last
  tool: 'paint',
  brush: 18,
  pasteMode: false,
  object: null,         // {index, mask, cutout, box}
  paste: null,          // {index, mask, box, dx, dy}
  context: [],          // [{index, mask}]
  showOriginal: false,
  showMasks: true,      // context masks, paste preview, painted masks and boxes on the tiles
  revision: 0,
  applied: [],
  matches: false,
  jobRunning: false,
  searchResults: [],
};

// ---------------------------------------------------------------------------
// Server calls

class ApiError extends Error {
  constructor(status, message, id) {
    super(message);
    this.status = status;
    this.id = id;
  }
}

async function api(path, { method = 'GET', body } = {}) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers['Content-Type'] = 'application/json';
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    const message = data && data.error ? data.error : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message, data && data.id);
  }
  return data;
}

function sampleUrl(index, edited, scale = state.scale) {
  return `/api/samples/${index}.png?edited=${edited ? 1 : 0}&scale=${scale}&v=${state.revision}`;
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error(`cannot load ${url}`));
    image.src = url;
  });
}

// ---------------------------------------------------------------------------
// Messages

function showMessage(text, kind = 'info') {
  const box = $('message');
  box.textContent = text;
  box.className = `message ${kind}`;
}

function showError(error) {
  const id = error.id ? ` (error id ${error.id})` : '';
  showMessage(`${error.message}${id}`, 'error');
}

// Runs an async UI action and reports its failure in the message bar.
function guarded(action) {
  return async (...args) => {
    try {
      await action(...args);
    } catch (error) {
      showError(error);
    }
  };
}

// ---------------------------------------------------------------------------
// Masks: canvases of state.size pixels, painted white and opaque, transparent elsewhere.

function newCanvas(width = state.size, height = state.size) {
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  return canvas;
}

function cloneCanvas(source) {
  const canvas = newCanvas(source.width, source.height);
  canvas.getContext('2d').drawImage(source, 0, 0);
  return canvas;
}

// Bounding box {x0, y0, x1, y1} (x1, y1 exclusive) of the painted pixels, or null.
function maskBox(mask) {
  const { data, width, height } = mask.getContext('2d').getImageData(0, 0, mask.width, mask.height);
  let x0 = width, y0 = height, x1 = -1, y1 = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (data[(y * width + x) * 4 + 3] >= 128) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  return x1 < 0 ? null : { x0, y0, x1: x1 + 1, y1: y1 + 1 };
}

// PNG data URL of a mask with every pixel either white and opaque or transparent, so that
// the antialiased edges of brush strokes do not widen the mask.
function maskUrl(mask) {
  const out = newCanvas(mask.width, mask.height);
  const context = out.getContext('2d');
  const pixels = mask.getContext('2d').getImageData(0, 0, mask.width, mask.height);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    const on = data[i + 3] >= 128 ? 255 : 0;
    data[i] = data[i + 1] = data[i + 2] = on;
    data[i + 3] = on;
  }
  context.putImageData(pixels, 0, 0);
  return out.toDataURL('image/png');
}

// Draws a mask PNG (any size) scaled onto a new canvas of state.size.
async function maskFromUrl(url) {
  const image = await loadImage(url);
  const mask = newCanvas();
  const context = mask.getContext('2d');
  context.imageSmoothingEnabled = false;
  context.drawImage(image, 0, 0, state.size, state.size);
  // Painted pixels are white: keep them, drop black or transparent ones.
  const pixels = context.getImageData(0, 0, state.size, state.size);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    const on = data[i] >= 128 && data[i + 3] >= 128 ? 255 : 0;
    data[i] = data[i + 1] = data[i + 2] = 255;
    data[i + 3] = on;
  }
  context.putImageData(pixels, 0, 0);
  return mask;
}

// Draws `mask` onto `context` tinted with `color`.
const scratch = document.createElement('canvas');
function drawTinted(context, mask, color) {
  scratch.width = mask.width;
  scratch.height = mask.height;
  const s = scratch.getContext('2d');
  s.clearRect(0, 0, scratch.width, scratch.height);
  s.drawImage(mask, 0, 0);
  s.globalCompositeOperation = 'source-in';
  s.fillStyle = color;
  s.fillRect(0, 0, scratch.width, scratch.height);
  s.globalCompositeOperation = 'source-over';
  context.drawImage(scratch, 0, 0);
}

// The pixels of sample `index` (as currently shown) under `mask`, on a transparent canvas.
async function cutOut(index, mask) {
  const image = await loadImage(sampleUrl(index, !state.showOriginal));
  const canvas = newCanvas();
  const context = canvas.getContext('2d');
  context.imageSmoothingEnabled = false;
  context.drawImage(image, 0, 0, state.size, state.size);
  context.globalCompositeOperation = 'destination-in';
  context.drawImage(mask, 0, 0);
  return canvas;
}

// ---------------------------------------------------------------------------
// The grid of samples

function buildGrid() {
  const grid = $('grid');
  grid.replaceChildren();
  state.tiles.clear();
  for (const index of state.samples) {
    const tile = makeTile(index);
    state.tiles.set(index, tile);
    grid.append(tile.root);
  }
  if (!state.tiles.has(state.selected)) state.selected = null;
  refreshImages();
  renderAllTiles();
  if (state.matches) refreshMatches();
}

function makeTile(index) {
  const root = document.createElement('figure');
  root.className = 'tile';
  root.dataset.index = index;

  const stack = document.createElement('div');
  stack.className = 'stack';
  stack.style.width = `${state.size}px`;
  stack.style.height = `${state.size}px`;

  const image = document.createElement('img');
  image.className = 'sample';
  image.alt = `sample ${index}`;
  image.draggable = false;
  image.width = image.height = state.size;

  const heat = document.createElement('img');
  heat.className = 'heat';
  heat.alt = '';
  heat.hidden = true;
  heat.width = heat.height = state.size;

  const preview = newCanvas();
  preview.className = 'preview';
  const view = newCanvas();
  view.className = 'view';

  stack.append(image, heat, preview, view);

  const caption = document.createElement('figcaption');
  const label = document.createElement('span');
  label.textContent = `#${index}`;
  const clear = document.createElement('button');
  clear.type = 'button';
  clear.className = 'small quiet';
  clear.textContent = 'clear';
  clear.title = 'clear the mask painted on this image';
  caption.append(label, clear);
  root.append(stack, caption);

  const tile = { index, root, image, heat, preview, view, mask: newCanvas(), painted: false };
  clear.addEventListener('click', () => {
    clearTileMask(tile);
  });
  attachPointer(tile);
  return tile;
}

function refreshImages() {
  for (const tile of state.tiles.values()) {
    tile.image.src = sampleUrl(tile.index, !state.showOriginal);
  }
  $('toggle-original').textContent = state.showOriginal ? 'Showing original' : 'Showing rewritten';
  $('toggle-original').classList.toggle('active', state.showOriginal);
}

function clearTileMask(tile) {
  tile.mask.getContext('2d').clearRect(0, 0, state.size, state.size);
  tile.painted = false;
  renderTile(tile);
}

// Draws the overlays of one tile: context masks (blue, hidden while heatmaps show) and the
// paste preview on the lower canvas, the painted mask (red) and the object's box on the upper one.
function renderTile(tile) {
  const preview = tile.preview.getContext('2d');
  preview.clearRect(0, 0, state.size, state.size);
  const view = tile.view.getContext('2d');
  view.clearRect(0, 0, state.size, state.size);
  tile.root.classList.toggle('selected', state.showMasks && state.selected === tile.index);
  if (!state.showMasks) return;

  if (!state.matches) {
    for (const entry of state.context) {
      if (entry.index === tile.index) drawTinted(preview, entry.mask, 'rgba(56, 132, 255, 0.4)');
    }
  }
  if (state.paste && state.object && state.paste.index === tile.index) {
    preview.drawImage(state.object.cutout, state.paste.dx, state.paste.dy);
    drawBox(preview, state.paste.box, '#ffd23f');
  }

  if (tile.painted) drawTinted(view, tile.mask, 'rgba(255, 70, 70, 0.55)');
  if (state.object && state.object.index === tile.index) drawBox(view, state.object.box, '#27c46b');
}

function renderAllTiles() {
  for (const tile of state.tiles.values()) renderTile(tile);
}

function setShowMasks(on) {
  if (state.showMasks === on) return;
  state.showMasks = on;
  $('toggle-masks').classList.toggle('active', on);
  renderAllTiles();
}

function drawBox(context, box, color) {
  context.save();
  context.lineWidth = 2;
  context.setLineDash([6, 4]);
  context.strokeStyle = 'rgba(0, 0, 0, 0.6)';
  context.strokeRect(box.x0 + 1, box.y0 + 1, box.x1 - box.x0 - 2, box.y1 - box.y0 - 2);
  context.lineDashOffset = 5;
  context.strokeStyle = color;
  context.strokeRect(box.x0 + 1, box.y0 + 1, box.x1 - box.x0 - 2, box.y1 - box.y0 - 2);
  context.restore();
}

// ---------------------------------------------------------------------------
// Painting and placing the paste

function pointerPosition(tile, event) {
  const rect = tile.view.getBoundingClientRect();
  return {
    x: ((event.clientX - rect.left) * state.size) / rect.width,
    y: ((event.clientY - rect.top) * state.size) / rect.height,
  };
}

function attachPointer(tile) {
  let last = null;
  let dragging = null;  // 'paint' or 'paste'

  tile.view.addEventListener('pointerdown', (event) => {
    if (event.button !== 0) return;
    tile.view.setPointerCapture(event.pointerId);
    setShowMasks(true);
    const point = pointerPosition(tile, event);
    if (state.pasteMode && state.object) {
      dragging = 'paste';
      placePaste(tile.index, point.x, point.y);
      return;
    }
    dragging = 'paint';
    const previous = state.selected;
    state.selected = tile.index;
    if (previous !== null && previous !== tile.index && state.tiles.has(previous)) {
      renderTile(state.tiles.get(previous));
    }
    last = point;
    paintStroke(tile, point, point);
  });
  tile.view.addEventListener('pointermove', (event) => {
    if (!dragging) return;
    const point = pointerPosition(tile, event);
    if (dragging === 'paste') {
      placePaste(tile.index, point.x, point.y);
    } else {
      paintStroke(tile, last, point);
      last = point;
    }
  });
  const end = () => {
    dragging = null;
    last = null;
  };
  tile.view.addEventListener('pointerup', end);
  tile.view.addEventListener('pointercancel', end);
}

function paintStroke(tile, from, to) {
  const context = tile.mask.getContext('2d');
  context.save();
  context.globalCompositeOperation = state.tool === 'erase' ? 'destination-out' : 'source-over';
  context.strokeStyle = '#fff';
  context.fillStyle = '#fff';
  context.lineWidth = state.brush;
  context.lineCap = 'round';
  context.lineJoin = 'round';
  context.beginPath();
  context.moveTo(from.x, from.y);
  context.lineTo(to.x + 0.01, to.y);
  context.stroke();
  context.restore();
  tile.painted = state.tool === 'paint' ? true : maskBox(tile.mask) !== null;
  renderTile(tile);
}

// Centres the object's box on (x, y) of sample `index`, kept inside the image as the server
// keeps it inside the layer's map, and moves the object's mask there as the paste mask.
function placePaste(index, x, y) {
  const box = state.object.box;
  const width = box.x1 - box.x0;
  const height = box.y1 - box.y0;
  const left = Math.max(0, Math.min(state.size - width, Math.round(x - width / 2)));
  const top = Math.max(0, Math.min(state.size - height, Math.round(y - height / 2)));
  const dx = left - box.x0;
  const dy = top - box.y0;
  const mask = newCanvas();
  mask.getContext('2d').drawImage(state.object.mask, dx, dy);
  const previous = state.paste ? state.paste.index : null;
  state.paste = { index, mask, dx, dy, box: { x0: left, y0: top, x1: left + width, y1: top + height } };
  if (previous !== null && previous !== index && state.tiles.has(previous)) renderTile(state.tiles.get(previous));
  if (state.tiles.has(index)) renderTile(state.tiles.get(index));
  updatePanels();
}

function setPasteMode(on) {
  state.pasteMode = on && state.object !== null;
  $('paste').classList.toggle('active', state.pasteMode);
  document.body.classList.toggle('pasting', state.pasteMode);
  if (state.pasteMode) showMessage('Click an image to place the object; click or drag again to move it.');
}

function selectedPaintedTile(action) {
  const tile = state.tiles.get(state.selected);
  if (!tile || !tile.painted || maskBox(tile.mask) === null) {
    throw new Error(`Paint a region on an image first, then press ${action}.`);
  }
  return tile;
}

// ---------------------------------------------------------------------------
// Copy, paste and context

async function copyObject() {
  setShowMasks(true);
  const tile = selectedPaintedTile('Copy');
  const mask = cloneCanvas(tile.mask);
  const box = maskBox(mask);
  const cutout = await cutOut(tile.index, mask);
  const oldPaste = state.paste;
  state.object = { index: tile.index, mask, cutout, box };
  clearTileMask(tile);
  if (oldPaste) {
    const centre = { x: (oldPaste.box.x0 + oldPaste.box.x1) / 2, y: (oldPaste.box.y0 + oldPaste.box.y1) / 2 };
    placePaste(oldPaste.index, centre.x, centre.y);
  }
  renderAllTiles();
  updatePanels();
  setPasteMode(true);
}

function addContext() {
  setShowMasks(true);
  const tile = selectedPaintedTile('Add to context');
  state.context.push({ index: tile.index, mask: cloneCanvas(tile.mask) });
  clearTileMask(tile);
  contextChanged();
  showMessage(`Added image ${tile.index} to the context.`);
}

function removeContext(position) {
  state.context.splice(position, 1);
  contextChanged();
}

function contextChanged() {
  if (state.matches) setMatches(false);
  renderAllTiles();
  updatePanels();
}

function updatePanels() {
  // Object
  const preview = $('object-preview');
  const context = preview.getContext('2d');
  context.clearRect(0, 0, preview.width, preview.height);
  if (state.object) {
    const { box, cutout } = state.object;
    const width = box.x1 - box.x0;
    const height = box.y1 - box.y0;
    const fit = Math.min(preview.width / width, preview.height / height);
    context.imageSmoothingEnabled = false;
    context.drawImage(cutout, box.x0, box.y0, width, height, (preview.width - width * fit) / 2,
      (preview.height - height * fit) / 2, width * fit, height * fit);
    const where = state.paste ? `pasted on image ${state.paste.index}` : 'not pasted yet: press Paste and click an image';
    $('object-info').textContent = `Object from image ${state.object.index}, ${where}.`;
  } else {
    $('object-info').textContent = 'No object yet: paint a region and press Copy.';
  }
  $('paste').disabled = !state.object;

  // Context
  const list = $('context-list');
  list.replaceChildren();
  state.context.forEach((entry, position) => {
    const item = document.createElement('div');
    item.className = 'context-item';
    item.title = `image ${entry.index}`;
    const thumb = newCanvas(56, 56);
    thumb.className = 'thumb';
    const tile = state.tiles.get(entry.index);
    const draw = (image) => {
      const c = thumb.getContext('2d');
      c.imageSmoothingEnabled = false;
      if (image) c.drawImage(image, 0, 0, 56, 56);
      const tinted = newCanvas();
      drawTinted(tinted.getContext('2d'), entry.mask, 'rgba(56, 132, 255, 0.6)');
      c.drawImage(tinted, 0, 0, 56, 56);
    };
    if (tile && tile.image.complete && tile.image.naturalWidth) {
      draw(tile.image);
    } else {
      loadImage(sampleUrl(entry.index, !state.showOriginal)).then(draw, () => draw(null));
    }
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.className = 'remove';
    remove.textContent = '×';
    remove.title = 'remove from the context';
    remove.addEventListener('click', () => removeContext(position));
    const label = document.createElement('span');
    label.textContent = `#${entry.index}`;
    item.append(thumb, remove, label);
    list.append(item);
  });
  $('context-info').textContent = state.context.length
    ? `${state.context.length} context region${state.context.length > 1 ? 's' : ''}.`
    : 'No context: the paste region is used.';

  // History
  const history = $('history');
  history.replaceChildren();
  for (const edit of state.applied) {
    const item = document.createElement('li');
    item.textContent = `${edit.id}: layer ${edit.layer}, ${edit.solver}, rank ${edit.rank}, ` +
      `loss ${edit.goal_loss_initial.toFixed(4)} → ${edit.goal_loss_final.toFixed(4)}`;
    history.append(item);
  }
  $('undo').disabled = state.applied.length === 0 || state.jobRunning;
  $('revert').disabled = state.applied.length === 0 || state.jobRunning;
  $('download-patch').disabled = state.applied.length === 0;
  $('execute').disabled = state.jobRunning;
  const hasContext = state.context.length > 0;
  $('show-matches').disabled = !hasContext;
  $('search').disabled = !hasContext;
}

// ---------------------------------------------------------------------------
// Context matches and search

function contextBody() {
  if (!state.context.length) throw new Error('Add at least one region to the context first.');
  return {
    key: state.context.map((entry) => [entry.index, maskUrl(entry.mask)]),
    layer: Number($('layer').value),
    rank: Number($('rank').value),
  };
}

function setMatches(on) {
  state.matches = on;
  $('show-matches').textContent = on ? 'Hide context matches' : 'Show context matches';
  $('show-matches').classList.toggle('active', on);
  if (!on) {
    for (const tile of state.tiles.values()) tile.heat.hidden = true;
  }
  renderAllTiles();
}

async function refreshMatches() {
  const body = { ...contextBody(), samples: state.samples, scale: state.scale, edited: !state.showOriginal };
  showMessage('Computing context matches…');
  const result = await api('/api/context', { method: 'POST', body });
  for (const entry of result.images) {
    const tile = state.tiles.get(entry.index);
    if (!tile) continue;
    tile.heat.src = entry.png;
    tile.heat.hidden = false;
  }
  showMessage(`Context matches at layer ${result.layer}: yellow is as strong as the painted context.`);
}

async function toggleMatches() {
  if (state.matches) {
    setMatches(false);
    return;
  }
  setMatches(true);
  try {
    await refreshMatches();
  } catch (error) {
    setMatches(false);
    throw error;
  }
}

async function search() {
  const body = { ...contextBody(), samples: $('search-range').value.trim(), top: 12 };
  showMessage('Searching…');
  const result = await api('/api/search', { method: 'POST', body });
  state.searchResults = result.results;
  const list = $('search-list');
  list.replaceChildren();
  for (const entry of result.results) {
    const item = document.createElement('figure');
    item.className = 'search-item';
    const image = document.createElement('img');
    image.src = sampleUrl(entry.index, !state.showOriginal, Math.max(1, Math.round(64 / state.model.image_size)));
    image.alt = `sample ${entry.index}`;
    const caption = document.createElement('figcaption');
    caption.textContent = `#${entry.index} · ${entry.score.toFixed(2)}`;
    item.append(image, caption);
    list.append(item);
  }
  $('search-results').hidden = false;
  showMessage(`Searched ${result.searched} samples at layer ${result.layer}; best matches first.`);
}

function showSearchResults() {
  if (!state.searchResults.length) return;
  state.samples = state.searchResults.map((entry) => entry.index);
  $('samples').value = state.samples.join(',');
  buildGrid();
}

// ---------------------------------------------------------------------------
// Jobs: statistics and edits run on the server's worker, and the page polls their status.

const taskLabels = { statistics: 'Computing key statistics', solve: 'Solving the rewrite', queued: 'Starting' };

function showJob(status) {
  const running = status.state === 'running';
  $('job').hidden = !running;
  if (!running) return;
  const task = taskLabels[status.task] || status.task;
  $('job-label').textContent = status.kind === 'edit' ? `Edit: ${task.toLowerCase()}` : task;
  const fraction = status.total > 0 ? status.step / status.total : 0;
  $('job-bar').style.width = `${Math.round(fraction * 100)}%`;
  const loss = status.loss !== null && status.loss !== undefined ? ` · loss ${status.loss.toFixed(5)}` : '';
  $('job-detail').textContent = `${status.step} / ${status.total}${loss}`;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Polls until no job runs and returns the last status.
async function waitForJob() {
  state.jobRunning = true;
  updatePanels();
  try {
    for (;;) {
      const status = await api('/api/edit/status');
      showJob(status);
      if (status.state !== 'running') return status;
      await sleep(250);
    }
  } finally {
    state.jobRunning = false;
    updatePanels();
  }
}

async function ensureStatistics(layer) {
  let response;
  try {
    response = await api('/api/statistics', { method: 'POST', body: { layer } });
  } catch (error) {
    if (error.status !== 409) throw error;
    await waitForJob();  // another job runs, so ask again when it is done
    response = await api('/api/statistics', { method: 'POST', body: { layer } });
  }
  if (!response.ready) {
    $('stats-info').textContent = `Computing the statistics of layer ${layer}…`;
    const status = await waitForJob();
    if (status.state === 'failed') throw new Error(status.error);
  }
  $('stats-info').textContent =
    `Statistics of layer ${layer} ready (${state.model.statistics.samples} samples).`;
}

function buildRequest() {
  if (!state.object) throw new Error('Copy an object first: paint a region and press Copy.');
  if (!state.paste) throw new Error('Paste the object first: press Paste and click an image.');
  return {
    object: [state.object.index, maskUrl(state.object.mask)],
    paste: [state.paste.index, maskUrl(state.paste.mask)],
    key: state.context.map((entry) => [entry.index, maskUrl(entry.mask)]),
    layer: Number($('layer').value),
    rank: Number($('rank').value),
    solver: $('solver').value,
    steps: Number($('steps').value),
    sampling: state.model.sampling,
  };
}

async function execute() {
  const request = buildRequest();
  const started = await api('/api/edit', { method: 'POST', body: request });
  showMessage(`Edit ${started.id} started on layer ${started.layer}.`);
  const status = await waitForJob();
  if (status.id !== started.id) return;
  if (status.state === 'done') {
    applyStack(status);
    state.showOriginal = false;
    setPasteMode(false);
    setShowMasks(false);  // show the rewritten samples unobstructed
    refreshImages();
    if (state.matches) await refreshMatches();
    const r = status.result;
    showMessage(`Edit ${r.id} applied to layer ${r.layer}: goal loss ${r.goal_loss_initial.toFixed(4)} → ` +
      `${r.goal_loss_final.toFixed(4)} in ${r.seconds.toFixed(2)} s. The grid now shows the edited model.`, 'success');
  } else if (status.state === 'cancelled') {
    showMessage(`Edit ${started.id} cancelled.`);
  } else {
    throw new Error(`Edit ${started.id} failed: ${status.error}`);
  }
}

function applyStack(info) {
  state.revision = info.revision;
  state.applied = info.applied || [];
  updatePanels();
}

async function undo() {
  const info = await api('/api/undo', { method: 'POST' });
  applyStack(info);
  refreshImages();
  showMessage(info.undone ? 'Undid the last edit.' : 'Nothing to undo.');
}

async function revert() {
  const info = await api('/api/revert', { method: 'POST' });
  applyStack(info);
  refreshImages();
  showMessage(info.reverted ? 'Reverted to the original model.' : 'No edits to revert.');
}

function downloadPatch() {
  if (!state.applied.length) return;
  window.location.href = '/api/patch';
}

// ---------------------------------------------------------------------------
// Saved requests

async function refreshSavedList(selected) {
  const { requests } = await api('/api/requests');
  const select = $('saved-requests');
  select.replaceChildren();
  for (const name of requests) {
    const option = document.createElement('option');
    option.value = option.textContent = name;
    select.append(option);
  }
  if (!requests.length) {
    const placeholder = document.createElement('option');
    placeholder.value = '';
    placeholder.textContent = 'no saved requests';
    select.append(placeholder);
  }
  select.disabled = requests.length === 0;
  if (selected) select.value = selected;
  $('load-request').disabled = requests.length === 0;
}

async function saveRequest() {
  const name = $('request-name').value.trim();
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(name)) {
    throw new Error('Name the request with 1 to 64 letters, digits, "-" or "_".');
  }
  await api(`/api/requests/${name}`, { method: 'PUT', body: buildRequest() });
  await refreshSavedList(name);
  showMessage(`Saved request "${name}".`, 'success');
}

async function loadRequest() {
  const name = $('saved-requests').value;
  if (!name) return;
  const request = await api(`/api/requests/${encodeURIComponent(name)}`);
  await applyRequest(request);
  $('request-name').value = name;
  showMessage(`Loaded request "${name}".`, 'success');
}

// Restores the object, paste and context of a request (reference format plus our fields).
async function applyRequest(request) {
  if (request.layer !== undefined && request.layer !== null) $('layer').value = String(request.layer);
  if (request.rank) $('rank').value = String(request.rank);
  if (request.solver) $('solver').value = request.solver;
  if (request.steps) $('steps').value = String(request.steps);

  // Every image the request names must be in the grid.
  const named = [];
  if (request.object) named.push(request.object[0]);
  if (request.paste) named.push(request.paste[0]);
  for (const key of request.key || []) named.push(key[0]);
  const missing = named.filter((index, i) => !state.samples.includes(index) && named.indexOf(index) === i);
  if (missing.length) {
    state.samples = state.samples.concat(missing);
    $('samples').value = state.samples.join(',');
    buildGrid();
  }

  state.object = null;
  state.paste = null;
  if (request.object) {
    const mask = await maskFromUrl(request.object[1]);
    const box = maskBox(mask);
    if (box) state.object = { index: request.object[0], mask, box, cutout: await cutOut(request.object[0], mask) };
  }
  if (request.paste && state.object) {
    const mask = await maskFromUrl(request.paste[1]);
    const pasteBox = maskBox(mask);
    if (pasteBox) {
      placePaste(request.paste[0], (pasteBox.x0 + pasteBox.x1) / 2, (pasteBox.y0 + pasteBox.y1) / 2);
      state.paste.mask = mask;  // keep the saved paste mask exactly
    }
  }
  state.context = [];
  for (const key of request.key || []) state.context.push({ index: key[0], mask: await maskFromUrl(key[1]) });
  setPasteMode(false);
  contextChanged();
  await ensureStatistics(Number($('layer').value));
}

// ---------------------------------------------------------------------------
// Start-up

function parseSamples(text) {
  const samples = [];
  for (const part of text.split(',')) {
    const item = part.trim();
    if (!item) continue;
    const range = item.match(/^(\d+)\s*-\s*(\d+)$/);
    if (range) {
      const first = Number(range[1]);
      const last = Number(range[2]);
      if (last < first || last - first > 255) throw new Error(`Invalid range "${item}": at most 256 samples.`);
      for (let i = first; i <= last; i++) samples.push(i);
    } else if (/^\d+$/.test(item)) {
      samples.push(Number(item));
    } else {
      throw new Error(`Invalid sample "${item}": use numbers and ranges such as 0-11,20.`);
    }
  }
  const unique = [...new Set(samples)];
  if (!unique.length) throw new Error('Give at least one sample number.');
  if (unique.length > 256) throw new Error('Show at most 256 samples at once.');
  const limit = state.model.sample_count;
  const outside = unique.find((index) => index >= limit);
  if (outside !== undefined) throw new Error(`Sample ${outside} does not exist: samples are 0 to ${limit - 1}.`);
  return unique;
}

function setTool(tool) {
  state.tool = tool;
  $('tool-paint').classList.toggle('active', tool === 'paint');
  $('tool-erase').classList.toggle('active', tool === 'erase');
  setPasteMode(false);
}

function bindControls() {
  $('show-samples').addEventListener('click', guarded(() => {
    state.samples = parseSamples($('samples').value);
    buildGrid();
  }));
  $('samples').addEventListener('keydown', (event) => {
    if (event.key === 'Enter') $('show-samples').click();
  });

  $('tool-paint').addEventListener('click', () => setTool('paint'));
  $('tool-erase').addEventListener('click', () => setTool('erase'));
  $('brush-size').addEventListener('input', (event) => {
    state.brush = Number(event.target.value);
  });
  $('clear-masks').addEventListener('click', () => {
    for (const tile of state.tiles.values()) clearTileMask(tile);
  });
  $('toggle-original').addEventListener('click', guarded(async () => {
    state.showOriginal = !state.showOriginal;
    refreshImages();
    if (state.matches) await refreshMatches();
  }));

  $('copy').addEventListener('click', guarded(copyObject));
  $('paste').addEventListener('click', () => {
    setShowMasks(true);
    setPasteMode(!state.pasteMode);
  });
  $('toggle-masks').addEventListener('click', () => setShowMasks(!state.showMasks));
  $('clear-paste').addEventListener('click', () => {
    state.object = null;
    state.paste = null;
    setPasteMode(false);
    renderAllTiles();
    updatePanels();
  });

  $('add-context').addEventListener('click', guarded(addContext));
  $('show-matches').addEventListener('click', guarded(toggleMatches));
  $('search').addEventListener('click', guarded(search));
  $('show-search').addEventListener('click', showSearchResults);

  $('layer').addEventListener('change', guarded(async () => {
    if (state.matches) setMatches(false);
    await ensureStatistics(Number($('layer').value));
  }));
  $('execute').addEventListener('click', guarded(execute));
  $('cancel-job').addEventListener('click', guarded(() => api('/api/edit/cancel', { method: 'POST' })));

  $('undo').addEventListener('click', guarded(undo));
  $('revert').addEventListener('click', guarded(revert));
  $('download-patch').addEventListener('click', downloadPatch);
  $('save-request').addEventListener('click', guarded(saveRequest));
  $('load-request').addEventListener('click', guarded(loadRequest));

  document.addEventListener('keydown', (event) => {
    if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) return;
    if (event.key === 'p') setTool('paint');
    if (event.key === 'e') setTool('erase');
    if (event.key === 'Escape') setPasteMode(false);
  });
}

function fillLayers(model) {
  const select = $('layer');
  select.replaceChildren();
  for (const layer of model.layers) {
    const option = document.createElement('option');
    option.value = String(layer.index);
    option.textContent = `${layer.index}: ${layer.name}, ${layer.value_size}×${layer.value_size}`;
    option.title = `keys ${layer.key_channels} channels at ${layer.key_size}×${layer.key_size}, ` +
      `values ${layer.value_channels} channels at ${layer.value_size}×${layer.value_size}`;
    select.append(option);
  }
  select.value = String(model.default_layer);
}

async function start() {
  bindControls();
  const model = await api('/api/model');
  state.model = model;
  state.scale = model.display_scale;
  state.size = model.image_size * model.display_scale;
  document.documentElement.style.setProperty('--tile', `${state.size}px`);
  $('model-name').textContent = `${model.model} · ${model.architecture} · ${model.image_size}×${model.image_size}`;
  fillLayers(model);
  applyStack(model);
  state.samples = parseSamples($('samples').value);
  buildGrid();
  updatePanels();
  await refreshSavedList();
  await ensureStatistics(model.default_layer);
  document.body.dataset.ready = '1';
}

start().catch(showError);
