"""`edgeport explain --html`: the page's content, its layout at scale, and what a real
browser (Debian's headless chromium) renders from it."""

import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgeport
from edgeport.cli import cli
from edgeport.cli.spec import load_factory
from edgeport.devtools.graph import HEAD_ROWS, TAIL_ROWS, layout
from edgeport.devtools.html import PORTABLE_COLOR, palette, render_html
from torch_backend import TorchOpsBackend, registry_with

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (CI installs it: apt-get install -y chromium)"
)
WINDOW = (1400, 1000)
MOBILENET = f"{Path(__file__).parents[2] / 'examples' / 'models.py'}:mobilenet_v2"


def chromium(page, *args, tmp_path):
    """Run headless chromium on ``page`` (a file:// URL) with ``args``; return stdout."""
    profile = tmp_path / "chromium-profile"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               f"--window-size={WINDOW[0]},{WINDOW[1]}", *args, page]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def read_png(path):
    """Decode an 8-bit RGB/RGBA, non-interlaced PNG (what chromium writes) to an array."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    channels = 3 if color == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + width * channels)
    out = np.zeros((height, width * channels), dtype=np.int32)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        up = out[y - 1] if y else np.zeros_like(line)
        if kind == 0:
            out[y] = line
        elif kind == 2:
            out[y] = (line + up) % 256
        else:  # Sub, Average, Paeth depend on the pixel to the left: go pixel by pixel
            row = np.zeros_like(line)
            for x in range(line.size):
                left = row[x - channels] if x >= channels else 0
                corner = up[x - channels] if x >= channels else 0
                if kind == 1:
                    pred = left
                elif kind == 3:
                    pred = (left + up[x]) // 2
                else:
                    p = left + up[x] - corner
                    pa, pb, pc = abs(p - left), abs(p - up[x]), abs(p - corner)
                    pred = left if pa <= pb and pa <= pc else (up[x] if pb <= pc else corner)
                row[x] = (line[x] + pred) % 256
            out[y] = row
    return out.reshape(height, width, channels)[:, :, :3]


def pixels_near(image, hex_color, tolerance=30):
    rgb = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image - rgb).max(axis=2) <= tolerance).sum())


def synthetic_report(n_nodes=500, backends=("npu", "cpu")):
    """A placement report shaped like a 500-node model's: runs of nodes alternating
    between delegates and portable, a few of them long, with boundary values."""
    rng = np.random.default_rng(0)
    nodes, partitions, values, pid, i = [], [], {}, 0, 0
    previous = "x"
    values["x"] = {"dtype": "float32", "shape": [1, 64], "bytes": 256}
    while i < n_nodes:
        backend = ("portable", *backends)[pid % 3]
        size = int(min(n_nodes - i, rng.choice([1, 2, 3, 40])))
        names = [f"n{i + k}" for k in range(size)]
        for name in names:
            reasons = {} if backend != "portable" else {b: f"{b} has no kernel for aten.op{i % 7}" for b in backends}
            nodes.append({"name": name, "op": f"aten.op{i % 7}.default", "backend": backend, "partition": pid,
                          "reasons": reasons, "source": f'File "model.py", line {i}, in forward'})
            i += 1
        partitions.append({"id": pid, "backend": backend, "nodes": size, "node_names": names, "inputs": [previous],
                           "outputs": [names[-1]], "boundary_bytes": 512, "fallback": None})
        values[names[-1]] = {"dtype": "float32", "shape": [1, 64], "bytes": 256}
        previous, pid = names[-1], pid + 1
    return {"nodes": nodes, "partitions": partitions, "values": values}


def test_a_500_node_graph_collapses_long_runs_and_keeps_every_node_accounted_for():
    report = synthetic_report()
    picture = layout(report, ["x"], [report["partitions"][-1]["outputs"][0]])
    rows = [r for b in picture.boxes if b.partition is not None for r in b.rows]
    shown = [r.node for r in rows if r.node]
    hidden = [n for r in rows for n in r.hidden]
    assert sorted(shown + hidden) == sorted(n["name"] for n in report["nodes"])
    assert len(rows) < 250  # the long runs are collapsed
    assert max(len(b.rows) for b in picture.boxes if b.partition is not None) == HEAD_ROWS + TAIL_ROWS + 1
    for upper, lower in zip(picture.boxes, picture.boxes[1:]):  # a chain: each box below the last
        assert lower.y >= upper.y + upper.h

    page = render_html(report, ["x"], [report["partitions"][-1]["outputs"][0]])
    assert len(page) < 1_500_000
    assert page.count('class="box') == len(report["partitions"]) + 2  # + the inputs and outputs boxes
    assert "http://" not in page and "https://" not in page and "<link" not in page and " src=" not in page


def test_colours_portable_grey_and_each_backend_its_own():
    colors = palette(synthetic_report())
    assert colors["portable"] == PORTABLE_COLOR
    assert len({colors["npu"], colors["cpu"], PORTABLE_COLOR}) == 3


# -- MobileNetV2 lowered to a mixed program (the test backend takes convs and activations;
#    batch norms and the classifier's reshapes are forced to portable) -----------------


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    model, inputs = load_factory(MOBILENET)
    backend = TorchOpsBackend(ops=("convolution", "hardtanh", "add", "mean", "addmm"))
    program = edgeport.export(model, inputs, ["torchops"], registry=registry_with(backend))
    path = tmp_path_factory.mktemp("mixed") / "mobilenet_v2.edgeport"
    program.save(path)
    return path, program.report()


@pytest.fixture
def explained(mixed, tmp_path):
    path, report = mixed
    page = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["explain", str(path), "--html", str(page)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return page, report


def test_the_page_lists_every_node_and_every_declined_one(explained):
    page, report = explained
    text = page.read_text()
    drawn = len(re.findall(r'<g class="node" data-node=', text))
    collapsed = sum(int(n) for n in re.findall(r'data-hidden="(\d+)"', text))
    assert drawn + collapsed == len(report["nodes"]) == 153  # the classifier's weight transpose is folded at export
    declined = [n for n in report["nodes"] if n["reasons"]]
    assert text.count("<tr data-partition=") == len(declined) > 50
    assert "torchops has no kernel for aten._native_batch_norm_legit_no_training.default" in text
    assert text.count('class="copy-mark"') > 50  # every delegate partition copies in and out
    biggest = max(report["values"].values(), key=lambda v: v["bytes"])
    assert f'data-bytes="{biggest["bytes"]}"' in text


@needs_chromium
def test_chromium_renders_the_mixed_mobilenet_page(explained, tmp_path):
    page, report = explained
    url = page.as_uri() + "#q=batch_norm"  # the filter box starts filled from the URL
    dom = chromium(url, "--dump-dom", tmp_path=tmp_path)
    assert 'data-ready="1"' in dom  # the script ran to the end
    assert len(re.findall(r'data-partition="\d+" data-backend=', dom)) == len(report["partitions"])
    legend = re.search(r'<div id="legend">(.*?)</div>', dom, re.S).group(1)
    assert 'data-backend="portable"' in legend and 'data-backend="torchops"' in legend
    norms = sum(1 for n in report["nodes"] if "batch_norm" in n["op"])
    declined = sum(1 for n in report["nodes"] if n["reasons"])
    assert f"{norms} of {declined} shown" in dom
    view = re.search(r'<svg id="graph" viewBox="([^"]+)"', dom).group(1)
    assert len(view.split()) == 4 and float(view.split()[2]) > 0

    shot = tmp_path / "report.png"
    chromium(page.as_uri(), f"--screenshot={shot}", tmp_path=tmp_path)
    image = read_png(shot)
    assert image.shape[:2] == (WINDOW[1], WINDOW[0])
    colors = palette(report)
    assert pixels_near(image, colors["torchops"]) > 2000  # delegated nodes, drawn in their backend's colour
    assert pixels_near(image, PORTABLE_COLOR, tolerance=12) > 1000  # portable ones in grey


@pytest.mark.slow  # ~30 s: MobileNetV2 through the QNN toolchain
@needs_chromium
def test_chromium_renders_mobilenet_on_qualcomm_and_cpu(tmp_path):
    registry = edgeport.default_registry()
    names = registry.entries()
    if not all(b in names and names[b].backend.availability().can_compile for b in ("qualcomm", "cpu")):
        pytest.skip("the qualcomm and cpu backends are not both installed and able to compile here")
    model, inputs = load_factory(MOBILENET)
    program = edgeport.export(model, inputs, ["qualcomm", "cpu"])
    path = tmp_path / "mobilenet_v2.edgeport"
    program.save(path)
    page = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["explain", str(path), "--html", str(page), "--json"], catch_exceptions=False)
    report = json.loads(result.output)
    dom = chromium(page.as_uri(), "--dump-dom", tmp_path=tmp_path)
    assert 'data-ready="1"' in dom
    placed = {n["backend"] for n in report["nodes"]}
    for backend in placed:
        assert f'<tr data-backend="{backend}">' in dom  # the summary row of each backend used
    shot = tmp_path / "report.png"
    chromium(page.as_uri(), f"--screenshot={shot}", tmp_path=tmp_path)
    image = read_png(shot)
    colors = palette(report)
    assert all(pixels_near(image, colors[b]) > 500 for b in placed)


def test_a_quantized_programs_page_shows_its_ops_and_scheme_not_its_quantize_nodes():
    """A qualcomm + cpu int8 program's page listed its Q/DQ nodes in the partition boxes
    and, because the cpu declines qualcomm's uint8, as declined nodes, burying the one
    real fallback; and it said nothing of the scheme."""
    def node(name, op, backend, partition, reasons=None):
        return {"name": name, "op": op, "backend": backend, "partition": partition, "reasons": reasons or {},
                "source": 'File "model.py", line 3, in forward'}

    uint8 = {"cpu": "uint8 is not supported"}
    nodes = [node("quantize_per_tensor", "quantized_decomposed.quantize_per_tensor.default", "qualcomm", 0, uint8),
             node("dequantize_per_tensor", "quantized_decomposed.dequantize_per_tensor.default", "qualcomm", 0, uint8),
             node("linear", "aten.linear.default", "qualcomm", 0),
             node("mysquash", "qa.mysquash.default", "portable", 1, {"qualcomm": "no QNN op", "cpu": "no lowering"})]
    report = {"nodes": nodes, "values": {"x": {"dtype": "float32", "shape": [4], "bytes": 16},
                                         "linear": {"dtype": "float32", "shape": [4], "bytes": 16}},
              "partitions": [{"id": 0, "backend": "qualcomm", "nodes": 3, "inputs": ["x"], "outputs": ["linear"],
                              "boundary_bytes": 32, "fallback": None},
                             {"id": 1, "backend": "portable", "nodes": 1, "inputs": ["linear"], "outputs": ["mysquash"],
                              "boundary_bytes": 16, "fallback": None}],
              "quantization": {"scheme": "int8", "description": "int8: activations and weights in 8 bits",
                               "backends": {"qualcomm": "quantizes 1 of its 1 op(s) with int8"}}}
    page = render_html(report, ["x"], ["mysquash"])
    boxes = [r.label for b in layout(report, ["x"], ["mysquash"]).boxes for r in b.rows]
    assert "linear" in boxes and not any("quantize" in label for label in boxes)
    assert page.count("<tr data-partition=") == 1 and "mysquash" in page  # the one real fallback
    assert "2 nodes (and 2 quantize/dequantize)" in page and "1 nodes (50%) delegated" in page
    assert "<h2>Quantization</h2>" in page and "qualcomm: quantizes 1 of its 1 op(s) with int8" in page

    # the text summary (export, explain) counts ops as the page does, its Q/DQ nodes apart:
    # it said "qualcomm 3 75%" where the page said 1 and 50%
    from edgeport.cli._output import console
    from edgeport.cli.explain import print_summary

    with console.capture() as captured:
        print_summary(report)
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in captured.get().splitlines() if line.startswith("│")}
    assert rows == {"qualcomm": ["1", "50%", "2", "1"], "portable": ["1", "50%", "0", "1"]}


def test_a_share_is_never_rounded_to_0_or_100_percent():
    """"portable 1 0%" read as a torch-free program."""
    from edgeport.devtools.html import share

    assert [share(1, 400), share(399, 400), share(1, 3), share(0, 5), share(5, 5), share(0, 0)] == [
        "<1%", ">99%", "33%", "0%", "100%", "0%"]
