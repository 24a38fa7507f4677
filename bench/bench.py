#!/usr/bin/env python3
"""Measures stackc check / build against `nickel export` of the same entry
file, alternating the tools run by run, and writes docs/benchmarks.md with a
table and an SVG plot. Called by bench/run, which builds and installs what
this needs.

Usage: bench.py STACKC NICKEL KEY RUNS INPUT...   (INPUT = label=path.ncl)"""
import os, platform, statistics, subprocess, sys, tempfile, time

stackc, nickel, key, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
inputs = [a.split("=", 1) for a in sys.argv[5:]]
repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
modules = os.path.join(repo, "modules")
tmp = tempfile.mkdtemp(prefix="stackc-bench-")


def run(cmd):
    """Wall time (s) and peak RSS (MiB) of one run; fails loudly."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{err}")
    return wall, usage.ru_maxrss / 1024


def tools(path, label):
    out = os.path.join(tmp, f"out-{label}")
    cache = os.path.join(tmp, f"cache-{label}")
    evals = os.path.join(tmp, f"evals-{label}")
    # The examples' external secrets are encrypted to the committed TEST identity.
    identity = os.path.join(repo, "tests", "keys", "TEST-ONLY-age-identity.txt")
    build = [stackc, "build", "--quiet", "-o", out, "--secrets-key", key, "--identity", identity]
    return {
        "nickel export": [nickel, "export", "-I", modules, path],
        # Evaluated every time: what a changed stack costs.
        "stackc check": [stackc, "check", "--quiet", "--no-cache", path],
        # An unchanged stack: the evaluation cache answers (filled by the
        # warm-up run), as for a repeated pre-commit hook.
        "stackc check (cached)": [stackc, "check", "--quiet", "--cache-dir", evals, path],
        # Warm: the key cache holds the RSA keys and digests (filled by the
        # warm-up run) and the previous bundle is replaced; the evaluation
        # is done afresh (its cache entry removed first, by `sh`, ~1 ms), so
        # build / check compares the same work plus writing.
        "stackc build": ["sh", "-c", 'rm -rf "$1/eval" && shift && exec "$@"', "sh", cache] + build + ["--cache-dir", cache, path],
        # Cold: nothing cached, every key derived.
        "stackc build (cold)": build + ["--no-cache", path],
        # Anchors, alternating with the rest so each ratio comes from one
        # run: Nickel's fixed cost (a one-line file), and for the generated
        # stacks the same records without the stdlib.
        "trivial export": [nickel, "export", trivial_file],
    } | ({"bare records": [nickel, "export", bare(path)]} if label.startswith("services-") else {})


def bare(path):
    """The same records without the stdlib: what the data itself costs."""
    out = os.path.join(tmp, "bare-" + os.path.basename(path))
    with open(path) as f:
        lines = f.read().split("\n")
    lines[0] = "let stackc = { stack = fun x => x, secret = { hex = fun r => r } } in"
    with open(out, "w") as f:
        f.write("\n".join(lines))
    return out


results = {}
walls = {}  # every run's wall time, by input and tool, in round order
trivial_file = os.path.join(tmp, "trivial.ncl")
with open(trivial_file, "w") as f:
    f.write("{ a = 1 }\n")
big = [l for l, _ in inputs if l.startswith("services-") and int(l.split("-")[1]) >= 10000]

for label, path in inputs:
    cmds = tools(path, label)
    if label in big:
        # 10 000 services: that they complete, and how time grows; one run.
        s = {t: run(cmds[t]) for t in ("nickel export", "stackc check", "bare records")}
        results[label] = {t: (w, m, w, w) for t, (w, m) in s.items()}
        walls[label] = {t: [w] for t, (w, _) in s.items()}
        print(label, {t: round(v[0] * 1000, 1) for t, v in results[label].items()}, file=sys.stderr)
        continue
    for c in cmds.values():  # warm-up: page cache, the output dir exists (warm build)
        run(c)
    samples = {t: [] for t in cmds}
    for _ in range(runs):
        for t, c in cmds.items():  # alternate the tools within each round
            samples[t].append(run(c))
    results[label] = {
        t: (statistics.median(w for w, _ in s), max(m for _, m in s), min(w for w, _ in s), max(w for w, _ in s))
        for t, s in samples.items()
    }
    walls[label] = {t: [w for w, _ in s] for t, s in samples.items()}
    print(label, {t: round(v[0] * 1000, 1) for t, v in results[label].items()}, file=sys.stderr)


def paired(label, a, b):
    """Median over the rounds of a's time / b's time in the same round: the
    machine's drift cancels out within a round."""
    return statistics.median(x / y for x, y in zip(walls[label][a], walls[label][b]))


