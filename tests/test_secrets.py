"""API keys never reach disk or stderr, even from a teacher that echoes request headers into its errors;
a key that could inject headers is refused before any request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gen.cli import main
from gen.errors import TeacherError, redact, register_secret
from gen.teachers.http import error_from_response

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "prompts" / "quickstart.toml"
KEY = "sk-live-" + "Zq9" * 12


def _gen(out: Path, base_url: str, *extra: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gen", "run", str(QUICKSTART), "--base-url", base_url, "--output", str(out)]
    cmd += ["--api-key-env", "GEN_SECRET_KEY", "--no-progress", *extra]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **env}, cwd=out.parent
    )


def _everything_written(out: Path) -> str:
    """Every byte a run wrote, with Parquet shards decoded (their pages are zstd-compressed, so a raw
    grep would miss a key inside them)."""
    parts = []
    for path in sorted(out.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix == ".parquet":
            parts.append(json.dumps(pq.read_table(path).to_pylist(), default=str))
        else:
            parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def _rejects(out: Path) -> list[dict]:
    files = sorted((out / "rejects").glob("*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


@pytest.mark.parametrize(
    ("provider", "client"),
    [("openai", "wire"), ("openai", "aiohttp"), ("anthropic", "wire"), ("anthropic", "aiohttp")],
)
def test_echoed_headers_in_error_bodies_never_reach_disk_or_stderr(
    tmp_path: Path, sim_server, provider: str, client: str
) -> None:
    # 30% of requests get a 500 whose message carries every request header (Authorization: Bearer KEY,
    # or x-api-key: KEY); with no retries each becomes a reject whose `error` is that message.
    sim = sim_server(api_key=KEY, echo_headers=True, rate_500=0.3, seed=7)
    out = tmp_path / "o"
    env = {"GEN_SECRET_KEY": KEY, "GEN_HTTP_CLIENT": client}
    proc = _gen(out, sim.base_url, "--provider", provider, "--max-retries", "0", "--limit", "60", env=env)
    assert proc.returncode == 0, proc.stderr
    rejects = _rejects(out)
    assert rejects and all("request headers" in r["error"] for r in rejects)  # the echo got through
    header = "authorization" if provider == "openai" else "x-api-key"
    assert all(header in r["error"].lower() and "[REDACTED]" in r["error"] for r in rejects)
    written = _everything_written(out)
    assert KEY not in written and KEY not in proc.stderr and KEY not in proc.stdout
    assert "Zq9Zq9" not in written + proc.stderr  # no fragment of it either


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_refused_key_echoed_back_is_not_printed(tmp_path: Path, sim_server, provider: str) -> None:
    wrong = "sk-wrong-" + "Kp4" * 12
    sim = sim_server(api_key=KEY, echo_headers=True)
    out = tmp_path / "o"
    proc = _gen(out, sim.base_url, "--provider", provider, "--limit", "20", env={"GEN_SECRET_KEY": wrong})
    assert proc.returncode == 1 and "401" in proc.stderr, proc.stderr
    assert "request headers" in proc.stderr  # the teacher's message is shown, its secret is not
    assert wrong not in proc.stderr and "Kp4Kp4" not in proc.stderr
    assert not out.exists() or wrong not in _everything_written(out)


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (KEY + "\r\nX-Injected: 1", "control character"),
        (KEY + "\n", "control character"),
        ("sk-\x1babc", "control character"),
        ("sk-ключ-123", "latin-1"),
    ],
)
def test_a_key_that_could_inject_headers_is_refused_before_any_request(
    tmp_path: Path, sim_server, capsys, monkeypatch, key: str, problem: str
) -> None:
    sim = sim_server()
    monkeypatch.setenv("GEN_SECRET_KEY", key)
    argv = ["run", str(QUICKSTART), "--provider", "openai", "--base-url", sim.base_url]
    argv += ["--api-key-env", "GEN_SECRET_KEY", "--output", str(tmp_path / "o"), "--no-progress"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "GEN_SECRET_KEY" in err and problem in err and "Zq9" not in err
    assert sim.stats()["requests"] == 0


def test_redact_removes_keys_and_credentials_in_every_shape() -> None:
    register_secret("sk-registered-abcdef123456")
    text = (
        'upstream said: {"Authorization": "Bearer sk-one-111", "x-api-key": "sk-two-222", '
        "'Proxy-Authorization': 'Basic dXNlcjpwYXNz'} authorization: Bearer sk-three-333; "
        "X-Api-Key=sk-four-444 and the key sk-registered-abcdef123456 and bearer eyJhbGciOi.x.y "
        "at https://user:hunter2@gw.example.com/v1"
    )
    clean = redact(text)
    for secret in (
        "sk-one",
        "sk-two",
        "dXNlcjpwYXNz",
        "sk-three",
        "sk-four",
        "sk-registered",
        "eyJhb",
        "hunter2",
    ):
        assert secret not in clean, (secret, clean)
    assert clean.count("[REDACTED]") >= 8 and "upstream said" in clean and "gw.example.com" in clean
    for plain in ("nothing secret here: HTTP 500", "a basic validation error", "Bearer token missing"):
        assert redact(plain) == plain


def test_every_teacher_error_is_redacted_even_when_the_key_straddles_the_cut() -> None:
    key = "sk-straddle-" + "w" * 40
    register_secret(key)
    # The server's message is cut at 500 characters; the key begins just before the cut.
    body = ("x" * 490 + " " + key + " tail").encode()
    err = error_from_response(502, body, {})
    assert "sk-s" not in str(err) and str(err).endswith(" [REDACTED")  # cut through the marker
    wrapped = {"error": {"message": "y" * 495 + key}}
    err = error_from_response(400, json.dumps(wrapped).encode(), {})
    assert "sk-st" not in str(err)
    assert key not in str(TeacherError(f"connection failed: {key}"))


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_key_echoed_in_an_answer_never_reaches_disk(tmp_path: Path, sim_server, provider: str) -> None:
    """A teacher that names the credential in a 200 answer (as its model, or in the text): the answer is a
    `secret_echo` reject whose response is redacted, never a row and never in the manifest."""
    sim = sim_server(api_key=KEY, echo_key=True)
    out = tmp_path / "o"
    env = {"GEN_SECRET_KEY": KEY}
    proc = _gen(out, sim.base_url, "--provider", provider, "--limit", "12", env=env)
    assert proc.returncode == 1, proc.stderr  # a finished run that kept nothing
    rejects = _rejects(out)
    assert len(rejects) == 12 and {r["reason"] for r in rejects} == {"secret_echo"}
    assert not list(out.glob("data/*.parquet"))
    written = _everything_written(out)
    assert KEY not in written and KEY not in proc.stderr and "Zq9Zq9" not in written + proc.stderr
