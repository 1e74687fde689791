"""The playground page served at `GET /`: one self-contained HTML document (no external
scripts, styles, fonts or images), so it works offline. It shows what is served: the same
prompt and seed with the tuned weights (masks, LoRA or a fine-tuned U-Net) on and off, side
by side, or the base's image alone when only a base is served. Images are scaled up by a
whole factor with nearest-neighbour sampling, so a 64 px sample can be looked at."""

PLAYGROUND_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>MaskUNet playground</title>
<style>
  body { font-family: sans-serif; margin: 2em; max-width: 60em; }
  label { display: inline-block; margin: 0 1em 0.5em 0; }
  input[type=text] { width: 36em; }
  input[type=number] { width: 6em; }
  .pair { display: flex; gap: 2em; margin-top: 1em; }
  figure { margin: 0; }
  img { min-width: 256px; min-height: 256px; image-rendering: pixelated; border: 1px solid #ccc; background: #f4f4f4; }
  #status { color: #555; min-height: 1.2em; }
  .error { color: #b00; }
</style>
</head>
<body>
<h1>MaskUNet playground</h1>
<p id="model">model: loading...</p>
<form id="form">
  <label>prompt <input type="text" id="prompt" value="a large red circle in the center on a blue background"></label><br>
  <label>steps <input type="number" id="steps" value="20" min="1"></label>
  <label>guidance <input type="number" id="guidance" value="7.5" step="0.5" min="0"></label>
  <label>seed <input type="number" id="seed" value="0" min="0"></label>
  <button type="submit" id="generate">Generate</button>
</form>
<p id="status"></p>
<p id="compare"></p>
<div class="pair">
  <figure id="tuned-figure"><img id="tuned" alt="tuned"><figcaption id="tuned-caption">tuned</figcaption></figure>
  <figure><img id="plain" alt="base U-Net"><figcaption>base U-Net</figcaption></figure>
</div>
<script>
const base = window.location.pathname.replace(/\\/$/, "");
const $ = (id) => document.getElementById(id);

async function describeModel() {
  const response = await fetch(base + "/v1/model");
  const info = await response.json();
  if (!response.ok) { $("model").textContent = "model: " + info.error.message; return; }
  const reg = info.registry ? " (" + info.registry.name + " v" + info.registry.version +
    (info.registry.alias ? " @" + info.registry.alias : "") + ")" : "";
  $("model").textContent = "model: " + info.source + reg;
  tuning = info.tuning;
  if (tuning) {
    $("tuned-caption").textContent = TUNING_NAMES[tuning] + " on";
  } else {
    $("tuned-figure").remove();
    $("compare").textContent = "only a base is served: there is nothing to compare it with";
  }
}

const TUNING_NAMES = {masks: "masks", lora: "LoRA", full: "fine-tuned U-Net"};
let tuning = null;

function show(id, result) {
  const img = $(id);
  img.onload = () => {  // a whole scale factor: every pixel becomes a square of pixels
    const factor = Math.max(1, Math.floor(256 / img.naturalWidth));
    img.style.width = (img.naturalWidth * factor) + "px";
    img.style.height = (img.naturalHeight * factor) + "px";
  };
  img.src = "data:image/png;base64," + result.images[0];
}

async function generateOne(masks) {
  const body = {prompt: $("prompt").value, num_inference_steps: Number($("steps").value),
                guidance_scale: Number($("guidance").value), seed: Number($("seed").value), masks: masks};
  const response = await fetch(base + "/v1/generate", {method: "POST",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const result = await response.json();
  if (!response.ok) { throw new Error((result.error.field || "") + ": " + result.error.message); }
  return result;
}

async function generateBoth(event) {
  if (event) { event.preventDefault(); }
  $("status").className = ""; $("status").textContent = "generating...";
  const started = performance.now();
  try {
    const plain = generateOne(false);
    if (tuning) { show("tuned", await generateOne(true)); }
    const base_image = await plain;
    show("plain", base_image);
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    $("status").textContent = "seed " + base_image.seed + ", " + seconds + " s";
    document.body.dataset.generated = "true";
  } catch (error) {
    $("status").className = "error"; $("status").textContent = String(error.message || error);
  }
}

$("form").addEventListener("submit", generateBoth);
describeModel().then(() => {
  if (new URLSearchParams(window.location.search).has("autorun")) { generateBoth(); }
});
</script>
</body>
</html>
"""