def ms(x):
    return f"{x * 1000:.1f}"


cpu = "unknown"
try:
    with open("/proc/cpuinfo") as f:
        cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
except (OSError, StopIteration):
    pass
nickel_version = subprocess.run([nickel, "--version"], capture_output=True, text=True).stdout.strip()
stackc_version = subprocess.run([stackc, "--version"], capture_output=True, text=True).stdout.strip()
# The anchors, each measured alternating with its input's other commands.
anchor = {l: r["bare records"] for l, r in results.items() if "bare records" in r}
trivials = {l: r["trivial export"][0] for l, r in results.items() if "trivial export" in r}

md = [
    "# Benchmarks",
    "",
    "Generated by `bench/run`; do not edit by hand. Medians of "
    f"{runs} runs per tool and input, the tools alternating run by run, after one warm-up run each "
    "(10 000 services: one run, no warm-up).",
    "",
    f"Machine: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
    f"{stackc_version} (release build), {nickel_version} (`cargo install nickel-lang-cli`, same Nickel as embedded).",
    "",
    "- `check`: evaluated afresh (`--no-cache`), what a changed stack costs; `check (cached)`: an unchanged",
    "  stack answered from the evaluation cache (docs/cli.md#the-cache), as a repeated pre-commit hook.",
    "- `build`: warm key cache (the derived RSA keys and digests) and a previous bundle replaced",
    "  atomically; evaluated afresh, so `build / check` is the cost of writing. `build (cold)` derives",
    "  every secret afresh (`--no-cache`): that is what RSA key generation costs.",
    "- Anchors: `nickel export` of the same entry file (it pays the stdlib too), of a one-line file",
    "  (`trivial`: Nickel's fixed cost), and of the generated stacks' records without the stdlib",
    "  (`bare`: the first line replaced by `let stackc = { stack = fun x => x, secret = { hex = fun r => r } } in`).",
    "  Each is run in turn with the input's other commands, so each ratio below comes from one alternating run.",
    "- Inputs: the examples, and generated stacks of N native services (`bench/gen.py`: 10 per machine,",
    "  each with two ports, a proxy site and a secret).",
    "",
    f"`nickel export` of the trivial file: {ms(statistics.median(trivials.values()))} ms (median over the inputs' runs).",
    "",
    "| input | nickel export (ms) | stackc check (ms) | check (cached) (ms) | stackc build (ms) | build / check | build cold (ms) | peak RSS export / check / build (MiB) |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
]
for label, r in results.items():
    e, c = r["nickel export"], r["stackc check"]
    if "stackc build" not in r:
        md.append(f"| {label} | {ms(e[0])} | {ms(c[0])} | | | | | {e[1]:.0f} / {c[1]:.0f} / |")
        continue
    cached, b, cold = r["stackc check (cached)"], r["stackc build"], r["stackc build (cold)"]
    md.append(
        f"| {label} | {ms(e[0])} | {ms(c[0])} | {ms(cached[0])} | {ms(b[0])} | {paired(label, 'stackc build', 'stackc check'):.2f} | {ms(cold[0])} | "
        f"{e[1]:.0f} / {c[1]:.0f} / {b[1]:.0f} |"
    )
bare_rows = list(anchor)
if bare_rows:
    md += ["", "| generated stack | bare records export (ms) | stackc check (ms) | check / bare | peak RSS bare / check (MiB) | check / bare RSS |",
           "| --- | ---: | ---: | ---: | --- | ---: |"]
    for l in bare_rows:
        a, c = anchor[l], results[l]["stackc check"]
        md.append(f"| {l} | {ms(a[0])} | {ms(c[0])} | {paired(l, 'stackc check', 'bare records'):.2f} | {a[1]:.0f} / {c[1]:.0f} | {c[1] / a[1]:.2f} |")

sizes = [(int(l.split("-")[1]), r) for l, r in results.items() if l.startswith("services-")]
sizes.sort()
by = dict(sizes)


def verdict(value, limit):
    return f"{value:.2f} (target ≤ {limit}: {'met' if value <= limit else 'not met'})"


