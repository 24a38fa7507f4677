#!/usr/bin/env python3
"""Writes a synthetic stack with N native services: 10 per machine, each with
an HTTP port behind the machine's Caddy and a secret, one public port per
machine. Usage: gen.py N OUT.ncl"""
import sys

n, out = int(sys.argv[1]), sys.argv[2]
per = 10
lines = ['let stackc = import "stackc.ncl" in', "stackc.stack {", f'  name = "bench-{n}",', "  machines = {"]
for m in range((n + per - 1) // per):
    lines.append(f"    m{m} = {{")
    lines.append(f'      address = "10.{m // 250}.{m % 250}.1",')
    lines.append("      native = {")
    sites = []
    for s in range(min(per, n - m * per)):
        name = f"svc{m * per + s}"
        public = "public = true" if s == 0 else ""
        lines += [
            f"        {name} = {{",
            f'          description = "Service {name}",',
            f'          command = "/usr/local/bin/{name} --serve",',
            f'          state_directory = "/var/lib/{name}",',
            f"          ports.http = {{ port = {8000 + s} }},",
            f"          ports.rpc = {{ port = {9000 + s}, {public} }},",
            f'          environment = {{ RUST_LOG = "info", PORT = std.to_string ports.http.port }},',
            f'          secret_environment.TOKEN = stackc.secret.hex {{ name = "{name}-token" }},',
            "        },",
        ]
        sites.append(f'        "{name}.m{m}.example.com".upstream = {{ service = "{name}", port = "http" }},')
    lines.append("      },")
    lines.append("      proxy.sites = {")
    lines += sites
    lines.append("      },")
    lines.append("    },")
lines += ["  },", "}"]
with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
