"""What the lab's test client and test server say to each other (and what the emulator says for
them): one place for the request and answer formats.

UDP, one datagram per request, answered from the same port:
    REQUEST[\\nOPTION...]      REQUEST: hostname | clientip | echo TEXT
    options, one per line:    delay=SECONDS   the server waits that long before answering
                              pad=.....       padding: the answer is padded the same way
    answer:                   ANSWER[\\npad=.....]
HTTP, on one connection: GET /hostname, /clientip, /healthz, /echo?msg=TEXT, with the same options
as headers (X-Delay: SECONDS, X-Pad: .....); the body is ANSWER[\\npad=.....].

Padding makes requests and answers as large as a check's `size` (larger than the MTU: fragments
and path MTU discovery are exercised); whoever reads an answer takes its first line.
"""
from __future__ import annotations

PAD_CHAR = "."


def answer(name: str, request: str, client) -> str | None:
    """The answer of server `name` to a request (path or word) from `client` (ip, port); None if
    the request is not one the server knows."""
    request = request.strip()
    if request in ("hostname", "/hostname"):
        return name
    if request in ("clientip", "/clientip"):
        return f"{client[0]}:{client[1]}"
    if request in ("healthz", "/healthz"):
        return "ok"
    if request.startswith("echo "):
        return request[5:]
    if request.startswith("/echo?msg="):
        return request[len("/echo?msg="):]
    return None


def padding(total: int, used: int) -> str:
    """A pad option that brings a message of `used` bytes to at least `total` bytes."""
    need = total - used - len("\npad=")
    return "pad=" + PAD_CHAR * max(need, 0)


def udp_request(request: str, delay: float = 0.0, size: int = 0) -> bytes:
    lines = [request]
    if delay:
        lines.append(f"delay={delay:g}")
    text = "\n".join(lines)
    if size:
        text += "\n" + padding(size, len(text))
    return text.encode()


def parse_udp(data: bytes) -> tuple[str, dict]:
    """(request, options) of a datagram; options: delay (float), pad (str)."""
    lines = data.decode(errors="replace").split("\n")
    options = {}
    for line in lines[1:]:
        key, _, value = line.partition("=")
        if key == "delay":
            try:
                options["delay"] = min(max(float(value), 0.0), 600.0)
            except ValueError:
                pass
        elif key == "pad":
            options["pad"] = value
    return lines[0], options


def padded(text: str, pad: str | None) -> str:
    """An answer, padded as its request was."""
    return text if pad is None else f"{text}\npad={pad}"


def first_line(text: str) -> str:
    return text.split("\n", 1)[0]


def http_request(path: str, host: str, delay: float = 0.0, size: int = 0, close: bool = False) -> bytes:
    head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
    if delay:
        head += f"X-Delay: {delay:g}\r\n"
    if close:
        head += "Connection: close\r\n"
    if size:
        head += f"X-Pad: {PAD_CHAR * max(size - len(head) - len('X-Pad: ') - 4, 0)}\r\n"
    return (head + "\r\n").encode()
