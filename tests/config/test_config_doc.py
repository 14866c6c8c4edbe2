"""README's config reference is generated from the schema; a stale table fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from proxy.config_doc import BEGIN, END, render_table, replace_section, rows

ROOT = Path(__file__).resolve().parents[2]


def test_readme_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    assert BEGIN in readme and END in readme
    current = readme.split(BEGIN, 1)[1].split(END, 1)[0]
    assert current == "\n" + render_table(), "run: python -m proxy.config_doc --write README.md"


def test_rows_cover_the_schema():
    table = {path: (default, text) for path, default, text in rows()}
    assert table["server.max_body_size"][0] == "`10MiB`"
    assert table["containers.<class>.readiness.interval"][0] == "`5ms`"
    assert table["backend.docker.reuse_stopped"][0] == "`true`"
    assert table["routes[].path"][0] == "required" and table["containers.<class>.keepalive"][0] == "none"
    assert "backend.socket" not in table  # the flat legacy form is accepted, not documented
    assert all(text for _, text in table.values())


def test_cli_print_write_and_check(tmp_path):
    doc = tmp_path / "README.md"
    doc.write_text(f"# x\n\n{BEGIN}\nold\n{END}\n\ntail\n")
    run = [sys.executable, "-m", "proxy.config_doc"]
    stale = subprocess.run([*run, "--check", str(doc)], cwd=ROOT, capture_output=True, text=True)
    assert stale.returncode == 1 and "stale" in stale.stderr
    assert subprocess.run([*run, "--write", str(doc)], cwd=ROOT).returncode == 0
    assert doc.read_text() == replace_section(f"# x\n\n{BEGIN}\nold\n{END}\n\ntail\n", render_table())
    assert subprocess.run([*run, "--check", str(doc)], cwd=ROOT).returncode == 0
    printed = subprocess.run(run, cwd=ROOT, capture_output=True, text=True)
    assert printed.stdout == render_table()
