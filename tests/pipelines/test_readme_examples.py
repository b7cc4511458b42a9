"""Every command example in README.md and in the ``--help`` epilogs runs as written, against the shipped data.

How examples are found (nothing to register when a section is added):
- README.md: every line of a fenced ```bash / ```sh / ```console block that begins with ``crfgan `` (after an optional
  ``$ ``), joined with its ``\\`` continuation lines, and every ```python block. ```text blocks are syntax summaries
  (``crfgan preprocess --input URI …``), not examples.
- Epilogs: the lines beginning with ``crfgan `` in the epilog of ``crfgan --help`` and of every stage's and bench's
  ``--help``.

How they run: in document order (README first, then epilogs), in one sandbox folder that looks like a checkout —
``crfgan/data`` (the scans shipped in the package) and ``../shared/data`` (the real-scan collection) — so an example
may use the output of an earlier one (``--output shards`` then ``--data shards``). Commands run in this process
through ``pipelines.cli.main`` on the session's local Ray; ``s3://`` URIs are served by the loopback moto S3 endpoint:
each bucket named in the example is created and every ``--input s3://bucket/prefix`` gets the shipped CT under it.

Tiers: an example is slow (``make test-all``) unless a FAST pattern matches it. Commands that need something this
machine cannot have are skipped, each category with its reason, in EXTERNAL. A new section needs at most one line in
FAST (to run it in CI) or EXTERNAL.
"""

from __future__ import annotations

import os
import re
import shlex
import textwrap

import pytest

from tests.conftest import PACKAGE_DATA, REPO, SHARED_DATA

# regex on the joined command → why it runs in the CI tier (everything else is marked slow)
FAST = {
    r"^crfgan config\b": "prints a config",
    r"^crfgan .*--help\b": "help text only",
    r"^crfgan preprocess --input ../shared/data/mri --input ../shared/data/ct/example_ct.nii.gz --output shards "
    r"--config tiny$": "3 real scans at 32³ (needed by the examples after it)",
    r"^crfgan preprocess --input crfgan/data --output outputs/shards$": "the 2 shipped scans at 32³",
    r"^crfgan train (--local .*|.* --local) .*train\.iterations=50\b": "50 tiny iterations in one process",
    r"^python:": "the README's Python snippets",
}
# regex → reason: commands that need a cluster, a server or credentials this test cannot provide
EXTERNAL = {
    r"\bray job submit\b|--address\b": "needs a running Ray cluster: tests/pipelines/test_jobs.py submits jobs "
                                       "to the local stack",
    r"https?://(?!127\.0\.0\.1)": "needs a remote server",
}


def _readme_examples() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    out = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S):
        if lang == "python":
            out.append("python:" + body)
        elif lang in ("bash", "sh", "console", "shell"):
            out += [c for c in _commands(body) if c.startswith("crfgan ")]
    return out


def _commands(body: str) -> list[str]:
    cmds, cur = [], ""
    for line in body.splitlines():
        line = line.strip()
        line = line[2:] if line.startswith("$ ") else line
        cur = f"{cur} {line}".strip() if cur else line
        if cur.endswith("\\"):
            cur = cur[:-1].rstrip()
            continue
        cmd = re.split(r"\s+#", cur, maxsplit=1)[0].strip()  # trailing comment
        if cmd:
            cmds.append(cmd)
        cur = ""
    return cmds


def _epilog_examples() -> list[str]:
    from pipelines.cli import build_parser

    out = []
    parsers = [build_parser()]
    while parsers:
        p = parsers.pop(0)
        out += [c for c in _commands(p.epilog or "") if c.startswith("crfgan ")]
        for action in p._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                parsers += list(action.choices.values())
    return list(dict.fromkeys(out))


def _params():
    params = []
    for source, examples in (("README", _readme_examples()), ("epilog", _epilog_examples())):
        for i, cmd in enumerate(examples):
            marks = []
            external = next((why for rx, why in EXTERNAL.items() if re.search(rx, cmd)), None)
            if external:
                marks.append(pytest.mark.skip(reason=external))
            elif not any(re.search(rx, cmd) for rx in FAST):
                marks.append(pytest.mark.slow)
            label = cmd.splitlines()[0] if not cmd.startswith("python:") else "python snippet"
            params.append(pytest.param(cmd, id=f"{source}{i}: {label[:90]}", marks=marks))
    return params


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("readme")
    work = root / "work"
    (work / "crfgan").mkdir(parents=True)
    os.symlink(PACKAGE_DATA, work / "crfgan" / "data")
    (root / "shared").mkdir()
    os.symlink(SHARED_DATA, root / "shared" / "data")
    return work


def _prepare_s3(cmd: str, endpoint: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    args = shlex.split(cmd)
    for i, a in enumerate(args):
        for uri in re.findall(r"s3://([^/'\"?]+)/?([^'\"?]*)", a):
            bucket, prefix = uri
            if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
                s3.create_bucket(Bucket=bucket)
            if i > 0 and args[i - 1] == "--input":
                s3.upload_file(str(PACKAGE_DATA / "example_ct.nii.gz"), bucket, f"{prefix.rstrip('/')}/ct.nii.gz")


def test_example_runs(cmd, sandbox, request, monkeypatch, capsys):
    monkeypatch.chdir(sandbox)
    if cmd.startswith("python:"):
        exec(compile(textwrap.dedent(cmd[len("python:"):]), "README.md", "exec"), {"__name__": "readme"})
        return
    request.getfixturevalue("ray_local")
    if "s3://" in cmd:
        _prepare_s3(cmd, request.getfixturevalue("s3_server"))
    from pipelines.cli import main

    argv = shlex.split(cmd)[1:]
    try:
        rc = main(argv)
    except SystemExit as e:  # --help
        rc = e.code
    out = capsys.readouterr()
    assert rc in (0, None), f"`{cmd}` exited {rc}:\n{out.out[-2000:]}\n{out.err[-2000:]}"


def pytest_generate_tests(metafunc):  # noqa: D103 — pytest hook (module-level in a test file works too)
    if "cmd" in metafunc.fixturenames:
        metafunc.parametrize("cmd", _params())


def test_examples_are_found():
    readme, epilog = _readme_examples(), _epilog_examples()
    assert any(c.startswith("crfgan preprocess") for c in readme) and any(c.startswith("crfgan train") for c in readme)
    assert any(c.startswith("python:") for c in readme) and any("--local" in c for c in epilog)
    assert not any(c.startswith("crfgan preprocess --input URI") for c in readme)  # ```text syntax lines are not run
    assert all("\\" not in c for c in readme if not c.startswith("python:"))  # continuations joined

