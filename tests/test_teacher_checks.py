"""The teacher is checked before the first task, a run whose first answers all fail the same way stops
early, and a finished run that kept nothing does not exit 0."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import rows_in

from gen.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "prompts" / "quickstart.toml"


def _gen(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main([*argv, "--no-progress"])
    return code, capsys.readouterr().err


def _run(capsys, out: Path, base_url: str, *extra: str) -> tuple[int, str]:
    return _gen(capsys, "run", str(QUICKSTART), "--provider", "openai", "--base-url", base_url,
                "--output", str(out), *extra)  # fmt: skip


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the block ends: connections are refused


class _HTML(BaseHTTPRequestHandler):
    posts = 0

    def _page(self) -> None:
        body = b"<!doctype html><html><body><h1>Welcome to nginx!</h1></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self._page()

    def do_POST(self) -> None:  # noqa: N802
        type(self).posts += 1
        self._page()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def html_server() -> Iterator[str]:
    _HTML.posts = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HTML)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_an_unreachable_base_url_is_one_line_before_any_task(tmp_path: Path, capsys, closed_port) -> None:
    url = f"http://127.0.0.1:{closed_port}/v1"
    code, err = _run(capsys, tmp_path / "o", url, "--max-retries", "0")
    line = _one_line(err)
    assert code == 2 and "cannot reach the teacher" in line and url in line
    assert rows_in(tmp_path / "o", "rejects") == []


@pytest.mark.parametrize("url", ["127.0.0.1:8000/v1", "localhost:8000", "ftp://example.com/v1", "http:///v1"])
def test_a_base_url_without_http_or_https_is_one_line(tmp_path: Path, capsys, url: str) -> None:
    code, err = _run(capsys, tmp_path / "o", url)
    line = _one_line(err)
    assert code == 2 and "--base-url" in line and url in line and "http://" in line


def test_a_server_that_answers_html_is_one_line_before_any_task(tmp_path: Path, capsys, html_server) -> None:
    code, err = _run(capsys, tmp_path / "o", html_server, "--max-retries", "0")
    line = _one_line(err)
    assert code == 2 and "HTML" in line and html_server in line
    assert _HTML.posts == 0


def test_a_model_the_server_does_not_list_is_one_line_before_any_task(
    tmp_path: Path, capsys, sim_server
) -> None:
    sim = sim_server()
    code, err = _run(capsys, tmp_path / "o", sim.base_url, "--model", "Qwen/Qwen3-32B")
    line = _one_line(err)
    assert code == 2 and "'Qwen/Qwen3-32B'" in line and "gen-sim-1" in line and "--no-model-check" in line
    assert sim.stats()["requests"] == 0


def test_no_model_check_runs_against_a_server_that_lists_no_models(
    tmp_path: Path, capsys, sim_server
) -> None:
    sim = sim_server(list_models=False)
    code, err = _run(capsys, tmp_path / "a", sim.base_url, "--limit", "10")
    assert code == 2 and "--no-model-check" in _one_line(err) and sim.stats()["requests"] == 0
    code, err = _run(capsys, tmp_path / "b", sim.base_url, "--limit", "10", "--no-model-check")
    assert code == 0, err
    assert len(rows_in(tmp_path / "b", "data")) + len(rows_in(tmp_path / "b", "duplicates")) == 10


def test_the_readme_refresh_example_against_the_simulator(tmp_path: Path, capsys, sim_server) -> None:
    out = tmp_path / "qs"
    assert _gen(capsys, "run", str(QUICKSTART), "--output", str(out), "--limit", "12")[0] == 0
    # The simulator serves gen-sim-1 only: refreshing with another model is refused before any request.
    sim = sim_server()
    argv = ["refresh", str(out), "--model", "Qwen/Qwen3-32B", "--provider", "openai", "--base-url"]
    code, err = _gen(capsys, *argv, sim.base_url)
    assert code == 2 and "'Qwen/Qwen3-32B'" in _one_line(err) and sim.stats()["requests"] == 0
    # `gen sim --model Qwen/Qwen3-32B` lists and serves that model: the same refresh goes through.
    qwen = sim_server(model="Qwen/Qwen3-32B")
    code, err = _gen(capsys, *argv, qwen.base_url)
    assert code == 0, err
    assert {r["teacher_model"] for r in rows_in(tmp_path / "qs-v2", "data")} == {"Qwen/Qwen3-32B"}


def test_a_refused_key_stops_the_run_before_any_task(tmp_path: Path, capsys, sim_server, monkeypatch) -> None:
    sim = sim_server(api_key="sk-right-key-0123")
    monkeypatch.setenv("GEN_CHECK_KEY", "sk-wrong-key-4567")
    code, err = _run(capsys, tmp_path / "o", sim.base_url, "--api-key-env", "GEN_CHECK_KEY")
    assert code == 1 and "401" in _one_line(err) and "sk-wrong" not in err
    assert sim.stats()["requests"] == 0


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_anthropic_base_url_with_or_without_v1(tmp_path: Path, capsys, sim_server, suffix: str) -> None:
    sim = sim_server()
    root = sim.base_url.removesuffix("/v1")
    argv = ["run", str(QUICKSTART), "--provider", "anthropic", "--base-url", root + suffix, "--limit", "8"]
    code, err = _gen(capsys, *argv, "--output", str(tmp_path / "o"), "--acknowledge-licence-conflict")
    assert code == 0, err
    assert len(rows_in(tmp_path / "o", "data")) + len(rows_in(tmp_path / "o", "duplicates")) == 8
    assert sim.stats()["ok"] == 8


def test_a_run_whose_first_answers_all_fail_alike_stops_early_and_resumes_whole(
    tmp_path: Path, capsys, sim_server
) -> None:
    broken = sim_server(rate_500=1.0)
    out = tmp_path / "o"
    code, err = _run(capsys, out, broken.base_url, "--max-retries", "0")
    line = _one_line(err)
    assert code == 1 and "HTTP 500" in line and "server" in line
    assert broken.stats()["requests"] < 240  # not every task was asked
    assert rows_in(out, "rejects") == []  # none recorded: the rerun asks them all again
    healthy = sim_server()
    code, err = _run(capsys, out, healthy.base_url)
    assert code == 0, err
    assert (
        len(rows_in(out, "data")) + len(rows_in(out, "duplicates")) == 240 and rows_in(out, "rejects") == []
    )


def test_a_wrong_model_without_the_check_stops_early_with_the_fix(tmp_path: Path, capsys, sim_server) -> None:
    sim = sim_server()
    code, err = _run(capsys, tmp_path / "o", sim.base_url, "--model", "gpt-nope", "--license", "mit",
                     "--no-model-check")  # fmt: skip
    line = _one_line(err)
    assert code == 1 and "HTTP 404" in line and "--model" in line
    assert sim.stats()["status_404"] < 240


def test_a_finished_run_that_kept_nothing_exits_non_zero(tmp_path: Path, capsys, sim_server) -> None:
    sim = sim_server(rate_invalid_json=1.0)
    code, err = _run(capsys, tmp_path / "a", sim.base_url, "--limit", "6")
    assert code == 1 and "kept nothing" in err and "6 rejects" in err
    assert len(rows_in(tmp_path / "a", "rejects")) == 6
    # Too few tasks to stop early: every one fails the same way, all are recorded, and the exit says so.
    down = sim_server(rate_500=1.0)
    code, err = _run(capsys, tmp_path / "b", down.base_url, "--limit", "3", "--max-retries", "0")
    assert code == 1 and "kept nothing" in err
    assert [r["reason"] for r in rows_in(tmp_path / "b", "rejects")] == ["teacher_error"] * 3


def test_a_server_that_never_answers_is_one_line_before_any_task(tmp_path: Path, capsys) -> None:
    with socket.socket() as silent:  # listens (the kernel completes the handshake) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(512)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        code, err = _run(capsys, tmp_path / "o", url, "--request-timeout", "1", "--max-retries", "0")
    line = _one_line(err)
    assert code == 2 and "cannot reach the teacher (request timed out)" in line and url in line
    assert not (tmp_path / "o").exists()  # nothing written


def test_failures_held_before_the_first_answer_are_recorded_once_one_comes(
    tmp_path: Path, capsys, sim_server
) -> None:
    # Seed 4 fails the first 6 requests (fewer than the 8 that stop a run), then answers; one at a time.
    sim = sim_server(rate_500=0.5, seed=4)
    out = tmp_path / "o"
    code, err = _run(
        capsys, out, sim.base_url, "--limit", "30", "--max-concurrency", "1", "--max-retries", "0"
    )
    assert code == 0, err
    rejects = rows_in(out, "rejects")
    assert len(rejects) == sim.stats()["status_500"] >= 6 and {r["reason"] for r in rejects} == {
        "teacher_error"
    }
    assert len(rejects) + len(rows_in(out, "data")) + len(rows_in(out, "duplicates")) == 30
