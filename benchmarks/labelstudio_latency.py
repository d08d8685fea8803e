"""Interactive latency of the Label Studio backend: HTTP round trip vs the bare predictor.

One PASamPredictor with ViT-B-sized random weights (``vit_b`` builder, no checkpoint) and a
1024x1024 image (an ISBI EM section, upscaled) whose embedding is cached. The same click is
timed (a) as ``POST /predict`` with a smart-keypoint context through uvicorn on 127.0.0.1
(image load, prompts, decoder, boundary band, RLE, JSON, HTTP) and (b) as a bare
``predictor.predict`` call, alternately; the ratio of medians is printed (target <= 1.3x).
Also times the brush RLE encoding of a 2048x2048 mask (ours and label-studio-sdk's).

    python benchmarks/labelstudio_latency.py [--repeats 30] [--device cpu] [--variant vit_b]

Not part of the test run.
"""

import argparse
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image

from label_studio_backend.app import create_app
from label_studio_backend.images import ImageLoader
from label_studio_backend.model import PASamBackend
from pasam_plugins.lsformat import mask_to_rle
from pasam_plugins.modeling import build_pasam
from pasam_plugins.predictor import PASamPredictor
from pasam_plugins.runtime import retain_freed_memory

ISBI = Path(__file__).resolve().parents[2] / "shared/data/isbi2012-em/image/0.png"
CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="Cell"/></BrushLabels>
<KeyPointLabels name="tag2" toName="image" smart="true"><Label value="Cell"/></KeyPointLabels>
</View>"""


def test_image(size: int) -> np.ndarray:
    if ISBI.is_file():
        em = Image.open(ISBI).convert("L").resize((size, size), Image.BILINEAR)
        return np.asarray(em)
    rng = np.random.default_rng(0)
    return (rng.random((size, size)) * 255).astype(np.uint8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="vit_b")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    # the allocator setting `pasam serve` starts with (pasam_plugins.runtime)
    retained = retain_freed_memory()

    import uvicorn

    torch.manual_seed(0)
    model = build_pasam(args.variant)
    predictor = PASamPredictor(model, device=args.device)
    img = test_image(args.size)
    tmp = Path(tempfile.mkdtemp(prefix="pasam-ls-bench-"))
    Image.fromarray(img).save(tmp / "em.png")
    backend = PASamBackend(predictor=predictor, loader=ImageLoader(local_files_root=tmp))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(backend), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.1)

    x, y = 41.3, 57.9  # percent
    body = {
        "tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=em.png"}}],
        "label_config": CONFIG,
        "project": "1.1",
        "params": {"context": {"result": [{
            "id": "k", "from_name": "tag2", "to_name": "image", "type": "keypointlabels",
            "original_width": args.size, "original_height": args.size, "is_positive": True,
            "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": ["Cell"]}}]}},
    }
    session = requests.Session()
    sync = torch.cuda.synchronize if predictor.device.type == "cuda" else (lambda: None)

    t0 = time.perf_counter()
    r = session.post(url + "/predict", json=body, timeout=600)  # embeds the image once
    r.raise_for_status()
    print(f"device {predictor.device}, {args.variant}, {args.size}x{args.size}: "
          f"first request (encoder) {time.perf_counter() - t0:.2f} s; "
          f"large freed buffers retained (as pasam serve runs): {retained}")
    pts = np.array([[x / 100 * args.size - 0.5, y / 100 * args.size - 0.5]])
    labels = np.array([1])

    def http():
        session.post(url + "/predict", json=body, timeout=600).raise_for_status()

    def bare():
        predictor.set_image(img)  # cached: no encoder run, like the server's path
        predictor.predict(point_coords=pts, point_labels=labels, multimask_output=True)

    def bare_no_set():
        predictor.predict(point_coords=pts, point_labels=labels, multimask_output=True)

    for fn in (http, bare, bare_no_set):
        fn()  # warm-up
    times: dict[str, list[float]] = {"http": [], "bare": [], "bare_no_set": []}
    for _ in range(args.repeats):
        for name, fn in (("http", http), ("bare", bare), ("bare_no_set", bare_no_set)):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    runs = predictor.encoder_runs
    print(f"median interactive request over HTTP : {med['http']:8.1f} ms")
    print(f"median bare predictor (set_image+predict, cached): {med['bare']:8.1f} ms")
    print(f"median bare predictor.predict only   : {med['bare_no_set']:8.1f} ms")
    print(f"ratio HTTP / bare predict            : {med['http'] / med['bare_no_set']:.2f}x (target <= 1.3x)")
    print(f"ratio HTTP / bare set_image+predict  : {med['http'] / med['bare']:.2f}x")
    print(f"encoder runs: {runs} (1 = the image was embedded once)")
    server.should_exit = True
    thread.join(timeout=10)

    # RLE of a 2048x2048 mask: a smooth object (as predicted masks are) and label-studio-sdk
    from label_studio_sdk.converter import brush

    yy, xx = np.mgrid[:2048, :2048]
    mask = ((yy - 1000) ** 2 / 700**2 + (xx - 900) ** 2 / 500**2) < 1
    mask |= ((yy - 300) ** 2 + (xx - 1700) ** 2) < 150**2
    u8 = mask.astype(np.uint8) * 255
    rle = mask_to_rle(mask)  # warm-up of both sides: import-time and first-call costs out
    sdk = brush.mask2rle(u8)
    assert rle == sdk
    ours, theirs = [], []
    for i in range(7):  # alternating, the order flipping every repeat; medians of both
        for fn, acc in ((lambda: mask_to_rle(mask), ours), (lambda: brush.mask2rle(u8), theirs))[
            :: 1 if i % 2 == 0 else -1
        ]:
            t = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t)
    print(
        f"RLE 2048x2048 mask: {statistics.median(ours) * 1000:.1f} ms vs label-studio-sdk "
        f"mask2rle {statistics.median(theirs) * 1000:.1f} ms (medians of 7 warm calls each, "
        f"identical bytes, {len(rle)} bytes)"
    )


if __name__ == "__main__":
    main()
