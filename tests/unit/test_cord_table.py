"""The cord table's curl lines: pasted into bash, they send exactly the example."""

from __future__ import annotations

import json
import shlex
import subprocess

from tools.cord_table import Cord, curl_line


def curl_argv(line: str) -> list[str]:
    """What bash would pass to curl for `line`, with base64 stubbed to print QUJD."""
    script = "base64(){ echo QUJD; }; curl(){ for a in \"$@\"; do printf '%s\\0' \"$a\"; done; }; " + line
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    return out.split("\0")[:-1]


def test_upload_curl_line_sends_file_and_hostile_example_values_exactly():
    example = {"model": "a$b`c\"d\\e $(touch /tmp/pwned)"}
    argv = curl_argv(curl_line("http://h:1", Cord("POST", "/inference", "", False, example, ("file",))))
    body = json.loads(argv[argv.index("-d") + 1])
    assert body == {"file_base64": "QUJD", **example}


def test_json_get_and_binary_curl_lines():
    post = curl_argv(curl_line("http://h:1", Cord("POST", "/v1/echo", "", False, {"msg": "it's"})))
    assert json.loads(post[post.index("-d") + 1]) == {"msg": "it's"} and post[:4] == ["-sS", "-X", "POST", "http://h:1/v1/echo"]
    get = curl_argv(curl_line("http://h:1", Cord("GET", "/v1/models", "", False, {"limit": 2, "_path": {"x": 1}})))
    assert get == ["-sS", "http://h:1/v1/models?limit=2"]
    wav = shlex.split(curl_line("http://h:1", Cord("POST", "/tts", "", False, {}, binary_type="audio/wav")))
    assert wav[wav.index("-o") + 1] == "response.wav"