md += ["", "## Targets", "", "Each ratio is the median over the rounds of the two commands' times in the same round.", ""]
targets = []
if 1000 in by:
    c = by[1000]["stackc check"]
    targets.append(f"- 1000 services, check / bare records: time {verdict(paired('services-1000', 'stackc check', 'bare records'), 2)}, "
                   f"peak memory {verdict(c[1] / anchor['services-1000'][1], 2)}")
if 1000 in by and 10000 in by:
    targets.append(f"- 10 000 services complete; check time / 1000 services: {verdict(by[10000]['stackc check'][0] / by[1000]['stackc check'][0], 11)}")
if "example:lair-chat" in results:
    r = results["example:lair-chat"]
    targets.append(f"- lair-chat, check / trivial export: {verdict(paired('example:lair-chat', 'stackc check', 'trivial export'), 2.5)}")
    targets.append(f"- lair-chat unchanged, cached check / trivial export: {verdict(paired('example:lair-chat', 'stackc check (cached)', 'trivial export'), 1.5)}")
worst = max((paired(l, "stackc check (cached)", "trivial export"), l) for l, r in results.items() if "stackc check (cached)" in r)
targets.append(f"- every input unchanged, cached check / trivial export, worst ({worst[1]}): {worst[0]:.2f}")
if 100 in by:
    targets.append(f"- 100 services, warm build / check: {verdict(paired('services-100', 'stackc build', 'stackc check'), 1.2)}")
if 100 in by and 1000 in by:
    for t in ("stackc check", "stackc build"):
        ratio = by[1000][t][0] / by[100][t][0]
        targets.append(f"- {t}: 1000 services take {ratio:.1f}x the 100-service time")
md += targets

# SVG plot: time against topology size, log-log, one line per tool.
if sizes:
    import math

    W, H, P = 640, 360, 50
    xs = [math.log10(n) for n, _ in sizes]
    ys = [math.log10(r[t][0] * 1000) for _, r in sizes for t in r]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = math.floor(min(ys)), math.ceil(max(ys))
    X = lambda v: P + (v - x0) / (x1 - x0) * (W - 2 * P)
    Y = lambda v: H - P - (v - y0) / (y1 - y0) * (H - 2 * P)
    colours = {"nickel export": "#555", "bare records": "#2ca02c", "stackc check": "#1f77b4", "stackc check (cached)": "#9467bd", "stackc build": "#d62728", "stackc build (cold)": "#ff9896"}
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<line x1="{P}" y1="{H - P}" x2="{W - P}" y2="{H - P}" stroke="black"/>',
           f'<line x1="{P}" y1="{P}" x2="{P}" y2="{H - P}" stroke="black"/>',
           f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle">services (log scale)</text>',
           f'<text x="14" y="{H / 2}" transform="rotate(-90 14 {H / 2})" text-anchor="middle">median time, ms (log scale)</text>']
    for n, _ in sizes:
        svg.append(f'<text x="{X(math.log10(n)):.1f}" y="{H - P + 16}" text-anchor="middle">{n}</text>')
    for e in range(y0, y1 + 1):
        svg.append(f'<text x="{P - 6}" y="{Y(e) + 4:.1f}" text-anchor="end">{10 ** e:g}</text>')
        svg.append(f'<line x1="{P}" y1="{Y(e):.1f}" x2="{W - P}" y2="{Y(e):.1f}" stroke="#ddd"/>')
    for i, (t, colour) in enumerate(colours.items()):
        pts = " ".join(f"{X(math.log10(n)):.1f},{Y(math.log10(r[t][0] * 1000)):.1f}" for n, r in sizes if t in r)
        svg.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{pts}"/>')
        svg.append(f'<text x="{P + 10}" y="{P + 14 * i}" fill="{colour}">{t}</text>')
    svg.append("</svg>")
    with open(os.path.join(repo, "docs", "benchmarks.svg"), "w") as f:
        f.write("\n".join(svg) + "\n")
    md += ["", "![time against topology size](benchmarks.svg)"]

notes_path = os.path.join(repo, "bench", "NOTES.md")
if os.path.exists(notes_path):
    md += ["", open(notes_path).read().rstrip()]
with open(os.path.join(repo, "docs", "benchmarks.md"), "w") as f:
    f.write("\n".join(md) + "\n")
print("wrote docs/benchmarks.md", file=sys.stderr)
