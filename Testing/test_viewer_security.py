"""The viewer against other browsers and web pages: tokens on every address, Origin checks, one secret per
student, no Host reflection, bounded sessions — all over real HTTP to real viewer processes."""

from __future__ import annotations

import base64
import http.client
import os
import threading
import urllib.parse

from viewer_harness import ROOT, free_port, viewer_process

DEMO_CASE = ROOT / "XAIExplain" / "XAIExplainLib" / "Resources" / "SampleData" / "brain-lesion-case1.nii.gz"


def _get(port: int, target: str, headers: dict | None = None) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=180)
    connection.request("GET", target, headers=headers or {})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def _websocket_status(port: int, token: str, origin: str) -> int:
    """The status of a websocket handshake to the viewer (101: the socket opened)."""
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), "Origin": origin}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", f"/ws?token={urllib.parse.quote(token)}", headers=headers)
    status = connection.getresponse().status
    connection.close()
    return status


def _token(url: str) -> str:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["token"][0]


def test_loopback_needs_the_token_and_other_sites_cannot_connect():
    """On 127.0.0.1 too: any web page the user visits could otherwise drive the viewer."""
    port = free_port()
    # A token that starts with "-" (about 1 random token in 64 used to) still starts the viewer.
    with viewer_process([str(DEMO_CASE), "--port", str(port)], env={"SLICER_XAI_TOKEN": "-starts-with-dash"}) as (url, _):
        token = _token(url)
        assert token == "-starts-with-dash"
        assert _get(port, "/").status == 403
        assert _get(port, "/?token=wrong").status == 403
        assert _get(port, "/?token=%C3%A9t%C3%A9").status == 403  # non-ASCII: refused, not a server error
        assert _get(port, f"/?token={urllib.parse.quote(token)}").status in (200, 302)  # the page (or its index)
        same_origin = f"http://127.0.0.1:{port}"
        assert _websocket_status(port, token, same_origin) == 101
        assert _websocket_status(port, token, "http://attacker.example") == 403
        assert _websocket_status(port, token, f"http://127.0.0.1:{port + 1}") == 403
        assert _websocket_status(port, "wrong", same_origin) == 403


def test_each_student_gets_a_secret_of_their_own():
    port = free_port()
    with viewer_process([str(DEMO_CASE), "--port", str(port), "--classroom", "per-student"]) as (url, _):
        classroom = urllib.parse.quote(_token(url))
        # A made-up Host header is not reflected into the redirect (which carries the student's token).
        first = _get(port, f"/?token={classroom}", {"Host": f"attacker.example:{port}"}).getheader("Location")
        second = _get(port, f"/?token={classroom}").getheader("Location")
        assert first.startswith("http://127.0.0.1:") and second.startswith("http://127.0.0.1:")
        first_port, second_port = (urllib.parse.urlsplit(u).port for u in (first, second))
        first_token, second_token = _token(first), _token(second)
        assert first_token != second_token and classroom not in (first_token, second_token)
        assert _get(second_port, f"/?token={urllib.parse.quote(first_token)}").status == 403
        assert _get(first_port, f"/?token={urllib.parse.quote(second_token)}").status == 403
        assert _get(second_port, f"/?token={urllib.parse.quote(second_token)}").status in (200, 302)
        assert _get(port, "/?token=%C3%A9t%C3%A9").status == 403


def test_every_students_viewer_gets_the_teachers_case_model_audit_and_point():
    import argparse

    from XAIViewer.cli import _student_args, add_viewer_command

    parser = argparse.ArgumentParser()
    add_viewer_command(parser.add_subparsers())
    teacher = parser.parse_args(["viewer", "--classroom", "per-student", "--model", "m", "--audit", "audit dir",
                                 "--at=-10.9,-3.3,10.1", "--trust-bundle", "--token", "secret", "--", "-case.nii.gz"])
    student = parser.parse_args(["viewer", *_student_args(teacher)])
    for key in ("input", "model", "audit", "at", "trust_bundle", "pacs", "study"):
        assert getattr(student, key) == getattr(teacher, key), key
    assert student.token is None and student.classroom == "presenter"  # each student has a secret of their own


def test_max_sessions_holds_under_concurrent_visits():
    port = free_port()
    args = [str(DEMO_CASE), "--port", str(port), "--classroom", "per-student", "--max-sessions", "1"]
    with viewer_process(args) as (url, _):
        classroom = urllib.parse.quote(_token(url))
        statuses: list[int] = []
        visits = [threading.Thread(target=lambda: statuses.append(_get(port, f"/?token={classroom}").status))
                  for _ in range(3)]
        for visit in visits:
            visit.start()
        for visit in visits:
            visit.join()
        assert sorted(statuses) == [302, 503, 503]
