#!/usr/bin/env python3
"""Python side of tests/conformance.rs: the checks that need the libraries
of the tools venv (install.sh). Run with the venv's python:

    $STACKC_TOOLS_PREFIX/bin/python tests/tools/upstream_check.py KIND FILE

KIND is one of:
  probe [synapse|signedjson] import what the checks need, print versions
  synapse HOMESERVER [--schema SCHEMA]
                             Synapse's own config loader on a copy, its
                             appservice loader, the log config; with
                             --schema, top-level keys the schema does not
                             know are reported as notes (Synapse ignores
                             unknown keys). The JSON schema itself is run
                             by conformance.rs (check-jsonschema).
  signing-key FILE           signedjson.key.read_signing_keys (Synapse's reader)
  appservice FILE            synapse.config.appservice.load_appservices
  element FILE               Element Web's start-up rules for config.json

Output: `NOTE: ...` and `FAIL: ...` lines. Exit 0: passed; 1: failed;
2: usage or internal error. Nothing is written outside a temp dir.
Env: STACKC_TOOL_TIMEOUT (seconds per subprocess, default 60).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

# Synapse's container layout: ./synapse is mounted at /data. Strings equal
# to this prefix or below it are mapped onto a copy of the directory that
# holds homeserver.yaml.
DATA_PREFIX = "/data"

TIMEOUT = int(os.environ.get("STACKC_TOOL_TIMEOUT", "60") or "60")


class Report:
    def __init__(self) -> None:
        self.fails: list[str] = []
        self.notes: list[str] = []
        self.scrub: list[tuple[str, str]] = []

    def clean(self, msg: str) -> str:
        # Longest first: the data dir lives inside the scratch dir.
        for path, label in sorted(self.scrub, key=lambda p: -len(p[0])):
            msg = msg.replace(path, label)
        return " | ".join(line.strip() for line in msg.splitlines() if line.strip())

    def fail(self, msg: str) -> None:
        self.fails.append(self.clean(msg))

    def note(self, msg: str) -> None:
        self.notes.append(self.clean(msg))

    def finish(self) -> int:
        for n in self.notes:
            print(f"NOTE: {n}")
        for f in self.fails:
            print(f"FAIL: {f}")
        return 1 if self.fails else 0


# Synapse's loaders log (with tracebacks) what they also raise; the raised
# error is what gets reported.
logging.getLogger().addHandler(logging.NullHandler())


def load_yaml(path: Path):
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def last_lines(text: str, n: int) -> str:
    return "\n".join([l for l in text.splitlines() if l.strip()][-n:])


# ---------------------------------------------------------------- synapse

# Output of `python -m synapse.config` that says nothing about the file.
SYNAPSE_CHATTER = re.compile(r"^\s*-*\s*$|^Config parses OK!$")


def map_data_paths(obj, target: str, mapped: set):
    if isinstance(obj, dict):
        return {k: map_data_paths(v, target, mapped) for k, v in obj.items()}
    if isinstance(obj, list):
        return [map_data_paths(v, target, mapped) for v in obj]
    if isinstance(obj, str) and (obj == DATA_PREFIX or obj.startswith(DATA_PREFIX + "/")):
        mapped.add(obj)
        return target + obj[len(DATA_PREFIX) :]
    return obj


def check_synapse(path: Path, schema: Path | None) -> int:
    import yaml

    r = Report()
    try:
        cfg = load_yaml(path)
    except yaml.YAMLError as e:
        r.fail(f"YAML: {e}")
        return r.finish()
    if not isinstance(cfg, dict):
        r.fail("YAML: the top level is not a mapping")
        return r.finish()

    with tempfile.TemporaryDirectory(prefix="stackc-synapse-") as tmp:
        # Synapse's loader is not read-only (it creates media_store_path),
        # so /data is mapped onto a copy of the file's directory, never onto
        # the bundle itself.
        data = Path(tmp) / "data"
        shutil.copytree(path.parent, data, symlinks=False, ignore_dangling_symlinks=True)
        r.scrub += [(str(data), "<dir>"), (tmp, "<scratch>"), (str(path.parent.resolve()), "<dir>")]
        mapped: set = set()
        cfg2 = map_data_paths(cfg, str(data), mapped)
        if mapped:
            r.note(f"{len(mapped)} path(s) under {DATA_PREFIX}/ read from the directory of {path.name}")
        media = cfg2.get("media_store_path")
        if isinstance(media, str) and os.path.isabs(media) and not media.startswith(str(data) + "/"):
            # Outside /data it would be created on this machine.
            cfg2["media_store_path"] = str(Path(tmp) / "media_store")
            r.note(f"media_store_path {media} not created here (the loader mkdirs it)")
        copy = Path(tmp) / "homeserver.yaml"
        copy.write_text(yaml.safe_dump(cfg2, sort_keys=False), encoding="utf-8")

        # 1. Synapse's own loader: every config section's read_config.
        try:
            p = subprocess.run(
                [sys.executable, "-m", "synapse.config", "-c", str(copy)],
                cwd=data,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            r.fail(f"python -m synapse.config: timed out after {TIMEOUT}s")
            return r.finish()
        # The long warning about the default trusted key server (matrix.org)
        # is about Synapse's defaults, not about the file.
        from synapse.config.key import TRUSTED_KEY_SERVER_NOT_CONFIGURED_WARN

        text = (p.stdout + p.stderr).replace(TRUSTED_KEY_SERVER_NOT_CONFIGURED_WARN, "")
        said = [l for l in text.splitlines() if not SYNAPSE_CHATTER.search(l)]
        if p.returncode != 0:
            r.fail("synapse.config: " + ("\n".join(said) or f"exit status {p.returncode}"))
            return r.finish()
        if said:
            r.note("synapse.config said: " + "\n".join(said))

        # 2. Appservice registrations, with the loader Synapse runs at start-up.
        files = cfg2.get("app_service_config_files") or []
        if files:
            from synapse.config.appservice import load_appservices

            try:
                services = load_appservices(str(cfg.get("server_name")), files)
                r.note(f"{len(services)} appservice registration(s) loaded")
            except Exception as e:  # noqa: BLE001 -- any error is the finding
                r.fail(f"load_appservices: {type(e).__name__}: {e}")

        # 3. log_config: only read when Synapse starts; it must be there and
        # be a logging dictConfig mapping.
        log_config = cfg2.get("log_config")
        if log_config is not None:
            lc = Path(str(log_config))
            if not lc.is_file():
                r.fail(f"log_config {cfg.get('log_config')}: file not found")
            else:
                try:
                    d = load_yaml(lc)
                    if not isinstance(d, dict) or "version" not in d:
                        r.fail(f"log_config {cfg.get('log_config')}: not a logging dictConfig mapping (no 'version')")
                except yaml.YAMLError as e:
                    r.fail(f"log_config {cfg.get('log_config')}: YAML: {e}")

    # Misspelt options pass Synapse (it ignores unknown keys): a note only,
    # as the schema is older than this Synapse.
    if schema is not None:
        props = (load_yaml(schema) or {}).get("properties", {})
        unknown = sorted(k for k in cfg if k not in props)
        if unknown:
            r.note("top-level keys the Synapse schema does not list: " + ", ".join(map(str, unknown)))
    return r.finish()


def check_signing_key(path: Path) -> int:
    from signedjson.key import read_signing_keys

    r = Report()
    try:
        text = path.read_text(encoding="utf-8")
        # As Synapse does it (KeyConfig.read_signing_keys): blank lines are
        # dropped, every other line must be `ALG VERSION BASE64`.
        lines = [line for line in text.splitlines() if line.strip()]
        blank = len(text.splitlines()) - len(lines)
        keys = read_signing_keys(lines)
        if keys:
            r.note("keys: " + ", ".join(f"{k.alg}:{k.version}" for k in keys))
        else:
            r.fail("read_signing_keys: no key in the file (Synapse: No signing keys in file)")
        if blank:
            r.note(f"{blank} blank line(s), skipped as Synapse does (signedjson alone fails on them)")
    except Exception as e:  # noqa: BLE001
        r.fail(f"read_signing_keys: {type(e).__name__}: {e}")
    return r.finish()


def server_name_near(path: Path) -> str | None:
    for d in (path.parent, path.parent.parent):
        for name in ("homeserver.yaml", "homeserver.yml"):
            hs = d / name
            if hs.is_file():
                try:
                    cfg = load_yaml(hs)
                except Exception:  # noqa: BLE001 -- reported by the synapse check
                    continue
                if isinstance(cfg, dict) and cfg.get("server_name"):
                    return str(cfg["server_name"])
    return None


def check_appservice(path: Path) -> int:
    from synapse.config.appservice import load_appservices

    r = Report()
    server_name = server_name_near(path)
    if server_name is None:
        server_name = "example.org"
        r.note("no homeserver.yaml with server_name next to it: checked as example.org")
    try:
        services = load_appservices(server_name, [str(path)])
        r.note(f"id {services[0].id}, server_name {server_name}")
    except Exception as e:  # noqa: BLE001
        r.fail(f"load_appservices: {type(e).__name__}: {e}")
    return r.finish()


# ---------------------------------------------------------------- element

# Element Web has no schema for config.json. These types are those of its
# IConfigOptions interface (src/IConfigOptions.ts); the server rules are
# those of verifyServerConfig (src/vector/app.tsx), which refuses to start.
ELEMENT_TYPES: dict[str, tuple[type, ...]] = {}
for _keys, _types in (
    (
        "default_server_name default_hs_url default_is_url fallback_hs_url brand map_style_url permalink_prefix "
        "update_base_url default_theme default_country_code default_device_display_name integrations_ui_url "
        "integrations_rest_url bug_report_endpoint_url uisi_autorageshake_app widget_build_url audio_stream_url "
        "logout_redirect_url custom_translations_url analytics_owner privacy_policy_url help_url "
        "help_encryption_url",
        (str,),
    ),
    (
        "disable_custom_urls disable_guests disable_login_language_selector disable_3pid_login force_verification "
        "mobile_guide_toast default_federate show_labs_settings widget_build_url_ignore_dm sso_immediate_redirect "
        "dangerously_allow_unsafe_and_insecure_passwords",
        (bool,),
    ),
    (
        "default_server_config branding embedded_pages desktop_builds mobile_builds setting_defaults features sentry "
        "jitsi jitsi_widget voip element_call sso_redirect_options report_event room_directory posthog "
        "enable_presence_by_hs_url latex_maths_delims user_notice feedback oidc_static_clients oidc_metadata",
        (dict,),
    ),
    ("integrations_widgets_urls terms_and_conditions_links modules", (list,)),
    ("default_widget_container_height sync_timeline_limit", (int, float)),
):
    for _k in _keys.split():
        ELEMENT_TYPES[_k] = _types


def is_http_url(v) -> bool:
    if not isinstance(v, str):
        return False
    u = urlparse(v)
    return u.scheme in ("http", "https") and bool(u.netloc)


def check_element(path: Path) -> int:
    r = Report()
    dups: list[str] = []

    def pairs_hook(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                dups.append(k)
            seen.add(k)
        return dict(pairs)

    def no_constant(name):
        # Python accepts NaN/Infinity; JSON.parse in the browser does not.
        raise ValueError(f"{name} is not JSON")

    try:
        cfg = json.loads(
            path.read_text(encoding="utf-8"), object_pairs_hook=pairs_hook, parse_constant=no_constant
        )
    except (ValueError, UnicodeDecodeError) as e:
        r.fail(f"JSON: {e}")
        return r.finish()
    if not isinstance(cfg, dict):
        r.fail("JSON: the top level is not an object")
        return r.finish()
    if dups:
        r.fail("duplicate keys (the browser keeps the last one): " + ", ".join(sorted(set(dups))))

    wk, sn, hs = cfg.get("default_server_config"), cfg.get("default_server_name"), cfg.get("default_hs_url")
    if hs and (wk or sn):
        r.fail(
            "default_hs_url together with default_server_config or default_server_name "
            "(Element: invalid_configuration_mixed_server)"
        )
    if not (wk or sn or hs):
        r.fail(
            "none of default_server_config, default_server_name, default_hs_url "
            "(Element: invalid_configuration_no_server)"
        )
    if wk:
        home = wk.get("m.homeserver") if isinstance(wk, dict) else None
        if not isinstance(home, dict) or "base_url" not in home:
            r.fail("default_server_config: m.homeserver.base_url missing")
        elif not is_http_url(home["base_url"]):
            r.fail(f"default_server_config: m.homeserver.base_url {home['base_url']!r} is not an http(s) URL")
        ident = wk.get("m.identity_server") if isinstance(wk, dict) else None
        if ident is not None and not (isinstance(ident, dict) and is_http_url(ident.get("base_url"))):
            r.fail("default_server_config: m.identity_server.base_url is not an http(s) URL")
    if hs and not is_http_url(hs):
        r.fail(f"default_hs_url {hs!r} is not an http(s) URL")

    names = {str: "a string", bool: "a boolean", dict: "an object", list: "an array", int: "a number"}
    for k, v in cfg.items():
        want = ELEMENT_TYPES.get(k)
        if want is None:
            continue
        ok = isinstance(v, want) and not (isinstance(v, bool) and bool not in want)
        if ok and isinstance(v, float) and not math.isfinite(v):
            ok = False
        if not ok:
            r.fail(f"{k} must be {names[want[0]]}")
    feats = cfg.get("features")
    if isinstance(feats, dict):
        bad = sorted(k for k, v in feats.items() if not isinstance(v, bool))
        if bad:
            r.fail("features: values must be booleans: " + ", ".join(bad))
    unknown = sorted(k for k in cfg if k not in ELEMENT_TYPES)
    if unknown:
        r.note("keys Element's IConfigOptions does not list: " + ", ".join(unknown))
    return r.finish()


# ---------------------------------------------------------------- main


def probe(what: list[str]) -> int:
    """Imports what the checks named in `what` need (synapse, signedjson)."""
    import importlib.metadata as md

    import yaml  # noqa: F401

    dists = ["PyYAML"]
    if "synapse" in what:
        import synapse.config.appservice  # noqa: F401
        import synapse.config.homeserver  # noqa: F401

        dists.append("matrix-synapse")
    if "synapse" in what or "signedjson" in what:
        import signedjson.key  # noqa: F401

        dists.append("signedjson")
    unknown = set(what) - {"synapse", "signedjson"}
    if unknown:
        print(f"probe: unknown {sorted(unknown)}", file=sys.stderr)
        return 2
    print(" ".join(f"{d}=={md.version(d)}" for d in dists))
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[1] == "probe":
        return probe(argv[2:])
    if len(argv) < 3 or argv[1] not in ("synapse", "signing-key", "appservice", "element"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    kind, path = argv[1], Path(argv[2])
    if not path.is_file():
        print(f"FAIL: no such file: {path}")
        return 1
    if kind == "synapse":
        schema = None
        rest = argv[3:]
        if rest[:1] == ["--schema"] and len(rest) == 2:
            schema = Path(rest[1])
        elif rest:
            print(__doc__.strip(), file=sys.stderr)
            return 2
        return check_synapse(path, schema)
    return {"signing-key": check_signing_key, "appservice": check_appservice, "element": check_element}[kind](path)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
