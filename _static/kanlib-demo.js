/* The live demo page (book/demo.md): KANs exported to ONNX, run by ONNX Runtime Web in WebAssembly.
 *
 * Jupyter Book loads every _static/*.js on every page; this one acts only where a page has an element with
 * data-kanlib-demo="digits" or "example1". It loads ../_static/ort/ort.wasm.min.js and the files of
 * _static/demo/ (demo.json and the models; kanlib.book.demo writes them), all from the site itself.
 *
 * For tests: window.kanlibDemo = {ready, classify(pixels64), setExample(x1, x2), idle(), digitsInput(),
 * last: {digits, example1}}; ready resolves to {ok: true} or {ok: false, message} when the models are missing.
 */
(function () {
  "use strict";

  const STATIC = new URL(".", document.currentScript.src);
  const ORT_SCRIPT = new URL("ort/ort.wasm.min.js", STATIC).href;
  const ORT_WASM = new URL("ort/", STATIC).href;
  const DEMO = new URL("demo/", STATIC);
  const TIMED_RUNS = 5;   // inference time: median of this many runs
  const BITMAP = 32;      // the UCI digits' bitmap, counted in BLOCK x BLOCK blocks
  const BLOCK = 4;
  const PEN = 32;         // stroke width on the drawing canvas, in canvas pixels (the canvas is 280 wide): about
                          // 4 of the 32 bitmap pixels for a digit as tall as the canvas, as bold as the data set's
  const SVG = "http://www.w3.org/2000/svg";

  const MODEL_TITLES = {float: "Float KAN", int8: "8-bit lookup-table KAN"};

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  /* A two-column grid of [name, value] pairs; a value is text or a node. */
  function factList(className, pairs) {
    const list = el("div", {class: className});
    for (const [name, value] of pairs) {
      list.append(el("span", {class: "kanlib-demo-key", text: name}), el("span", {class: "kanlib-demo-val"}, value));
    }
    return list;
  }

  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    return node;
  }

  function median(values) {
    const sorted = [...values].sort((a, b) => a - b);
    const mid = sorted.length >> 1;
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  }

  function softmax(logits) {
    const top = Math.max(...logits);
    const exps = logits.map((v) => Math.exp(v - top));
    const total = exps.reduce((a, b) => a + b, 0);
    return exps.map((v) => v / total);
  }

  function formatBytes(bytes) {
    return bytes >= 1e6 ? `${(bytes / 1e6).toFixed(2)} MB` : `${(bytes / 1e3).toFixed(1)} kB`;
  }

  function formatMs(ms) {
    return ms >= 10 ? `${ms.toFixed(1)} ms` : ms >= 0.1 ? `${ms.toFixed(2)} ms` : `${(ms * 1000).toFixed(0)} µs`;
  }

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const script = el("script", {src});
      script.onload = resolve;
      script.onerror = () => reject(new Error(`could not load ${src}`));
      document.head.append(script);
    });
  }

  /* Runs one job at a time; a job asked for while one runs replaces any job still waiting (the latest input wins). */
  class Latest {
    constructor() { this.running = null; this.waiting = null; }
    run(job) {
      return new Promise((resolve, reject) => {
        if (this.waiting) this.waiting.resolve(null);
        this.waiting = {job, resolve, reject};
        if (!this.running) this.next();
      });
    }
    next() {
      const item = this.waiting;
      this.waiting = null;
      if (!item) { this.running = null; return; }
      this.running = item.job().then(item.resolve, item.reject).finally(() => this.next());
    }
    idle() {
      return this.running ? this.running.then(() => this.idle()) : Promise.resolve();
    }
  }

  // --- the 8x8 input ----------------------------------------------------------------------------------------

  /* The strokes (lists of [x, y] canvas points) as the 64 intensities of scikit-learn's digits: the strokes'
   * bounding box scaled to fit a 32x32 bitmap keeping its aspect, centred, thresholded, set pixels counted in
   * 4x4 blocks (0..16) and divided by 16. Null when nothing is drawn. */
  function strokesToPixels(strokes) {
    const points = strokes.flat();
    if (!points.length) return null;
    const half = PEN / 2;
    const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
    const left = Math.min(...xs) - half, right = Math.max(...xs) + half;
    const top = Math.min(...ys) - half, bottom = Math.max(...ys) + half;
    const scale = BITMAP / Math.max(right - left, bottom - top);
    const canvas = el("canvas", {width: BITMAP, height: BITMAP});
    const ctx = canvas.getContext("2d", {willReadFrequently: true});
    const dx = (BITMAP - (right - left) * scale) / 2, dy = (BITMAP - (bottom - top) * scale) / 2;
    ctx.setTransform(scale, 0, 0, scale, dx - left * scale, dy - top * scale);
    drawStrokes(ctx, strokes);
    const alpha = ctx.getImageData(0, 0, BITMAP, BITMAP).data;
    const blocks = BITMAP / BLOCK, counts = new Array(blocks * blocks).fill(0);
    for (let y = 0; y < BITMAP; y++) {
      for (let x = 0; x < BITMAP; x++) {
        if (alpha[(y * BITMAP + x) * 4 + 3] >= 128) counts[Math.floor(y / BLOCK) * blocks + Math.floor(x / BLOCK)] += 1;
      }
    }
    return counts.map((count) => count / (BLOCK * BLOCK));
  }

  function drawStrokes(ctx, strokes) {
    ctx.lineWidth = PEN;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.strokeStyle = "#000";
    ctx.fillStyle = "#000";
    for (const stroke of strokes) {
      if (stroke.length === 1) {
        ctx.beginPath();
        ctx.arc(stroke[0][0], stroke[0][1], PEN / 2, 0, 2 * Math.PI);
        ctx.fill();
        continue;
      }
      ctx.beginPath();
      ctx.moveTo(stroke[0][0], stroke[0][1]);
      for (const [x, y] of stroke.slice(1)) ctx.lineTo(x, y);
      ctx.stroke();
    }
  }

  /* 64 intensities in [0, 1] drawn as an 8x8 grey image (ink dark) filling `canvas`. */
  function drawPixels(canvas, pixels) {
    const ctx = canvas.getContext("2d");
    const side = Math.sqrt(pixels.length), cell = canvas.width / side;
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    pixels.forEach((value, index) => {
      const shade = Math.round(255 * (1 - value));
      ctx.fillStyle = `rgb(${shade},${shade},${shade})`;
      ctx.fillRect((index % side) * cell, Math.floor(index / side) * cell, Math.ceil(cell), Math.ceil(cell));
    });
  }

  // --- the demo ---------------------------------------------------------------------------------------------

  class Demo {
    constructor(panels) {
      this.panels = panels;
      this.queue = new Latest();
      this.last = {digits: null, example1: null};
      this.ready = this.start();
    }

    async start() {
      this.say("kanlib-demo-status", "Loading the models…");
      let manifest;
      try {
        const response = await fetch(new URL("demo.json", DEMO));
        if (!response.ok) throw new Error(`demo.json: HTTP ${response.status}`);
        manifest = await response.json();
        await loadScript(ORT_SCRIPT);
        ort.env.wasm.wasmPaths = ORT_WASM;
        ort.env.wasm.numThreads = 1;   // a static host is not cross-origin isolated: no shared memory
        this.manifest = manifest;
        this.sessions = {};
        this.bytes = {};
        const wanted = {};
        if (this.panels.digits) Object.assign(wanted, {float: manifest.models.float, int8: manifest.models.int8});
        if (this.panels.example1) wanted.example1 = manifest.models.example1;
        for (const [key, model] of Object.entries(wanted)) {
          const file = await fetch(new URL(model.file, DEMO));
          if (!file.ok) throw new Error(`${model.file}: HTTP ${file.status}`);
          const bytes = new Uint8Array(await file.arrayBuffer());
          this.bytes[key] = bytes.byteLength;
          this.sessions[key] = await ort.InferenceSession.create(bytes, {executionProviders: ["wasm"]});
        }
      } catch (error) {
        const message = "The models of this demo are not part of this copy of the site, or could not be loaded " +
          `(${error.message}). They are written by the chapter "Deploying a KAN" and copied into the site when it ` +
          "is built.";
        this.say("kanlib-demo-missing", message);
        return {ok: false, message};
      }
      if (this.panels.digits) {
        this.buildDigits(this.panels.digits);
        await this.pickSample(0);
      }
      if (this.panels.example1) {
        this.buildExample(this.panels.example1);
        await this.moveSliders();
      }
      return {ok: true};
    }

    idle() { return this.queue.idle(); }

    /* One paragraph in place of every panel's content. */
    say(className, text) {
      for (const panel of Object.values(this.panels)) panel.replaceChildren(el("p", {class: className, text}));
    }

    // --- digits ---

    buildDigits(panel) {
      const digits = this.manifest.digits;
      this.strokes = [];
      this.canvas = el("canvas", {width: 280, height: 280, class: "kanlib-demo-canvas",
                                  "aria-label": "Drawing area: draw a digit with the mouse, a finger or a pen"});
      const clear = el("button", {type: "button", class: "kanlib-demo-button", text: "Clear"});
      clear.addEventListener("click", () => this.clearDrawing());
      this.inputCanvas = el("canvas", {width: 80, height: 80, class: "kanlib-demo-input",
                                       "aria-label": "The 8x8 input the models see"});
      const samples = el("div", {class: "kanlib-demo-samples", role: "group",
                                 "aria-label": "Sample digits from the test set"});
      this.sampleButtons = digits.samples.map((sample, index) => {
        const thumb = el("canvas", {width: 32, height: 32});
        drawPixels(thumb, sample.pixels);
        const button = el("button", {type: "button", class: "kanlib-demo-sample",
                                     title: `Test image ${sample.index}, a ${sample.label}`,
                                     "aria-label": `Sample: a ${sample.label} from the test set`}, thumb);
        button.addEventListener("click", () => this.pickSample(index));
        samples.append(button);
        return button;
      });
      this.cards = {};
      const cards = el("div", {class: "kanlib-demo-cards"});
      for (const key of ["float", "int8"]) {
        const model = this.manifest.models[key];
        const bars = el("div", {class: "kanlib-demo-bars"});
        const rows = [];
        for (let c = 0; c < digits.classes; c++) {
          const fill = el("span", {class: "kanlib-demo-bar-fill"});
          const value = el("span", {class: "kanlib-demo-bar-value"});
          const row = el("div", {class: "kanlib-demo-bar"},
                         el("span", {class: "kanlib-demo-bar-label", text: String(c)}),
                         el("span", {class: "kanlib-demo-bar-track"}, fill), value);
          bars.append(row);
          rows.push({row, fill, value});
        }
        const prediction = el("span", {class: "kanlib-demo-prediction", text: "–"});
        const time = el("span", {text: "–"});
        const accuracy = `${(100 * model.test_accuracy).toFixed(1)} %`;
        const facts = factList("kanlib-demo-facts", [["inference", time], ["file", formatBytes(this.bytes[key])],
                                                     ["test accuracy", accuracy]]);
        const card = el("div", {class: "kanlib-demo-card", "data-model": key},
                        el("div", {class: "kanlib-demo-card-title", text: MODEL_TITLES[key]}),
                        el("div", {class: "kanlib-demo-card-head"}, el("span", {text: "prediction"}), prediction),
                        bars, facts);
        cards.append(card);
        this.cards[key] = {prediction, rows, time};
      }
      const input = el("div", {class: "kanlib-demo-inputbox"}, this.inputCanvas,
                       el("div", {class: "kanlib-demo-caption", text: "The 8 × 8 input the networks see"}));
      const side = el("div", {class: "kanlib-demo-side"}, input, clear,
                      el("p", {class: "kanlib-demo-hint", text: "Draw a digit, or pick a test image below."}));
      panel.replaceChildren(el("div", {class: "kanlib-demo-digits"}, this.canvas, side), samples, cards);
      this.listen(this.canvas);
    }

    listen(canvas) {
      canvas.style.touchAction = "none";
      let drawing = false;
      const point = (event) => {
        const box = canvas.getBoundingClientRect();
        return [(event.clientX - box.left) * canvas.width / box.width,
                (event.clientY - box.top) * canvas.height / box.height];
      };
      canvas.addEventListener("pointerdown", (event) => {
        event.preventDefault();
        if (!this.strokes.length) this.paintCanvas();
        drawing = true;
        try {
          canvas.setPointerCapture(event.pointerId);
        } catch (error) { /* a synthetic pointer (tests) has nothing to capture */ }
        this.strokes.push([point(event)]);
        this.paintCanvas();
        this.update();
      });
      canvas.addEventListener("pointermove", (event) => {
        if (!drawing) return;
        this.strokes[this.strokes.length - 1].push(point(event));
        this.paintCanvas();
        this.update();
      });
      const stop = () => { if (drawing) { drawing = false; this.update(); } };
      canvas.addEventListener("pointerup", stop);
      canvas.addEventListener("pointercancel", stop);
    }

    paintCanvas() {
      const ctx = this.canvas.getContext("2d");
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.fillStyle = "#fff";
      ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
      drawStrokes(ctx, this.strokes);
    }

    clearDrawing() {
      this.strokes = [];
      this.paintCanvas();
      this.sampleButtons.forEach((button) => button.classList.remove("kanlib-demo-picked"));
      drawPixels(this.inputCanvas, new Array(64).fill(0));
      for (const card of Object.values(this.cards)) {
        card.prediction.textContent = "–";
        card.time.textContent = "–";
        for (const row of card.rows) {
          row.fill.style.width = "0";
          row.value.textContent = "";
          row.row.classList.remove("kanlib-demo-top");
        }
      }
      this.last.digits = null;
    }

    /* Show sample `index` of demo.json as the input: its 8x8 image drawn large on the canvas, then classified. */
    pickSample(index) {
      const sample = this.manifest.digits.samples[index];
      this.strokes = [];
      drawPixels(this.canvas, sample.pixels);
      this.sampleButtons.forEach((button, i) => button.classList.toggle("kanlib-demo-picked", i === index));
      return this.classify(sample.pixels);
    }

    update() {
      const pixels = strokesToPixels(this.strokes);
      this.sampleButtons.forEach((button) => button.classList.remove("kanlib-demo-picked"));
      if (pixels) this.classify(pixels);
    }

    /* Both models on 64 intensities in [0, 1]; the page shows the result. */
    classify(pixels) {
      if (!Array.isArray(pixels) || pixels.length !== 64) {
        return Promise.reject(new Error(`classify: expected 64 intensities in [0, 1], got ${pixels && pixels.length}`));
      }
      return this.queue.run(async () => {
        const input = new ort.Tensor("float32", Float32Array.from(pixels), [1, 64]);
        const result = {pixels: [...pixels]};
        for (const key of ["float", "int8"]) {
          const times = [];
          let output;
          for (let run = 0; run < TIMED_RUNS; run++) {
            const start = performance.now();
            output = await this.sessions[key].run({input});
            times.push(performance.now() - start);
          }
          const logits = Array.from(output.output.data);
          const probabilities = softmax(logits);
          const prediction = probabilities.indexOf(Math.max(...probabilities));
          result[key] = {logits, probabilities, prediction, ms: median(times)};
        }
        drawPixels(this.inputCanvas, pixels);
        for (const key of ["float", "int8"]) this.showResult(this.cards[key], result[key]);
        this.last.digits = result;
        return result;
      });
    }

    showResult(card, result) {
      card.prediction.textContent = String(result.prediction);
      card.time.textContent = `${formatMs(result.ms)} (median of ${TIMED_RUNS})`;
      result.probabilities.forEach((p, c) => {
        const row = card.rows[c];
        row.fill.style.width = `${(100 * p).toFixed(1)}%`;
        row.value.textContent = p >= 0.995 ? "1.00" : p.toFixed(2);
        row.row.classList.toggle("kanlib-demo-top", c === result.prediction);
      });
    }

    // --- Example 1 ---

    buildExample(panel) {
      const example = this.manifest.example1;
      const [low, high] = example.range;
      this.sliders = example.inputs.map((name, i) => {
        const value = el("output", {class: "kanlib-demo-value"});
        const slider = el("input", {type: "range", min: String(low), max: String(high),
                                    step: String((high - low) / 200),
                                    value: String(i === 0 ? low + 0.25 * (high - low) : low + 0.75 * (high - low)),
                                    "aria-label": name, "data-input": name});
        slider.addEventListener("input", () => this.moveSliders());
        const row = el("label", {class: "kanlib-demo-slider"}, el("span", {class: "kanlib-demo-var", text: name}),
                       slider, value);
        return {slider, value, row};
      });
      const shown = () => el("output", {class: "kanlib-demo-value"});
      this.exampleOut = {kan: shown(), truth: shown(), error: shown()};
      const results = factList("kanlib-demo-facts kanlib-demo-outputs", [
        ["KAN output", this.exampleOut.kan], [`true f = ${example.formula}`, this.exampleOut.truth],
        ["difference", this.exampleOut.error]]);
      const names = [example.inputs, hidden(example.widths[1]), ["y"]];
      this.plots = example.layers.map((layer, l) => {
        const grid = el("div", {class: "kanlib-demo-plots"});
        const plots = [];
        layer.x.forEach((xs, i) => {
          plots.push(layer.phi[i].map((phis, o) => {
            const plot = miniPlot(xs, phis, `${names[l][i]} → ${names[l + 1][o]}`);
            grid.append(plot.node);
            return plot;
          }));
        });
        const caption = l === 0 ? "First layer: an edge from each input to each hidden node"
                                : "Second layer: an edge from each hidden node to the output";
        const title = el("div", {class: "kanlib-demo-layer-title", text: caption});
        return {node: el("section", {class: "kanlib-demo-layer"}, title, grid), plots};
      });
      panel.replaceChildren(el("div", {class: "kanlib-demo-example"},
                                el("div", {class: "kanlib-demo-controls"}, ...this.sliders.map((s) => s.row), results),
                                ...this.plots.map((p) => p.node)));
    }

    moveSliders() {
      const values = this.sliders.map((s) => Number(s.slider.value));
      return this.setExample(values[0], values[1]);
    }

    /* Example 1's network at (x1, x2): its output, every edge's activation edges[l][i][o], and the page updated. */
    setExample(x1, x2) {
      return this.queue.run(async () => {
        const example = this.manifest.example1;
        const input = new ort.Tensor("float32", Float32Array.from([x1, x2]), [1, 2]);
        const output = await this.sessions.example1.run({input});
        const edges = example.layers.map((layer, l) => {
          const tensor = output[`edges_${l}`];
          const [, nIn, nOut] = tensor.dims;
          return Array.from({length: nIn}, (_, i) => Array.from(tensor.data.slice(i * nOut, (i + 1) * nOut)));
        });
        const y = output.output.data[0];
        const truth = Math.exp(Math.sin(Math.PI * x1) + x2 * x2);
        // each layer's inputs: the sliders, then the sum of the previous layer's edges at each node (plus its bias)
        let inputs = [x1, x2];
        example.layers.forEach((layer, l) => {
          edges[l].forEach((row, i) => row.forEach((phi, o) => this.plots[l].plots[i][o].mark(inputs[i], phi)));
          inputs = edges[l][0].map((_, o) => edges[l].reduce((sum, row) => sum + row[o], 0) +
                                             (layer.bias ? layer.bias[o] : 0));
        });
        [x1, x2].forEach((value, i) => {
          this.sliders[i].slider.value = String(value);
          this.sliders[i].value.textContent = value.toFixed(2);
        });
        this.exampleOut.kan.textContent = y.toFixed(4);
        this.exampleOut.truth.textContent = truth.toFixed(4);
        this.exampleOut.error.textContent = (y - truth).toFixed(4);
        const result = {x1, x2, output: y, truth, edges};
        this.last.example1 = result;
        return result;
      });
    }
  }

  function hidden(count) {
    return Array.from({length: count}, (_, j) => `h${j + 1}`);
  }

  /* A small SVG plot of one edge's curve phi(x), with a dot that mark(x, phi) moves. */
  function miniPlot(xs, phis, title) {
    const W = 120, H = 80, PAD = 6;
    const x0 = Math.min(...xs), x1 = Math.max(...xs);
    let y0 = Math.min(...phis), y1 = Math.max(...phis);
    const room = Math.max(y1 - y0, 1e-3) * 0.1;
    y0 -= room; y1 += room;
    const sx = (x) => PAD + (W - 2 * PAD) * (x - x0) / (x1 - x0 || 1);
    const sy = (y) => H - PAD - (H - 2 * PAD) * (y - y0) / (y1 - y0);
    const svg = svgEl("svg", {viewBox: `0 0 ${W} ${H}`, class: "kanlib-demo-plot", role: "img",
                              "aria-label": `Activation of the edge ${title}`});
    svg.append(svgEl("rect", {x: 0.5, y: 0.5, width: W - 1, height: H - 1, class: "kanlib-demo-frame"}));
    if (y0 < 0 && y1 > 0) {
      svg.append(svgEl("line", {x1: PAD, x2: W - PAD, y1: sy(0), y2: sy(0), class: "kanlib-demo-axis"}));
    }
    svg.append(svgEl("polyline", {points: xs.map((x, k) => `${sx(x).toFixed(2)},${sy(phis[k]).toFixed(2)}`).join(" "),
                                  class: "kanlib-demo-curve"}));
    const dot = svgEl("circle", {r: 3.5, cx: -10, cy: -10, class: "kanlib-demo-dot"});
    svg.append(dot);
    const value = el("span", {class: "kanlib-demo-plot-value"});
    const node = el("div", {class: "kanlib-demo-edge"}, svg,
                    el("div", {class: "kanlib-demo-caption"}, el("span", {text: title}), value));
    return {
      node,
      mark(x, phi) {
        // a point past the sampled range is pinned to the frame's edge
        dot.setAttribute("cx", Math.min(W - 2, Math.max(2, sx(x))).toFixed(2));
        dot.setAttribute("cy", Math.min(H - 2, Math.max(2, sy(phi))).toFixed(2));
        value.textContent = `${phi >= 0 ? "" : "−"}${Math.abs(phi).toFixed(2)}`;
      },
    };
  }

  function start() {
    const panels = {};
    for (const node of document.querySelectorAll("[data-kanlib-demo]")) panels[node.dataset.kanlibDemo] = node;
    if (!Object.keys(panels).length) return;
    const demo = new Demo(panels);
    window.kanlibDemo = {
      ready: demo.ready,
      classify: (pixels) => demo.ready.then(() => demo.classify(pixels)),
      setExample: (x1, x2) => demo.ready.then(() => demo.setExample(x1, x2)),
      idle: () => demo.ready.then(() => demo.idle()),
      digitsInput: () => strokesToPixels(demo.strokes || []),
      last: demo.last,
    };
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
